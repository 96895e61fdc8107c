import copy

import pytest
import torch
from torch import nn

from wab.core.ledger import CommLedger
from wab.core.population import Population
from wab.parts.models import model_factory
from wab.parts.optim import RowwiseFusedAdamW, RowwiseFusedSGD, build_optimizer


def cnn():
    return model_factory("cnn", 1, 8, 10, width=4)()


def make_pop(n=3, build=cnn):
    return Population(build, seeds=list(range(n)), ledger=CommLedger())


def test_members_are_views_into_the_flat_tensors():
    pop = make_pop()
    for i, m in enumerate(pop.members):
        for seg, (name, p) in zip(pop.param_segments, m.named_parameters()):
            assert seg.name == name
            assert p.data_ptr() == pop.params[seg.group][i, seg.start :].data_ptr()
            assert p.grad.data_ptr() == pop.grads[seg.group][i, seg.start :].data_ptr()
    for i, m in enumerate(pop.members):
        named = dict(m.named_buffers())
        for seg in pop.buffer_segments:
            assert named[seg.name].data_ptr() == pop.buffers[seg.group][i, seg.start :].data_ptr()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_member_output_equals_a_standalone_copy(mode):
    pop = make_pop()
    torch.manual_seed(1)  # the standalone copy: the same seed the population gave member 1
    alone = cnn()
    x = torch.randn(16, 1, 8, 8)
    getattr(pop.members[1], mode)()
    getattr(alone, mode)()
    torch.testing.assert_close(pop.members[1](x), alone(x), rtol=0, atol=0)
    if mode == "train":  # BN statistics land in the flat buffer tensor like in the copy
        torch.testing.assert_close(pop.members[1].features[0][1].running_mean, alone.features[0][1].running_mean)
        seg = pop.buffer_segments[0]
        torch.testing.assert_close(pop.buffers[0][1, seg.start : seg.stop], alone.features[0][1].running_mean)


OPTIMS = [
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    {"name": "adamw", "lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.05},
]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("ocfg", OPTIMS, ids=["sgd", "sgd-nesterov", "adamw"])
def test_flat_optimizer_step_equals_separate_steps(ocfg, fused):
    """The flat step (torch's fused kernel or not) equals N default torch optimizers, one per member."""
    pop = make_pop(n=3)
    copies = [copy.deepcopy(m) for m in pop.members]
    # standalone copies own their storage: deepcopy of a view copies the data, check that
    assert copies[0].head.weight.data_ptr() != pop.members[0].head.weight.data_ptr()
    flat_opt = build_optimizer(pop.params, {**ocfg, "fused": fused})
    assert isinstance(flat_opt, (RowwiseFusedSGD, RowwiseFusedAdamW)) is fused
    kw = {k: v for k, v in ocfg.items() if k != "name"}
    sep_opts = [(torch.optim.SGD if ocfg["name"] == "sgd" else torch.optim.AdamW)(c.parameters(), **kw) for c in copies]
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        xs = [torch.randn(8, 1, 8, 8, generator=gen) for _ in range(3)]
        ys = [torch.randint(0, 10, (8,), generator=gen) for _ in range(3)]
        pop.zero_grad()
        sum(nn.functional.cross_entropy(m(x), y) for m, x, y in zip(pop.members, xs, ys)).backward()
        flat_opt.step()
        for c, o, x, y in zip(copies, sep_opts, xs, ys):
            o.zero_grad()
            nn.functional.cross_entropy(c(x), y).backward()
            o.step()
    for m, c in zip(pop.members, copies):
        for (name, p), q in zip(m.named_parameters(), c.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("ocfg", OPTIMS[1:], ids=["sgd-nesterov", "adamw"])
def test_the_fused_step_of_a_member_does_not_depend_on_the_rows_beside_it(ocfg):
    """Rows split among processes (4 = 2 + 1 + 1) step bit for bit as the whole [4, P] tensor
    over hundreds of steps, and one row as torch's own fused optimizer: an odd row length puts
    the rows at offsets where torch's fused kernel on the flat tensor rounds them differently."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4099, generator=gen)
    whole, parts = x.clone(), [x[:2].clone(), x[2:3].clone(), x[3:].clone()]
    torch_one = x[3:].clone()
    tensors = [whole, *parts, torch_one]
    for t in tensors:
        t.grad = torch.zeros_like(t)
    opts = [build_optimizer([t], {**ocfg, "fused": True}) for t in [whole, *parts]]
    kw = {k: v for k, v in ocfg.items() if k != "name"}
    opts.append((torch.optim.SGD if ocfg["name"] == "sgd" else torch.optim.AdamW)([torch_one], fused=True, **kw))
    for _ in range(300):
        g = torch.randn(4, 4099, generator=gen)
        whole.grad.copy_(g)
        for t, rows in zip(parts, (g[:2], g[2:3], g[3:])):
            t.grad.copy_(rows)
        torch_one.grad.copy_(g[3:])
        for o in opts:
            o.step()
    assert torch.equal(whole, torch.cat(parts))
    assert torch.equal(parts[-1], torch_one)


def test_ledger_totals_match_the_formulas():
    pop = make_pop(n=4)
    d, b = pop.num_params, pop.num_buffers
    assert d == sum(p.numel() for p in cnn().parameters())
    assert b == sum(x.numel() for x in cnn().buffers() if x.is_floating_point())
    pop.average_into_members(include_buffers=True)
    pop.lerp_toward_mean(0.5, include_buffers=False)
    pop.lerp_toward_mean(0.5, include_buffers=True)
    pop.mean(include_buffers=False)
    pop.mean(include_buffers=True, record=False)  # evaluation: not traffic
    ops = pop.ledger.ops
    assert ops["average_into_members"].elements == d + b and ops["average_into_members"].calls == 1
    assert ops["lerp_toward_mean"].elements == (d) + (d + b) and ops["lerp_toward_mean"].calls == 2
    assert ops["mean"].elements == d and ops["mean"].calls == 1
    assert pop.ledger.elements_total == 2 * (d + b) + 2 * d
    assert pop.ledger.bytes_total == 4 * pop.ledger.elements_total  # float32
    summary = pop.ledger.summary(steps=10)
    assert summary["elements_per_step"] == pytest.approx(pop.ledger.elements_total / 10)


def test_average_and_lerp_do_what_they_say():
    pop = make_pop(n=3)
    before = pop.params[0].clone()
    mean = before.mean(0)
    pop.lerp_toward_mean(0.25, include_buffers=False)
    torch.testing.assert_close(pop.params[0], before + 0.25 * (mean - before))
    pop.average_into_members()
    torch.testing.assert_close(pop.params[0], mean.expand_as(before), rtol=0, atol=1e-6)
    for m in pop.members[1:]:  # every member's module sees the average
        torch.testing.assert_close(m.head.weight, pop.members[0].head.weight)


def test_permute_elements_keeps_the_mean_bit_identical_and_moves_optimizer_state():
    pop = make_pop(n=5)
    opt = build_optimizer(pop.params, OPTIMS[0])
    pop.zero_grad()
    sum(m(torch.randn(4, 1, 8, 8)).sum() for m in pop.members).backward()
    opt.step()
    mom = pop.optimizer_state_rows(opt, 0)[0]
    before, mom_before = pop.params[0].clone(), mom.clone()
    mean_before = pop.mean(record=False)[0][0]
    gen = torch.Generator().manual_seed(0)
    cols = torch.randperm(pop.num_params, generator=gen)[:500]
    perms = torch.rand(500, 5, generator=gen).argsort(1)
    pop.permute_elements(0, cols, perms, optimizer=opt)
    after = pop.params[0]
    assert torch.equal(pop.mean(record=False)[0][0], mean_before)
    assert torch.equal(after[:, cols].sort(0).values, before[:, cols].sort(0).values)
    assert torch.equal(after[:, cols], before[:, cols].gather(0, perms.t()))
    rest = torch.ones(pop.num_params, dtype=torch.bool)
    rest[cols] = False
    assert torch.equal(after[:, rest], before[:, rest])
    # each (weight, momentum) pair moved together
    assert torch.equal(mom[:, cols], mom_before[:, cols].gather(0, perms.t()))
    moved = (perms != torch.arange(5)).sum().item()
    assert pop.ledger.ops["permute_elements"].elements == pytest.approx(2 * moved / 5)


def test_member_state_roundtrip_and_model_from():
    pop = make_pop(n=3)
    params, buffers = pop.member_state(2)
    model = pop.model_from(params, buffers)
    x = torch.randn(5, 1, 8, 8)
    pop.members[2].eval()
    model.eval()
    torch.testing.assert_close(model(x), pop.members[2](x), rtol=0, atol=0)
    pop.load_held(0, params, buffers)
    torch.testing.assert_close(pop.params[0][0], pop.params[0][2], rtol=0, atol=0)


def test_bad_input_is_named():
    pop = make_pop(n=2)
    with pytest.raises(ValueError, match="lerp weight must be in"):
        pop.lerp_toward_mean(1.5)
    with pytest.raises(ValueError, match="mixing matrix must be 2x2"):
        pop.mix(torch.eye(3))
    with pytest.raises(ValueError, match="population size must be >= 1"):
        Population(cnn, seeds=[])


def test_channels_last_layout_changes_nothing_but_the_layout():
    plain = make_pop(n=2)
    cl = Population(cnn, seeds=list(range(2)), channels_last=True)
    w = cl.members[0].features[1][0].weight  # 4 input channels (the first conv has 1: both layouts agree)
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    seg = next(s for s in cl.param_segments if s.name == "features.1.0.weight")
    assert w.data_ptr() == cl.params[0][0, seg.start :].data_ptr()
    x = torch.randn(4, 1, 8, 8)
    for a, b in zip(plain.members, cl.members):
        torch.testing.assert_close(a(x), b(x.contiguous(memory_format=torch.channels_last)), rtol=1e-5, atol=1e-5)
    opt_p, opt_c = build_optimizer(plain.params, OPTIMS[0]), build_optimizer(cl.params, OPTIMS[0])
    for pop, opt in ((plain, opt_p), (cl, opt_c)):
        pop.zero_grad()
        sum(m(x).square().mean() for m in pop.members).backward()
        opt.step()
    for a, b in zip(plain.members, cl.members):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    model = cl.model_from(*cl.member_state(1))
    cl.members[1].eval()
    model.eval()
    torch.testing.assert_close(model(x), cl.members[1](x), rtol=0, atol=0)


def test_held_rows_refuses_rows_that_do_not_split_evenly_among_the_members():
    pop = make_pop(n=3)
    assert torch.equal(pop.held_rows(torch.arange(6)), torch.arange(6))  # one process holds every member
    with pytest.raises(ValueError, match="7 rows are not the same number for each of the 3 members"):
        pop.held_rows(torch.arange(7))
