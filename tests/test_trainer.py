import json

import pytest
import torch

from wab.method import Method, register, unregister
from wab.parts.optim import RowwiseFusedSGD, lr_at
from wab.run.lifecycle import run, run_dir_for
from wab.run.loop import Interrupted, Trainer, request_stop
from wab.run.records import RunDir

FINAL_KEYS = {"status", "method", "config", "seed", "wall_time_s", "steps", "metrics", "comm"}
METRIC_KEYS = {
    "individual_mean", "individual_min", "individual_max", "ensemble_acc", "ensemble_prob_acc",
    "avg_acc", "avg_bn_acc", "nll", "ece", "disagreement", "final",
}  # fmt: skip


def test_a_run_learns_and_writes_its_records(tiny):
    cfg = tiny("trainer.epochs=3", "trainer.batch_size=32", "model.width=8")
    rec = run(cfg)
    rd = run_dir_for(cfg)
    assert rec["status"] == "done"
    assert rd.path.name.startswith("independent-")
    for f in ("config.yaml", "metrics.jsonl", "final.json", "checkpoint.pt", "train.log", "done"):
        assert (rd.path / f).exists(), f
    final = json.loads(rd.final.read_text())
    assert FINAL_KEYS <= set(final) and METRIC_KEYS <= set(final["metrics"])
    m = final["metrics"]
    assert m["individual_min"] <= m["individual_mean"] <= m["individual_max"]
    assert m["individual_mean"] > 0.6  # 10 classes: chance is 0.1
    assert {"elements_total", "bytes_total", "elements_per_step", "ops"} <= set(final["comm"])
    assert final["comm"]["elements_total"] == 0  # independent members never communicate
    lines = rd.read_metrics()
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert all(r["run_id"] == rd.path.name and "comm" in r and "wall_time_s" in r for r in lines)
    assert lines[-1]["step"] == final["steps"]
    # a second start of a finished run returns its record and trains nothing
    assert run(cfg)["wall_time_s"] == final["wall_time_s"]


def test_run_dir_depends_on_the_config_not_on_where_it_is_written(tiny, tmp_path):
    a, b = tiny(), tiny("seed=1")
    assert run_dir_for(a).path.name != run_dir_for(b).path.name
    c = dict(a, out_dir=str(tmp_path / "elsewhere"), trainer={**a["trainer"], "progress": False})
    assert run_dir_for(c).path.name == run_dir_for(a).path.name
    # the device type and the CPU threads change how results round: they are part of the identity
    on = {t: run_dir_for(dict(a, device="cpu", trainer={**a["trainer"], "threads": t})).path.name for t in (1, 2, 3)}
    assert len(set(on.values())) == 3
    assert run_dir_for(dict(a, device="cuda", trainer={**a["trainer"], "threads": 1})).path.name not in on.values()
    # another kernel rounds differently: off its default, it is part of the run's identity
    assert run_dir_for(dict(a, optim={**a["optim"], "fused": True})).path.name == run_dir_for(a).path.name
    assert run_dir_for(dict(a, optim={**a["optim"], "fused": False})).path.name != run_dir_for(a).path.name
    compiled = dict(a, trainer={**a["trainer"], "compile": True})
    assert run_dir_for(compiled).path.name != run_dir_for(a).path.name


def test_members_have_their_own_data_order(tiny):
    cfg = tiny()
    t = Trainer(cfg, run_dir_for(cfg))
    perms = [r.permutation(100) for r in t.rngs]
    assert not (perms[0] == perms[1]).all()
    assert not torch.equal(t.population.params[0][0], t.population.params[0][1])  # own inits


@pytest.fixture
def interrupter():
    state = {"at": None}

    @register("test_interrupt_at")
    class InterruptAt(Method):
        def after_step(self, run):
            if run.step == state["at"]:
                request_stop()

    yield state
    unregister("test_interrupt_at")


@pytest.mark.parametrize("stop_at", [7, 5, 15], ids=["mid-epoch", "epoch-boundary", "last-step"])
def test_an_interrupted_run_resumes_bit_for_bit(tiny, tmp_path, interrupter, stop_at):
    overrides = (
        "method.name=test_interrupt_at",
        "trainer.epochs=3",
        "trainer.batch_size=256",  # 5 steps per epoch
        "data.augment.crop_padding=1",
        "data.augment.flip=true",
        "data.augment.mixup_alpha=0.4",
    )
    ref = run(dict(tiny(*overrides), out_dir=str(tmp_path / "ref")))
    assert ref["status"] == "done"
    cfg = dict(tiny(*overrides), out_dir=str(tmp_path / "resumed"))
    interrupter["at"] = stop_at
    with pytest.raises(Interrupted):
        run(cfg)
    rd = run_dir_for(cfg)
    assert rd.checkpoint.exists() and not rd.done.exists() and rd.state() == "incomplete"
    interrupter["at"] = None
    resumed = run(cfg)
    assert resumed["status"] == "done" and resumed["steps"] == ref["steps"]
    assert resumed["metrics"] == ref["metrics"]  # bit for bit: every float equal
    ref_lines = RunDir(run_dir_for(dict(cfg, out_dir=str(tmp_path / "ref"))).path).read_metrics()
    drop = {"wall_time_s", "train_time_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in rd.read_metrics()] == [
        {k: v for k, v in r.items() if k not in drop} for r in ref_lines
    ]
    ck = torch.load(rd.checkpoint, weights_only=True)  # checkpoints load with weights_only=True
    assert ck["step"] == ref["steps"]


def test_a_damaged_shard_falls_back_to_the_previous_checkpoint_and_old_shards_are_removed(tiny, tmp_path, interrupter):
    """Each checkpoint's member rows are a DCP directory named by its checkpoint.pt; only the
    latest two are kept, and one whose shard is damaged gives way to the previous one."""
    overrides = ("method.name=test_interrupt_at", "trainer.epochs=3", "trainer.batch_size=256")  # 5 steps per epoch
    ref = run(dict(tiny(*overrides), out_dir=str(tmp_path / "ref")))
    cfg = dict(tiny(*overrides), out_dir=str(tmp_path / "damaged"))
    interrupter["at"] = 12  # checkpoints at steps 5 and 10 (epoch ends) and 12 (the stop)
    with pytest.raises(Interrupted):
        run(cfg)
    rd = run_dir_for(cfg)
    latest = torch.load(rd.checkpoint, weights_only=True)
    previous = torch.load(rd.previous_checkpoint, weights_only=True)
    assert (latest["step"], previous["step"]) == (12, 10)
    assert sorted(d.name for d in rd.path.glob("checkpoint-*.dcp")) == sorted([latest["shards"], previous["shards"]])
    (shard,) = (rd.path / latest["shards"]).glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    interrupter["at"] = None
    resumed = run(cfg)
    assert "trying an older one" in rd.log.read_text() and "resumed from" in rd.log.read_text()
    assert f"at step {previous['step']}" in rd.log.read_text().split("resumed from")[-1]
    assert resumed["metrics"] == ref["metrics"]  # the older checkpoint resumes bit for bit too


def test_the_evaluation_lines_live_in_the_checkpoint_not_only_in_the_file(tiny):
    """A run whose records are lost after its final checkpoint writes them again from it: the
    same final metrics, with no evaluation run again (its train.log says no finalizing), and
    metrics.jsonl rewritten from the checkpoint's lines, including the target's cost."""
    cfg = tiny("method=swa", "trainer.epochs=2", "trainer.target_acc=0.05")
    ref = run(cfg)
    rd = run_dir_for(cfg)
    lines = rd.read_metrics()
    for f in (rd.done, rd.final, rd.metrics, rd.log):
        f.unlink()
    again = run(cfg)
    assert again["metrics"] == ref["metrics"] and again["cost"]["target"] == ref["cost"]["target"]
    assert ref["cost"]["target"]["reached"]
    assert rd.read_metrics() == lines
    assert "finalizing" not in rd.log.read_text() and "resumed from" in rd.log.read_text()


def test_a_non_finite_loss_is_recorded_as_diverged(tiny):
    @register("test_poison")
    class Poison(Method):
        def after_step(self, run):
            if run.step == 3:
                run.population.params[0].fill_(float("nan"))

    try:
        cfg = tiny("method.name=test_poison")
        rec = run(cfg)
    finally:
        unregister("test_poison")
    assert rec["status"] == "diverged" and "non-finite loss" in rec["error"] and rec["steps"] == 3
    rd = run_dir_for(cfg)
    assert rd.state() == "diverged" and rd.done.exists()
    assert json.loads(rd.final.read_text())["metrics"]["avg_acc"] is None


def test_a_crash_is_recorded_in_its_own_directory(tiny):
    cfg = tiny("model.name=nope")
    rec = run(cfg)  # does not raise
    rd = run_dir_for(cfg)
    assert rec["status"] == "failed" and "unknown model 'nope'" in rec["error"] and "Traceback" in rec["traceback"]
    assert rd.state() == "failed" and not rd.done.exists()
    assert json.loads(rd.final.read_text())["status"] == "failed"


@pytest.mark.parametrize(
    "override, message",
    [
        ("population.size=0", "population.size must be >= 1"),
        ("trainer.batch_size=100000", "exceeds the"),
        ("optim.name=lamb", "unknown optimizer 'lamb'"),
        ("optim.schedule=zigzag", "unknown lr schedule 'zigzag'"),
        ("data.name=svhn", "unknown dataset 'svhn'"),
        ("+data.augment.blur=1", "unknown augmentation option"),
    ],
)
def test_bad_config_fails_with_a_message_naming_the_value(tiny, override, message):
    rec = run(tiny(override))
    assert rec["status"] == "failed" and message in rec["error"]


def test_lr_schedules():
    cfg = {"lr": 0.1, "schedule": "cosine", "lr_min": 1e-4}
    assert lr_at(0, 100, 10, cfg) == pytest.approx(0.1)
    assert lr_at(50, 100, 10, cfg) == pytest.approx((0.1 + 1e-4) / 2)
    assert lr_at(100, 100, 10, cfg) == pytest.approx(1e-4)
    step = {"lr": 0.1, "schedule": "step", "milestones": [0.5, 0.75], "gamma": 0.1}
    assert [lr_at(s, 100, 10, step) for s in (0, 49, 50, 74, 75)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    swa = {"lr": 0.1, "schedule": "swa", "swa_start": 0.5, "swa_lr": 0.01}  # 20 epochs, swa from epoch 10
    lrs = [lr_at(e * 10, 200, 10, swa) for e in range(20)]
    assert lrs[:6] == pytest.approx([0.1] * 6)  # constant for the first half of the pre-SWA phase
    assert lrs[7] == pytest.approx(0.1 - 0.09 * (0.7 - 0.5) / 0.4)  # linear decay
    assert lrs[10:] == pytest.approx([0.01] * 10)  # then swa_lr
    assert lr_at(0, 100, 10, {"lr": 0.1, "schedule": "constant", "warmup_epochs": 1}) == pytest.approx(0.01)


def test_speed_defaults_on_cpu(tiny):
    """auto: channels-last convolutions (faster with oneDNN) and no autocast; fused optimizer."""
    cfg = tiny()
    t = Trainer(cfg, run_dir_for(cfg))
    assert t.population.channels_last and t.autocast_dtype is None and isinstance(t.optimizer, RowwiseFusedSGD)
    conv = next(p for p in t.population.members[0].parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    cfg = tiny("trainer.channels_last=false", "optim.fused=false")
    t = Trainer(cfg, run_dir_for(cfg))
    assert not t.population.channels_last and not t.optimizer.defaults["fused"]


def test_gpu_mode_options_run_on_cpu_too(tiny):
    rec = run(tiny("trainer.amp=true", "trainer.channels_last=true"))
    assert rec["status"] == "done", rec.get("traceback")
    bad = run(tiny("trainer.amp=maybe"))
    assert bad["status"] == "failed" and "trainer.amp must be auto, true or false, got 'maybe'" in bad["error"]


def test_the_delivered_models_are_files_that_rebuild_without_the_trainer(tiny):
    from wab.parts.data import load_data
    from wab.run.saved_models import load_model, normalize

    cfg = tiny("method=soups", "trainer.epochs=2")
    rec = run(cfg)
    rd = run_dir_for(cfg)
    files = sorted(p.name for p in (rd.path / "models").glob("*.pt"))
    assert files == ["avg_bn.pt", "greedy_soup.pt", "uniform_soup.pt"]
    for f in files:  # plain state_dicts
        state = torch.load(rd.path / "models" / f, weights_only=True)
        assert all(torch.is_tensor(v) for v in state.values())
    test = load_data("digits").test
    for name, expected in (("final", rec["metrics"]["final_acc"]), ("avg_bn", rec["metrics"]["avg_bn_acc"]),
                           ("uniform_soup", rec["metrics"]["final"]["uniform_soup"]["acc"])):  # fmt: skip
        model = load_model(rd.path, name)
        with torch.no_grad():
            acc = (model(normalize(rd.path, test.x)).argmax(1) == test.y).double().mean().item()
        assert abs(acc - expected) <= 1 / len(test.y), name  # the same model, as evaluated in the run
    off = tiny("trainer.epochs=1", "trainer.save_models=false")
    run(off)
    assert not (run_dir_for(off).path / "models").exists()


def test_a_run_computes_with_the_threads_its_config_names_and_keeps_no_lease_dir(tiny):
    """trainer.threads=auto is resolved before the run is named (its config records the count);
    an explicit count is used for the run alone, whatever this process uses."""
    before = torch.get_num_threads()
    auto = tiny("trainer.epochs=1")
    rec = run(auto)
    rd = run_dir_for(auto)
    assert rec["status"] == "done" and rec["threads"] == before == rec["config"]["trainer"]["threads"]
    assert rec["config"]["device"] == "cpu" and not (rd.path / ".lease").exists()
    other = before + 1
    rec = run(tiny("trainer.epochs=1", f"trainer.threads={other}"))
    assert rec["threads"] == other and rec["run_id"] != rd.path.name
    assert torch.get_num_threads() == before


def test_without_a_terminal_progress_goes_to_train_log_as_lines(tiny, monkeypatch):
    import wab.run.loop as loop

    monkeypatch.setattr(loop, "PROGRESS_LINE_EVERY_S", 0.0)  # a line at every step
    cfg = tiny("trainer.epochs=1", "trainer.progress=true")  # pytest's output is no terminal: no bar
    run(cfg)
    log = (run_dir_for(cfg).path / "train.log").read_text()
    steps = json.loads(run_dir_for(cfg).final.read_text())["steps"]
    assert f"step {steps}/{steps} (100%), epoch 1/1" in log and "steps/s, about" in log
    quiet = tiny("trainer.epochs=1", "trainer.progress=false", "seed=1")
    run(quiet)
    assert "steps/s, about" not in (run_dir_for(quiet).path / "train.log").read_text()
