"""trainer.members=batched: the members' forward and backward as one vmapped computation gives the
loop's gradients, BatchNorm statistics and records to float tolerance, on every method and on the
distributed backend; its run id differs from the loop's; a model it cannot batch is refused or
falls back to the loop with a note in the record."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from wab.core.batched import BatchedMembers, batching_problem
from wab.core.population import Population
from wab.core.step import forward_backward
from wab.errors import UserError
from wab.parts.augment import Batch
from wab.parts.device import resolve_members
from wab.parts.models import model_factory
from wab.run.build import _batched
from wab.run.config import compose_config
from wab.run.lifecycle import plain_config, run_dir_for
from wab.run.records import run_id
from wab.run.spec import RunSpec

from .run_methods import configs

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
# per member, |g - g_exact| / |g_exact| against the float64 loop: the batched gradient is as close to
# the exact one as the float32 loop's (within 3x), or within GRAD_RTOL of it (oneDNN's grouped
# convolutions add in another order)
GRAD_RTOL = 2e-3


def _batches(n: int, b: int, gen: torch.Generator, lam: float = 1.0) -> list[Batch]:
    out = []
    for _ in range(n):
        x = torch.randn(b, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (b,), generator=gen)
        out.append(Batch(x, y, torch.roll(y, 1), lam, 0.1))
    return out


def _populations(name: str, n: int) -> tuple[Population, Population, Population]:
    """The same members three times: for the loop, for the batched step, and in float64 (the exact reference)."""
    build = model_factory(name, 3, 32, 10)
    pops = (Population(build, list(range(n)), "cpu", channels_last=True),
            Population(build, list(range(n)), "cpu", channels_last=True),
            Population(lambda: build().double(), list(range(n)), "cpu", channels_last=True))  # fmt: skip
    for p in pops:
        p.train()
    return pops


def _err(g: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    return (g.double() - exact).norm(dim=1) / exact.norm(dim=1)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20"])
def test_batched_steps_give_the_loops_gradients_and_batchnorm_statistics(name):
    loop, batched, exact = _populations(name, 3)
    step = BatchedMembers(batched)
    gen = torch.Generator().manual_seed(0)
    for k in range(3):  # three steps: the statistics and the counters carry over from step to step
        batches = _batches(3, 8, gen, lam=0.7 if k == 1 else 1.0)  # a mixed batch on one step
        for p in (loop, batched, exact):
            p.zero_grad()
        total_loop = forward_backward(loop, batches)
        total_batched = step.forward_backward(batches)
        forward_backward(exact, [dataclasses.replace(b, x=b.x.double()) for b in batches])
        assert total_batched.item() == pytest.approx(total_loop.item(), rel=1e-5)
        for g_loop, g_batched, g_exact in zip(loop.grads, batched.grads, exact.grads):
            bound = torch.clamp(3 * _err(g_loop, g_exact), min=GRAD_RTOL)
            assert (_err(g_batched, g_exact) < bound).all(), (_err(g_batched, g_exact), _err(g_loop, g_exact))
            assert not torch.equal(g_batched[0], g_batched[1])  # each member its own batch, its own gradient
        for b_loop, b_batched in zip(loop.buffers, batched.buffers):
            assert torch.allclose(b_batched, b_loop, rtol=1e-4, atol=1e-6)
            assert not torch.equal(b_batched[0], b_batched[1])
        with torch.no_grad():  # the same small step on all three, from the exact gradient
            for pops in (loop, batched, exact):
                for p, g in zip(pops.params, exact.grads):
                    p.sub_(0.1 * g.to(p.dtype))
    for m_loop, m_batched in zip(loop.members, batched.members):
        ints = [(k, b) for k, b in m_loop.named_buffers() if not b.is_floating_point()]
        got = dict(m_batched.named_buffers())
        assert ints and all(torch.equal(got[k], b) for k, b in ints)  # num_batches_tracked: 3 in every member
        assert all(int(b) == 3 for _, b in ints)


class _WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(x.flatten(1)))


def test_a_model_that_draws_random_numbers_is_refused_by_name_and_falls_back_under_auto():
    pop = Population(_WithDropout, [0, 1], "cpu")
    before = [b.clone() for b in pop.buffers]
    problem = batching_problem(pop, torch.zeros(2, 3, 32, 32))
    assert problem is not None and "random" in problem.lower()
    assert all(torch.equal(a, b) for a, b in zip(before, pop.buffers))
    assert batching_problem(Population(model_factory("cnn", 3, 32, 10), [0, 1]), torch.zeros(2, 3, 32, 32)) is None
    cfg = compose_config(["trainer.members=batched", "device=cpu"])
    spec = RunSpec.from_config(cfg)
    with pytest.raises(UserError, match="trainer.members=batched: .*cannot be batched.*trainer.members=loop"):
        _batched(spec, pop, lambda: torch.zeros(2, 3, 32, 32), dry=False)
    auto = dataclasses.replace(spec, cfg={**cfg, "trainer": {**cfg["trainer"], "members": "auto"}})
    used, record = _batched(auto, pop, lambda: torch.zeros(2, 3, 32, 32), dry=False)
    assert used is None and record["mode"] == "loop" and record["asked"] == "auto" and "random" in record["why"].lower()


def test_the_member_mode_names_the_run_only_when_the_members_are_batched():
    def rid(*overrides):
        return run_id(plain_config(compose_config(["trainer.threads=1", *overrides])))

    loop = rid("device=cpu")
    assert rid("device=cpu", "trainer.members=loop") == loop == rid("device=cpu", "trainer.members=auto")
    cfg = plain_config(compose_config(["trainer.threads=1", "device=cpu"]))
    del cfg["trainer"]["members"]  # a record from before the setting
    assert run_id(cfg) == loop
    assert rid("device=cpu", "trainer.members=batched") != loop
    cuda = {**cfg, "device": "cuda"}
    auto_cuda = run_id({**cuda, "trainer": {**cuda["trainer"], "members": "auto"}})
    assert auto_cuda == run_id({**cuda, "trainer": {**cuda["trainer"], "members": "batched"}})
    assert auto_cuda != run_id({**cuda, "trainer": {**cuda["trainer"], "members": "loop"}})
    assert resolve_members("auto", "cuda:0") == "batched" and resolve_members("auto", "cpu") == "loop"
    with pytest.raises(ValueError, match="trainer.members='vmap' must be one of loop, batched, auto"):
        RunSpec.from_config(compose_config(["trainer.members=vmap"]))
    with pytest.raises(ValueError, match="trainer.compile=true .*trainer.members=batched"):
        RunSpec.from_config(compose_config(["trainer.members=batched", "trainer.compile=true", "device=cpu"]))


def _close(got: dict, ref: dict, method: str, test_images: int) -> None:
    """Accuracies and disagreements within one test image, calibration errors within two, other numbers
    within 1e-3 relative (1e-3 absolute below 1: a loss barrier is a difference of losses)."""
    for k, v in ref.items():
        if isinstance(v, dict):
            _close(got[k], v, f"{method}.{k}", test_images)
        elif isinstance(v, float) and not isinstance(v, bool):
            per_image = any(w in k for w in ("acc", "disagreement", "individual", "members_recal"))
            # one image that changes its prediction moves an accuracy by 1/n, an ECE by up to 2/n (two bins)
            tol = 1.01 / test_images if per_image else 2.02 / test_images if "ece" in k else 1e-3 * max(abs(v), 1.0)
            assert abs(got[k] - v) <= tol, (method, k, got[k], v)
        elif not isinstance(v, list):
            assert got[k] == v, (method, k, got[k], v)


def _records(out: Path, backend: str, extra: tuple[str, ...] = ()) -> dict[str, dict]:
    return {m: json.loads((run_dir_for(c).path / "final.json").read_text())
            for m, c in configs(str(out), backend, extra).items()}  # fmt: skip


@pytest.mark.slow
def test_every_method_batched_gives_the_loops_records_locally_and_on_2_processes(tmp_path):
    from .test_distributed import _torchrun

    script = str(ROOT / "tests" / "run_methods.py")
    batched = ("trainer.members=batched",)
    for cmd in ([sys.executable, script, str(tmp_path / "loop"), "local"],
                [sys.executable, script, str(tmp_path / "batched"), "local", *batched],
                _torchrun(2, script, str(tmp_path / "p2"), "distributed", *batched)):  # fmt: skip
        p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
    loop = _records(tmp_path / "loop", "local")
    test_images = 360  # digits' test split: one image is 1/360 of an accuracy
    for records in (
        _records(tmp_path / "batched", "local", batched),
        _records(tmp_path / "p2", "distributed", batched),
    ):
        for method, ref in loop.items():
            got = records[method]
            assert got["status"] == "done", (method, got.get("error"))
            assert got["members"] == {"mode": "batched", "asked": "batched"} and ref["members"]["mode"] == "loop"
            assert got["run_id"] != ref["run_id"]
            _close(got["metrics"], ref["metrics"], method, test_images)
