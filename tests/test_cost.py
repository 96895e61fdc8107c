"""What a run costs and where it came from: FLOPs against hand-computed figures, training time
without evaluation, time to a target, the git commit, one-member populations, and the external
loggers writing real files with the real packages."""

import json
import subprocess

import pytest

from wab.errors import UserError
from wab.parts.cost import run_flops, step_flops, time_to_target
from wab.parts.models import MLP, TinyCNN
from wab.run.config import compose_config
from wab.run.lifecycle import run
from wab.run.validate import validate


def test_mlp_flops_match_the_hand_count():
    b, d, h, c = 64, 28 * 28, 64, 10
    forward = 2 * b * d * h + 2 * b * h * c
    # backward: the first layer's weight gradient only (its input needs none), both gradients of the head
    backward = 2 * b * d * h + 2 * (2 * b * h * c)
    assert step_flops(lambda: MLP(1, 28, c, hidden=h), b, 1, 28, c) == forward + backward


def test_cnn_flops_match_the_hand_count():
    b, w, c, s = 32, 4, 10, 8  # digits: 1 x 8 x 8
    convs = [(1, w, s), (w, 2 * w, s // 2), (2 * w, 4 * w, s // 4)]  # (in, out, output side)
    conv = [2 * b * o * side * side * i * 9 for i, o, side in convs]
    head = 2 * b * 4 * w * c
    # backward: weight and input gradients of every layer but the first conv (weight gradient only)
    expected = sum(conv) + head + conv[0] + 2 * sum(conv[1:]) + 2 * head
    assert step_flops(lambda: TinyCNN(1, c, width=w), b, 1, s, c) == expected


def test_run_flops_are_members_times_steps_times_the_step():
    cfg = compose_config(["data=digits", "model=cnn", "model.width=4", "population.size=3", "trainer.batch_size=32"])
    one = step_flops(lambda: TinyCNN(1, 10, width=4), 32, 1, 8, 10)
    assert run_flops(cfg, 7) == {"per_member_step": one, "per_step": 3 * one, "train": 21 * one}


def test_a_run_records_its_cost_and_commit(tiny):
    rec = run(tiny("trainer.epochs=2", "trainer.target_acc=0.01"))
    cost = rec["cost"]
    assert cost["train_flops"] == rec["steps"] * cost["flops_per_step"] > 0
    assert 0 < cost["train_time_s"] < rec["wall_time_s"] and cost["eval_time_s"] > 0
    assert cost["train_time_s"] + cost["eval_time_s"] == pytest.approx(rec["wall_time_s"], rel=1e-6)
    # an accuracy of 1% is reached at the first evaluation
    assert cost["target"]["reached"] and cost["target"]["epoch"] == 1
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert rec["git_commit"] == head and isinstance(rec["git_dirty"], bool) and rec["wab_version"]


def test_time_to_target_takes_the_first_evaluation_that_reaches_it():
    lines = [
        {"step": 20, "epoch": 2, "final_acc": 0.81, "train_time_s": 2.0, "comm": {"bytes_total": 200.0}},
        {"step": 10, "epoch": 1, "final_acc": 0.70, "train_time_s": 1.0, "comm": {"bytes_total": 100.0}},
        {"step": 30, "epoch": 3, "final_acc": 0.90, "train_time_s": 3.0, "comm": {"bytes_total": 300.0}},
    ]
    hit = time_to_target(lines, 0.8, flops_per_step=5)
    assert hit == {"reached": True, "step": 20, "epoch": 2, "flops": 100, "bytes": 200.0, "train_time_s": 2.0}
    assert time_to_target(lines, 0.95, 5) == {"reached": False}


def test_one_member_is_a_baseline_for_some_methods_and_refused_for_the_others(tiny):
    rec = run(tiny("population.size=1", "trainer.epochs=2"))
    m = rec["metrics"]
    assert rec["status"] == "done" and m["ensemble_acc"] == m["individual_mean"] and "pair" not in m["lmc"]
    with pytest.raises(UserError, match=r"population.size=1: wash needs at least 2 members"):
        validate(tiny("method=wash", "population.size=1"))
    with pytest.raises(UserError, match="candidates=snapshots"):
        validate(tiny("method=twa", "population.size=1"))
    validate(tiny("method=twa", "population.size=1", "method.candidates=snapshots"))
    validate(tiny("method=swa", "population.size=1"))


def test_a_bad_target_or_logger_is_refused_before_anything_runs(tiny, tmp_path):
    with pytest.raises(UserError, match=r"trainer.target_acc=87.5 must be an accuracy as a fraction"):
        validate(tiny("trainer.target_acc=87.5"))
    with pytest.raises(UserError, match=r"unknown logger 'tensorbord' \(did you mean 'tensorboard'\?\)"):
        validate(tiny("trainer.loggers=[tensorbord]"))
    assert not any(tmp_path.iterdir())


def test_held_out_choices_record_the_split_size_and_standard_error(tiny):
    rec = run(tiny("method=soups"))
    sel = rec["method_report"]["greedy_soup"]
    n = sel["heldout_size"]
    p = (sel["heldout_acc"] * n + 2) / (n + 4)  # Agresti-Coull: never 0
    assert n > 0 and sel["selection_se"] == pytest.approx((p * (1 - p) / (n + 4)) ** 0.5)


def test_a_perfect_score_on_a_small_split_is_not_certainty():
    from wab.method import heldout_selection

    se = heldout_selection(1.0, 29)["selection_se"]
    assert 0.03 < se < 0.05  # a binomial interval on 29 images, not the plain formula's 0
    big = heldout_selection(0.9, 10_000)["selection_se"]
    assert big == pytest.approx((0.9 * 0.1 / 10_000) ** 0.5, rel=0.01)  # the plain one on a large split


def test_loggers_write_the_same_numbers_with_the_real_packages(tiny, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rec = run(tiny("trainer.loggers=[tensorboard,wandb,mlflow]", "trainer.epochs=2"))
    assert rec["status"] == "done", rec.get("traceback")
    run_dir = tmp_path / rec["run_id"]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    logged = [(e.step, e.value) for e in events.Scalars("ensemble_acc")]
    assert logged == [(r["step"], pytest.approx(r["ensemble_acc"])) for r in lines]
    assert events.Scalars("final/metrics/final_acc")[0].value == pytest.approx(rec["metrics"]["final_acc"])

    # wandb's offline transaction log (protobuf records) holds each key and each value as JSON
    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = log.read_bytes()
    assert b"ensemble_acc" in data and all(json.dumps(r["ensemble_acc"]).encode() in data for r in lines)
    assert b"final.metrics.final_acc" in data and json.dumps(rec["metrics"]["final_acc"]).encode() in data

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (ml_run,) = client.search_runs([client.get_experiment_by_name("wab").experiment_id])
    history = client.get_metric_history(ml_run.info.run_id, "ensemble_acc")
    assert sorted((m.step, m.value) for m in history) == [(r["step"], pytest.approx(r["ensemble_acc"])) for r in lines]
    assert ml_run.info.run_name == rec["run_id"] and ml_run.info.status == "FINISHED"


def test_a_failing_logger_never_stops_the_run(tiny, monkeypatch, caplog):
    pytest.importorskip("tensorboard")
    from wab.run import loggers

    class Broken(loggers._TensorBoard):
        def epoch(self, step, values):
            raise OSError("disk full")

    monkeypatch.setitem(loggers._CLASSES, "tensorboard", Broken)
    rec = run(tiny("trainer.loggers=[tensorboard]", "trainer.epochs=2"))
    assert rec["status"] == "done" and rec["metrics"]["final_acc"] is not None
    assert "logger broken stopped (OSError: disk full); the run goes on without it" in caplog.text


def test_an_interrupted_run_closes_its_loggers(tiny, monkeypatch):
    pytest.importorskip("tensorboard")
    from wab.run import loggers
    from wab.run.loop import Interrupted, request_stop

    closed = []

    class Watched(loggers._TensorBoard):
        def close(self):
            closed.append(True)
            super().close()

        def epoch(self, step, values):
            super().epoch(step, values)
            request_stop()  # stop at the next step boundary, with a checkpoint

    monkeypatch.setitem(loggers._CLASSES, "tensorboard", Watched)
    with pytest.raises(Interrupted):
        run(tiny("trainer.loggers=[tensorboard]", "trainer.epochs=3"))
    assert closed == [True]
