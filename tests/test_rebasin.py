"""Git Re-Basin weight matching: the permutation structure traced from each model, a permuted
copy recovered exactly, function unchanged, and a lower loss barrier between trained members."""

import copy

import pytest
import torch

from wab.core.lmc import barrier
from wab.errors import UserError
from wab.methods._permutation import NotPermutable, apply_permutation, permutation_spec, weight_matching
from wab.parts.models import MLP, VGG, TinyCNN, resnet18, resnet20
from wab.run.config import compose_config
from wab.run.lifecycle import run
from wab.run.validate import validate

from .test_methods import make_run


@pytest.mark.parametrize(
    "build, shape, groups",
    [
        (lambda: MLP(1, 8, 10, hidden=16), (2, 1, 8, 8), 1),
        (lambda: TinyCNN(1, 10, width=4), (2, 1, 8, 8), 3),
        (lambda: resnet20(3, 10), (2, 3, 32, 32), 9),  # option-A padding keeps the residual streams fixed
    ],
)
def test_a_randomly_permuted_member_is_recovered_exactly_and_computes_the_same(build, shape, groups):
    torch.manual_seed(0)
    a = build().eval()
    x = torch.randn(shape)
    spec = permutation_spec(a, x)
    assert len(spec.sizes) == groups
    perms = {g: torch.randperm(n) for g, n in spec.sizes.items()}
    b = copy.deepcopy(a)
    b.load_state_dict(apply_permutation(spec, a.state_dict(), perms))
    assert any(not torch.equal(b.state_dict()[k], a.state_dict()[k]) for k in a.state_dict())
    torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)  # a permutation never changes the function
    found = weight_matching(spec, a.state_dict(), b.state_dict())
    recovered = apply_permutation(spec, b.state_dict(), found)
    assert all(torch.equal(recovered[k], v) for k, v in a.state_dict().items())


def test_only_parameters_enter_the_matching_cost_as_in_the_authors_code():
    """Ainsworth et al. match ``params`` only: BatchNorm running statistics change nothing."""
    torch.manual_seed(0)
    a, b = TinyCNN(1, 10, width=8), TinyCNN(1, 10, width=8)
    spec = permutation_spec(a, torch.randn(2, 1, 8, 8))
    sa, sb = a.state_dict(), b.state_dict()
    found = weight_matching(spec, sa, sb, seed=1)
    noisy = {k: v + 100 * torch.randn_like(v) if k.endswith(("running_mean", "running_var")) else v
             for k, v in sb.items()}  # fmt: skip
    again = weight_matching(spec, sa, noisy, seed=1)
    assert all(torch.equal(found[g], again[g]) for g in found)


def test_residual_streams_are_one_group_and_the_classifier_stays_in_order():
    with torch.device("meta"):
        spec = permutation_spec(resnet18(3, 10), torch.empty(2, 3, 32, 32))
    assert len(spec.sizes) == 12  # 4 residual streams + the inner unit of each of the 8 blocks
    stream = next(g for g, axes in spec.axes.items() if ("stem.0.weight", 0) in axes)
    tied = {name for name, _ in spec.axes[stream]}
    assert {"layers.0.conv2.weight", "layers.1.bn2.weight", "layers.2.conv1.weight"} <= tied
    assert all(name != "fc.weight" or axis == 1 for g in spec.axes for name, axis in spec.axes[g])
    with torch.device("meta"):
        assert len(permutation_spec(VGG(3, 10), torch.empty(2, 3, 32, 32)).sizes) == 13


def test_a_model_it_cannot_trace_is_refused_before_anything_runs(tmp_path):
    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x) if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(NotPermutable, match="cannot be traced"):
        permutation_spec(Gated(), torch.randn(2, 4))
    cfg = compose_config(["population.finalizers=[rebasin]", "model=timm", "model.arch=vit_tiny_patch16_224",
                          "device=cpu", f"out_dir={tmp_path}"])  # fmt: skip
    with pytest.raises(UserError, match="finalizer rebasin cannot align model timm"):
        validate(cfg)
    assert not any(tmp_path.iterdir())


def test_alignment_lowers_the_loss_barrier_between_independently_trained_members(tiny):
    trainer, state = make_run(tiny, "model=mlp", "model.width=64", "population.size=2", "trainer.epochs=4",
                              "trainer.batch_size=32")  # fmt: skip
    trainer.fit()
    pop, ev = state.population, state.evaluator
    a, b = (pop.model_from(*pop.member_state(i)) for i in range(2))

    def loss_barrier(sa, sb):
        ts = [0.0, 0.25, 0.5, 0.75, 1.0]
        losses = []
        for t in ts:
            m = copy.deepcopy(a)
            m.load_state_dict({k: torch.lerp(sa[k].float(), sb[k].float(), t).to(sa[k].dtype) for k in sa})
            losses.append(ev.metrics(ev.recalibrate_bn(m))["nll"])
        return barrier(losses, ts)

    spec = permutation_spec(copy.deepcopy(a), ev.normalize(state.data.train.x[:2]))
    aligned = apply_permutation(spec, b.state_dict(), weight_matching(spec, a.state_dict(), b.state_dict()))
    before, after = loss_barrier(a.state_dict(), b.state_dict()), loss_barrier(a.state_dict(), aligned)
    assert after < before and before > 0.05


def test_the_rebasin_finalizer_delivers_the_aligned_average(tiny):
    rec = run(tiny("population.finalizers=[rebasin]", "trainer.epochs=2"))
    assert rec["status"] == "done" and "rebasin" in rec["metrics"]["final"]
    report = rec["method_report"]["rebasin"]
    assert report["groups"] == 3 and report["repaired_convs"] == 3 and len(report["units_moved"]) == 2
    assert rec["comm"]["ops"]["rebasin_gather"]["pattern"] == "all_gather"
