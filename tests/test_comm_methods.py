"""The communication-efficient methods against transcriptions of their reference updates on
identical tensors, with their ledgers: local SGD, DiLoCo, SPARTA, gossip, EMA, LAWA, Lookaround."""

import pytest
import torch
from torch import nn

from wab.core.member_rows import join_state
from wab.core.population import Population
from wab.methods.diloco import DiLoCo
from wab.methods.ema import Ema, ema_decay
from wab.methods.gossip import grid_shape, mixing_matrix
from wab.methods.lawa import Lawa
from wab.methods.sparta import Sparta
from wab.run.lifecycle import run

from .test_methods import make_run, method_cfg, perturb


def _linear_population(n: int, seed: int = 0) -> Population:
    return Population(lambda: nn.Linear(6, 3), [seed + i for i in range(n)])


def test_local_sgd_with_h1_and_plain_sgd_is_data_parallel_sgd_on_the_union_of_batches():
    n, lr = 3, 0.1
    pop = _linear_population(n)
    pop.average_into_members()  # one starting point, as data-parallel SGD has
    single = nn.Linear(6, 3)
    with torch.no_grad():
        single.weight.copy_(pop.members[0].weight)
        single.bias.copy_(pop.members[0].bias)
    opt = torch.optim.SGD(pop.params, lr=lr)
    ref = torch.optim.SGD(single.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        xs = [torch.randn(4, 6, generator=gen) for _ in range(n)]
        ys = [torch.randint(0, 3, (4,), generator=gen) for _ in range(n)]
        pop.zero_grad()
        for m, x, y in zip(pop.members, xs, ys):
            nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        pop.average_into_members()  # local SGD's step with H = 1
        ref.zero_grad()
        nn.functional.cross_entropy(single(torch.cat(xs)), torch.cat(ys)).backward()
        ref.step()
    for member in pop.members:
        torch.testing.assert_close(member.weight, single.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(member.bias, single.bias, rtol=1e-5, atol=1e-6)


def test_local_sgd_averages_every_h_steps_and_counts_one_all_reduce_each(tiny):
    rec = run(tiny("method=local_sgd", "method.every_steps=5", "trainer.epochs=2", "trainer.batch_size=64"))
    steps = rec["steps"]
    op = rec["comm"]["ops"]["average_into_members"]
    d_b = rec["comm"]["model_elements"] + rec["comm"]["buffer_elements"]
    assert op["calls"] == steps // 5 and op["elements"] == op["calls"] * d_b and op["pattern"] == "all_reduce"
    assert rec["metrics"]["distance_to_mean"] > 0  # the last step was not an average: members differ again


def _diloco(state, **cfg):
    m = DiLoCo(method_cfg("diloco", {"every_steps": 1, **cfg}))
    m.setup(state)
    return m


def test_diloco_outer_step_is_nesterov_sgd_on_global_minus_the_members_mean(tiny):
    _, state = make_run(tiny, "method=diloco", "population.size=3")
    pop = state.population
    m = _diloco(state)
    gen = torch.Generator().manual_seed(0)
    g0 = pop.params[0][0].clone()
    buf = torch.zeros_like(g0)
    lr, mu = 0.7, 0.9
    expected = g0.clone()
    for step in (1, 2, 3):
        perturb(pop, gen)
        delta = expected - pop.params[0].double().mean(0).float()
        buf = mu * buf + delta  # torch's SGD: buf <- mu buf + g; Nesterov uses g + mu buf
        expected = expected - lr * (delta + mu * buf)
        state.step = step
        m.after_step(state)
        torch.testing.assert_close(m.global_params[0].detach(), expected, rtol=1e-5, atol=1e-6)
        for row in pop.params[0]:  # every member restarts from the global model
            assert torch.equal(row, m.global_params[0].detach())
    assert state.ledger.ops["mean"].calls == 3 and m.outer.state_dict()["state"]  # the outer momentum is state


def test_diloco_with_outer_sgd_lr_1_and_no_momentum_is_local_sgd(tiny):
    common = ("trainer.epochs=2", "trainer.batch_size=64", "population.size=3", "optim.lr=0.05",
              "optim.weight_decay=5e-4", "optim.clip_norm=0.5")  # the same inner optimizer for both  # fmt: skip
    diloco = run(tiny("method=diloco", "method.every_steps=4", "method.outer_lr=1.0", "method.outer_momentum=0.0",
                      "method.outer_nesterov=false", "optim=sgd", *common))  # fmt: skip
    local = run(tiny("method=local_sgd", "method.every_steps=4", "population.same_init=true", *common))
    assert diloco["status"] == local["status"] == "done"
    for key in ("individual", "ensemble_acc", "avg_bn_acc", "distance_to_mean"):
        assert diloco["metrics"][key] == pytest.approx(local["metrics"][key], rel=1e-4, abs=1e-4), key
    assert diloco["comm"]["elements_total"] == local["comm"]["elements_total"]


def test_diloco_resumes_with_its_outer_state(tiny, tmp_path):
    from wab.run.lifecycle import run_dir_for
    from wab.run.loop import Trainer

    cfg = tiny("method=diloco", "method.every_steps=3", "trainer.epochs=2")
    trainer = Trainer(cfg, run_dir_for(cfg))
    trainer.fit()
    state = trainer.method.state_dict(trainer.state)
    again = Trainer(cfg, run_dir_for(cfg))
    again.method.setup(again.state)
    again.method.load_state_dict(again.state, state)
    assert torch.equal(again.method.global_params[0], trainer.method.global_params[0])
    assert again.method.outer.state_dict()["state"][0]["momentum_buffer"].equal(
        trainer.method.outer.state_dict()["state"][0]["momentum_buffer"]
    )


def test_sparta_averages_the_chosen_positions_and_keeps_the_mean(tiny):
    _, state = make_run(tiny, "method=sparta", "population.size=4", "model=mlp", "model.width=32")
    pop = state.population
    perturb(pop, torch.Generator().manual_seed(0))
    before = pop.params[0].clone()
    mean_before = pop.params[0].double().mean(0)
    m = Sparta(method_cfg("sparta", {"p": 0.05}))
    m.setup(state)
    rng_copy = torch.Generator().set_state(state.rng.get_state())
    m.after_step(state)
    # the reference: the same positions from the same stream, set to the float64 mean there
    from wab.methods.wash import sample_positions

    cols = sample_positions(pop.param_segments, torch.full((len(pop.param_segments),), 0.05, dtype=torch.float64),
                            rng_copy)  # fmt: skip
    expected = before.clone()
    expected[:, cols] = before[:, cols].double().mean(0).float()
    assert torch.equal(pop.params[0], expected)
    assert (pop.params[0][:, cols] == pop.params[0][0, cols]).all()  # equal across members
    untouched = torch.ones(before.shape[1], dtype=torch.bool)
    untouched[cols] = False
    assert torch.equal(pop.params[0][:, untouched], before[:, untouched])
    torch.testing.assert_close(pop.params[0].double().mean(0), mean_before, rtol=0, atol=1e-7)
    op = state.ledger.ops["average_elements"]
    assert op.elements == len(cols) and op.pattern == "all_reduce"
    assert abs(len(cols) / before.shape[1] - 0.05) < 0.02


def test_gossip_mixing_matrices_are_doubly_stochastic_with_the_topologys_neighbours():
    gen = torch.Generator().manual_seed(0)
    ring = mixing_matrix("ring", 5, gen)
    assert ring[0].tolist() == pytest.approx([1 / 3, 1 / 3, 0, 0, 1 / 3])
    assert grid_shape(6) == (2, 3) and grid_shape(9) == (3, 3) and grid_shape(7) == (1, 7)
    torus = mixing_matrix("torus", 9, gen)
    assert (torus[4] > 0).nonzero().flatten().tolist() == [1, 3, 4, 5, 7]  # the centre and its 4 neighbours
    for topology, n in (("ring", 5), ("ring", 2), ("torus", 9), ("torus", 6), ("random_peer", 5), ("random_peer", 4)):
        w = mixing_matrix(topology, n, gen)
        torch.testing.assert_close(w.sum(0), torch.ones(n, dtype=torch.float64))
        torch.testing.assert_close(w.sum(1), torch.ones(n, dtype=torch.float64))
        assert torch.equal(w, w.t())
    peer = mixing_matrix("random_peer", 4, gen)
    assert sorted((peer > 0).sum(1).tolist()) == [2, 2, 2, 2]  # a perfect matching: self and one peer


def test_gossip_mixes_as_its_matrix_says_keeps_the_mean_and_counts_neighbour_exchanges(tiny):
    trainer, state = make_run(tiny, "method=gossip", "population.size=5", "method.order=adapt_then_combine")
    pop = state.population
    perturb(pop, torch.Generator().manual_seed(1))
    before = pop.params[0].clone()
    trainer.method.setup(state)
    trainer.method.after_step(state)
    w = mixing_matrix("ring", 5, state.rng)
    torch.testing.assert_close(pop.params[0], (w @ before.double()).float())
    torch.testing.assert_close(pop.params[0].double().mean(0), before.double().mean(0), rtol=0, atol=1e-7)
    op = state.ledger.ops["gossip_ring"]
    d_b = pop.num_params + pop.num_buffers
    assert op.pattern == "neighbour" and op.elements == 2 * d_b  # two neighbours on a ring


def test_gossip_in_lians_order_mixes_the_point_before_the_step_and_adds_the_step(tiny):
    """Lian et al., Algorithm 1: x' = W x - lr g(x), the gradient at x (not at W x, nor mixed)."""
    trainer, state = make_run(tiny, "method=gossip", "population.size=5", "optim.momentum=0", "optim.weight_decay=0")
    pop = state.population
    perturb(pop, torch.Generator().manual_seed(1))
    trainer.method.setup(state)
    x = pop.params[0].clone()
    trainer._new_epoch()
    trainer.train_step(0)  # the optimizer's step, then the method's mix
    grad = pop.grads[0].clone()  # g(x): the gradient of the step, taken at x
    w = mixing_matrix("ring", 5, torch.Generator().manual_seed(member_seed_of(state)))
    want = (w @ x.double()).float() - state.lr * grad
    torch.testing.assert_close(pop.params[0], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pop.params[0].double().mean(0), (x.double() - state.lr * grad.double()).mean(0),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert trainer.method.before is not None and torch.equal(trainer.method.before[0], pop.params[0])


def member_seed_of(state):
    from wab.run.build import member_seed

    return member_seed(state.cfg["seed"], 9_999)


def _ema_pytorch(beta, update_after_step, update_every, power=2 / 3, inv_gamma=1.0):
    """lucidrains/ema-pytorch's EMA.update on one tensor (as in Sanyal et al.'s train_ema.py)."""
    state = {"step": 0, "initted": False, "ema": None}

    def update(current):
        step = state["step"]
        state["step"] += 1
        if step % update_every != 0:
            return
        if step <= update_after_step:
            state["ema"] = current.clone()
            return
        if not state["initted"]:
            state["ema"] = current.clone()
            state["initted"] = True
        epoch = max(state["step"] - update_after_step - 1, 0.0)
        value = 1 - (1 + epoch / inv_gamma) ** -power
        decay = 0.0 if epoch <= 0 else min(max(value, 0.0), beta)
        state["ema"] = state["ema"].lerp(current, 1.0 - decay)

    return state, update


@pytest.mark.parametrize("after, every", [(0, 1), (3, 2)])
def test_ema_is_ema_pytorchs_update_at_the_authors_settings(tiny, after, every):
    _, state = make_run(tiny, "method=ema", "population.size=2")
    pop = state.population
    m = Ema(method_cfg("ema", {"update_after_step": after, "update_every": every}))
    m.setup(state)
    assert m.beta == 0.9  # Sanyal et al.'s decay
    theirs, update = _ema_pytorch(0.9, after, every)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 40):
        perturb(pop, gen)
        state.step = step
        m.after_step(state)
        update(pop.params[0][0].clone())
    torch.testing.assert_close(m.averages[0][0], theirs["ema"], rtol=1e-6, atol=1e-7)


def test_ema_follows_the_tensorflow_recursion_with_its_warm_up(tiny):
    _, state = make_run(tiny, "method=ema", "population.size=2")
    pop = state.population
    m = Ema(method_cfg("ema", {"decay": 0.9, "warmup": "tensorflow"}))
    m.setup(state)
    expected = pop.params[0].clone()
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 30):
        perturb(pop, gen)
        beta = min(0.9, (1 + step) / (10 + step))
        expected = beta * expected + (1 - beta) * pop.params[0]
        state.step = step
        m.after_step(state)
    torch.testing.assert_close(m.averages[0], expected, rtol=1e-5, atol=1e-6)
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11) and ema_decay(0.9, 10_000) == 0.9


def test_lawa_averages_each_members_latest_k_epoch_checkpoints(tiny):
    _, state = make_run(tiny, "method=lawa", "population.size=2")
    pop = state.population
    m = Lawa(method_cfg("lawa", {"k": 3}))
    m.setup(state)
    gen = torch.Generator().manual_seed(0)
    snaps = []
    for epoch in range(5):
        perturb(pop, gen)
        snaps.append(pop.params[0].clone())
        state.epoch = epoch
        m.after_epoch(state)
    models = m.finalize(state)
    expected = torch.stack(snaps[-3:]).mean(0)
    for i in range(2):
        got = pop.state_of(models[f"lawa_{i}"].model)[0][0]
        torch.testing.assert_close(got, expected[i])


def test_ema_and_lawa_deliver_one_recalibrated_model_per_member_at_no_cost(tiny):
    for method in ("ema", "lawa"):
        rec = run(tiny(f"method={method}", "trainer.epochs=2", "population.size=2"))
        assert set(rec["metrics"]["final"]) == {f"{method}_0", f"{method}_1"} and rec["comm"]["elements_total"] == 0


def test_lookaround_heads_see_the_same_batches_with_their_own_augmentation(tiny):
    trainer, state = make_run(tiny, "method=lookaround", "population.size=3", "data.augment.flip=true")
    # the authors' build_transforms: crop, then flip | AutoAugment() (ImageNet policy) | RandAugment(), no flip
    assert [a.policy for a in trainer.augment] == [None, "autoaugment_imagenet", "randaugment"]
    assert [a.flip for a in trainer.augment] == [True, False, False]
    assert [a.policy_after_crop for a in trainer.augment] == [False, True, True]
    stacked, _ = make_run(tiny, "method=lookaround", "population.size=3", "data.augment.flip=true",
                          "method.heads=stacked", "method.augmentations=[flip,autoaugment,randaugment]")  # fmt: skip
    assert [a.flip for a in stacked.augment] == [True, True, True]
    rec = run(tiny("method=lookaround", "population.size=3", "trainer.epochs=2", "trainer.batch_size=64"))
    steps = rec["steps"]
    assert rec["comm"]["ops"]["average_into_members"]["calls"] == steps // 5
    from wab.run.lifecycle import run_dir_for

    rd = run_dir_for(tiny("method=lookaround", "population.size=3", "trainer.epochs=2", "trainer.batch_size=64"))
    ckpt = torch.load(rd.checkpoint, weights_only=True)
    perms = join_state(ckpt["state"], rd.path / ckpt["shards"], range(3), torch.device("cpu"))["perms"].rows
    assert all(torch.equal(p, perms[0]) for p in perms)  # one data order for every head


def test_lookaround_shared_statistics_are_the_sequential_update_of_one_set_by_every_head(tiny):
    trainer, state = make_run(tiny, "method=lookaround", "population.size=3")
    pop = state.population
    perturb(pop, torch.Generator().manual_seed(0))
    trainer.method.setup(state)
    start = [b[0].clone() for b in pop.buffers]
    batches = [state.evaluator.normalize(state.data.train.x[i * 32 : (i + 1) * 32]) for i in range(3)]
    pop.train()
    with torch.no_grad():
        for member, x in zip(pop.members, batches):  # each head updates its own copy of the start
            member(x)
        trainer.method._share_buffers(state)
    one = pop.model_from([p[0] for p in pop.params], start).train()  # one set of statistics, the heads in turn
    with torch.no_grad():
        for i, x in enumerate(batches):
            params, _ = pop.state_of(pop.model_from([p[i] for p in pop.params]))
            shared = pop.state_of(one)[1]
            one = pop.model_from(params, shared).train()
            one(x)
    want = pop.state_of(one)[1]
    for flat, w in zip(pop.buffers, want):
        for row in flat:
            torch.testing.assert_close(row, w, rtol=1e-5, atol=1e-6)
    assert state.ledger.ops["lookaround_shared_bn"].elements == pop.num_buffers


def test_per_member_gradient_clipping_is_torchs_clip_grad_norm_on_each_member(tiny):
    from wab.core.step import clip_member_gradients

    _, state = make_run(tiny, "population.size=3")
    pop = state.population
    gen = torch.Generator().manual_seed(0)
    for g in pop.grads:
        g.copy_(torch.randn(g.shape, generator=gen) * torch.tensor([0.001, 1.0, 10.0]).unsqueeze(1))
    want = []
    for member in pop.members:
        grads = [p.grad.clone() for p in member.parameters()]
        copies = [torch.nn.Parameter(p.detach().clone()) for p in member.parameters()]
        for c, g in zip(copies, grads):
            c.grad = g
        torch.nn.utils.clip_grad_norm_(copies, 1.0)
        want.append([c.grad for c in copies])
    clip_member_gradients(pop, 1.0)
    for member, w in zip(pop.members, want):
        for p, g in zip(member.parameters(), w):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-8)
    assert float(pop.grads[0][0].norm()) < 1.0 and float(pop.grads[0][2].norm()) == pytest.approx(1.0, rel=1e-5)


def test_dilocos_inner_optimizer_is_the_authors_adamw():
    from wab.run.config import compose_config

    optim = compose_config(["method=diloco"])["optim"]
    assert (optim["name"], optim["lr"], optim["weight_decay"], optim["betas"], optim["clip_norm"]) == (
        "adamw", 4e-4, 0.1, [0.9, 0.95], 1.0)  # fmt: skip


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_per_member_lr_scale_and_weight_decay_match_separate_optimizers(tiny, optim):
    from wab.run.loop import Trainer

    cfg = tiny(f"optim={optim}", "population.size=2", "optim.fused=false", "trainer.epochs=1",
               "population.member_augment=[{lr_scale: 0.5, weight_decay: 0.01},{label_smoothing: 0.1}]")  # fmt: skip
    trainer = Trainer(cfg, None)
    pop = trainer.population
    assert trainer.augment[1].label_smoothing == 0.1 and trainer.recipes is not None
    refs = [p.detach().clone().requires_grad_(True) for p in pop.params[0]]
    lr, wd = float(cfg["optim"]["lr"]), float(cfg["optim"]["weight_decay"])
    make = (lambda ps, lr_, wd_: torch.optim.SGD(ps, lr=lr_, momentum=0.9, weight_decay=wd_)) if optim == "sgd" else (
        lambda ps, lr_, wd_: torch.optim.AdamW(ps, lr=lr_, weight_decay=wd_))  # fmt: skip
    opts = [make([refs[0]], 0.5 * lr, 0.01), make([refs[1]], lr, wd)]
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        grads = torch.randn(pop.params[0].shape, generator=gen)
        pop.zero_grad()
        pop.grads[0].copy_(grads)
        trainer.recipes.before_step(lr)
        trainer.optimizer.step()
        trainer.recipes.after_step(lr)
        for i in range(2):
            refs[i].grad = grads[i].clone()
            opts[i].step()
    for i in range(2):  # as if each member had its own torch optimizer
        torch.testing.assert_close(pop.params[0][i], refs[i].detach(), rtol=1e-5, atol=1e-6)


def test_bad_per_member_recipes_are_refused(tiny):
    from wab.errors import UserError
    from wab.run.validate import validate

    with pytest.raises(UserError, match=r"member_augment\[0\].lr_scale=-1 must be a number > 0"):
        validate(tiny("population.member_augment=[{lr_scale: -1}]"))
    with pytest.raises(UserError, match="unknown augmentation option"):
        validate(tiny("population.member_augment=[{lr: 2}]"))
