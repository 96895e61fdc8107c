"""Each method's defining property, checked against its formula or reference implementation."""

import copy
import math

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from wab.method import available_methods
from wab.methods.aswa import Aswa, aswa_decision
from wab.methods.papa import Papa
from wab.methods.papa_2 import Papa2, pair_mixing_matrix
from wab.methods.papa_all import PapaAll, merge_epochs
from wab.methods.soups import greedy_ingredients
from wab.methods.swa import Swa
from wab.methods.twa import block_basis, fitted_weights, pseudo_inverse
from wab.methods.wash import Wash, layer_probabilities, random_permutations, sample_positions
from wab.methods.wash_opt import WashOpt
from wab.run.config import compose_config
from wab.run.lifecycle import run, run_dir_for
from wab.run.loop import Interrupted, Trainer, request_stop


def method_cfg(name, overrides):
    """The method's config at its defaults (configs/method/<name>.yaml), with ``overrides``."""
    return {**compose_config([f"method={name}"])["method"], **overrides}


def make_run(tiny, *overrides):
    cfg = tiny(*overrides)
    trainer = Trainer(cfg, run_dir_for(cfg))
    return trainer, trainer.state


def perturb(pop, gen, scale=0.1):
    with torch.no_grad():
        for p in pop.params:
            p.add_(torch.randn(p.shape, generator=gen) * scale)


# ----------------------------------------------------------------------------------------- WASH
def test_wash_shuffle_keeps_the_mean_bit_identical_and_each_multiset(tiny):
    _, state = make_run(tiny, "population.size=5", "model.width=8")
    pop = state.population
    perturb(pop, torch.Generator().manual_seed(0))
    wash = Wash(method_cfg("wash", {"p": 0.2, "schedule": "constant"}))
    wash.setup(state)
    mean_before = pop.mean(record=False)
    before = pop.params[0].clone()
    for _ in range(3):
        wash.shuffle(pop, state.rng)
    mean_after = pop.mean(record=False)
    assert all(torch.equal(a, b) for a, b in zip(mean_before[0] + mean_before[1], mean_after[0] + mean_after[1]))
    assert torch.equal(pop.params[0].sort(0).values, before.sort(0).values)
    assert not torch.equal(pop.params[0], before)


def test_wash_layer_probabilities():
    lin = layer_probabilities(0.01, 5, "linear")
    assert lin.tolist() == pytest.approx([0.01, 0.0075, 0.005, 0.0025, 0.0])
    assert layer_probabilities(0.05, 3, "constant").tolist() == [0.05] * 3
    with pytest.raises(ValueError, match="wash schedule must be one of"):
        layer_probabilities(0.01, 3, "cubic")


def test_wash_shuffled_fraction_is_binomial_with_p_l(tiny):
    _, state = make_run(tiny, "model=mlp", "model.width=256")
    segs = state.population.param_segments
    probs = layer_probabilities(0.1, len(segs), "linear")
    gen = torch.Generator().manual_seed(0)
    reps = 200
    counts = torch.zeros(len(segs))
    for _ in range(reps):
        pos = sample_positions(segs, probs, gen)
        assert len(pos.unique()) == len(pos)  # distinct positions
        seg_of = torch.bucketize(pos, torch.tensor([s.start for s in segs]), right=True) - 1
        counts += torch.bincount(seg_of, minlength=len(segs)).float()
    for seg, p, c in zip(segs, probs.tolist(), counts.tolist()):
        n = seg.numel * reps
        sd = math.sqrt(n * p * (1 - p))
        assert abs(c - n * p) <= 4.5 * sd + 1e-9, (seg.name, c / n, p)  # 4.5 sigma: false alarm ~1e-5


def test_wash_opt_moves_each_weight_with_its_momentum(tiny):
    trainer, state = make_run(tiny, "population.size=4", "optim.name=sgd")
    trainer.perms = [torch.arange(len(trainer.data.train))] * 4
    trainer.train_step(0)  # creates momentum buffers
    pop, opt = state.population, state.optimizer
    (mom,) = pop.optimizer_state_rows(opt, 0)
    pairs_before = torch.stack([pop.params[0], mom], -1).clone()  # [N, P, 2]
    wash = WashOpt(method_cfg("wash_opt", {"p": 0.3, "schedule": "constant"}))
    wash.setup(state)
    wash.after_step(state)
    pairs_after = torch.stack([pop.params[0], mom], -1)
    moved = (pairs_after != pairs_before).any(-1).any(0)
    assert moved.sum() > 0
    for j in moved.nonzero().flatten()[:200].tolist():  # the same (w, m) pairs, in another order
        a = sorted(map(tuple, pairs_before[:, j].tolist()))
        b = sorted(map(tuple, pairs_after[:, j].tolist()))
        assert a == b
    assert pop.ledger.ops["permute_elements"].calls == 1


def test_wash_ledger_matches_the_expected_count(tiny):
    _, state = make_run(tiny, "population.size=4", "model=mlp", "model.width=128")
    pop = state.population
    wash = Wash(method_cfg("wash", {"p": 0.05, "schedule": "linear"}))
    wash.setup(state)
    reps = 100
    for _ in range(reps):
        wash.shuffle(pop, state.rng)
    n = pop.size
    expected = sum(p * s.numel for p, s in zip(wash.param_probs.tolist(), pop.param_segments)) * (n - 1) / n
    measured = pop.ledger.ops["permute_elements"].elements / reps
    assert measured == pytest.approx(expected, rel=0.05)


def test_random_permutations_are_uniform():
    perms = random_permutations(24000, 3, torch.Generator().manual_seed(0))
    assert torch.equal(perms.sort(1).values, torch.arange(3).expand(24000, 3))
    counts = torch.unique(perms, dim=0, return_counts=True)[1]
    assert len(counts) == 6 and counts.min() > 3700 and counts.max() < 4300


# ----------------------------------------------------------------------------------------- PAPA
def test_papa_pull_matches_the_formula(tiny):
    _, state = make_run(tiny, "population.size=3")
    pop = state.population
    perturb(pop, torch.Generator().manual_seed(1))
    papa = Papa(method_cfg("papa", {"alpha": 0.99, "every": 10, "counter": "end"}))
    papa.setup(state)
    state.lr, state.lr0, state.epoch_step = 0.025, 0.05, 10
    before, buffers = pop.params[0].clone(), pop.buffers[0].clone()
    papa.after_step(state)
    w = (0.025 / 0.05) * (1 - 0.99)
    torch.testing.assert_close(pop.params[0], before + w * (before.mean(0) - before), rtol=0, atol=1e-7)
    torch.testing.assert_close(pop.buffers[0], buffers + w * (buffers.mean(0) - buffers), rtol=0, atol=1e-7)
    state.epoch_step = 11
    snapshot = pop.params[0].clone()
    papa.after_step(state)
    assert torch.equal(pop.params[0], snapshot)  # only every k steps
    assert pop.ledger.ops["lerp_toward_mean"].elements == pop.num_params + pop.num_buffers


def test_papa_pulls_as_the_authors_loop_does(tiny):
    """The authors' loop: after the optimizer step of 0-based batch i with i % k == 0 (steps 1,
    k+1, 2k+1 of each epoch, ceil(S / k) pulls per epoch), with the lr the scheduler reports after
    its step, the next step's lr."""
    trainer, state = make_run(tiny, "method=papa", "method.every=4", "trainer.epochs=2", "trainer.batch_size=128")
    pulls = []
    original = Papa.pull_weight

    def recording(self, run):
        w = original(self, run)
        pulls.append((run.epoch, run.epoch_step, run.step, w))
        return w

    Papa.pull_weight = recording
    try:
        trainer.fit()
    finally:
        Papa.pull_weight = original
    s = trainer.steps_per_epoch  # 11 on digits with batch 128
    assert s == 11
    assert [(e, k) for e, k, _, _ in pulls] == [(e, k) for e in (0, 1) for k in (1, 5, 9)]  # ceil(11 / 4) = 3
    optim = state.cfg["optim"]
    for _, _, step, w in pulls:  # step = steps done; the lr read is that of 0-based step `step`, the next
        from wab.parts.optim import lr_at

        expected = lr_at(step, state.total_steps, s, optim) / optim["lr"] * (1 - 0.99)
        assert w == pytest.approx(expected, rel=1e-12)
    assert trainer.ledger.ops["lerp_toward_mean"].calls == 6


def test_papa_all_merges_every_k_epochs_from_the_first_never_the_last(tiny):
    assert merge_epochs(12, 5) == [0, 5, 10]
    assert merge_epochs(11, 5) == [0, 5]
    assert merge_epochs(11, 5, include_first=False) == [5]
    _, state = make_run(tiny, "population.size=3", "trainer.epochs=6")
    pop = state.population
    m = PapaAll(method_cfg("papa_all", {"every_epochs": 5, "repair": False}))
    m.setup(state)
    mean = pop.params[0].mean(0)
    state.epoch = 1
    m.after_epoch(state)
    assert not torch.equal(pop.params[0][0], pop.params[0][1])
    state.epoch = 0
    m.after_epoch(state)
    torch.testing.assert_close(pop.params[0], mean.expand(3, -1), rtol=0, atol=1e-7)


def test_papa_2_replaces_each_member_by_the_midpoint_of_a_random_pair(tiny):
    w = pair_mixing_matrix(5, torch.Generator().manual_seed(0))
    rows = [tuple(r.nonzero().flatten().tolist()) for r in w]
    assert all(len(r) == 2 for r in rows) and len(set(rows)) == 5
    assert torch.all(w.sum(1) == 1) and set(w.unique().tolist()) == {0.0, 0.5}
    # N = 2: one pair, both members become its midpoint (the authors' code)
    assert torch.equal(pair_mixing_matrix(2, torch.Generator()), torch.full((2, 2), 0.5, dtype=torch.float64))
    _, state = make_run(tiny, "population.size=4")
    pop = state.population
    before = pop.params[0].clone()
    m = Papa2(method_cfg("papa_2", {"every_epochs": 1, "repair": False}))
    m.setup(state)
    gen_state = state.rng.get_state()
    m.after_epoch(state)
    state.rng.set_state(gen_state)
    expected_w = pair_mixing_matrix(4, state.rng)
    for j, row in enumerate(expected_w):
        a, b = row.nonzero().flatten().tolist()
        torch.testing.assert_close(pop.params[0][j], (before[a] + before[b]) / 2, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------- DART
def test_dart_gives_members_their_own_augmentation_and_averages_as_the_authors_count(tiny):
    """Copies of one network (shared init), each with its own augmentation, averaged after the
    0-based step s with s % T == 0 and s != 0: after steps T+1, 2T+1, ..."""
    trainer, state = make_run(tiny, "method=dart", "population.size=5", "method.every_steps=3")
    assert [a.cutout for a in trainer.augment] == [0, 4, 0, 0, 0]
    assert trainer.augment[2].cutmix_alpha == 1.0 and trainer.augment[3].mixup_alpha == 1.0
    assert trainer.augment[4].policy == "trivialaugment"
    pop = state.population
    assert all(torch.equal(pop.params[0][0], pop.params[0][i]) for i in range(5))  # one initialisation
    trainer.perms = [torch.randperm(len(trainer.data.train)) for _ in range(5)]
    trainer.method.setup(state)
    for k in range(8):
        trainer.train_step(k)
        equal = all(torch.equal(pop.params[0][0], pop.params[0][i]) for i in range(5))
        assert equal == (k in (3, 6)), k  # 1-based steps 4 and 7
    assert pop.ledger.ops["average_into_members"].calls == 2
    (mom,) = pop.optimizer_state_rows(state.optimizer, 0)
    assert not torch.equal(mom[0], mom[1])  # optimizer states are kept, not averaged


def test_dart_delivers_the_aggregated_model_best_on_heldout_data(tiny):
    from wab.parts.data import load_data
    from wab.run.saved_models import load_model, normalize

    cfg = tiny("method=dart", "method.every_steps=4", "trainer.epochs=3", "trainer.batch_size=64")
    rec = run(cfg)
    report = rec["method_report"]
    accs = [a["heldout_acc"] for a in report["aggregations"]]
    assert rec["steps"] == 66 and len(accs) == (66 - 1) // 4  # after 0-based steps 4, 8, ..., 64
    first_best = accs.index(max(accs))
    assert report["chosen"] == report["aggregations"][first_best]
    n = report["selection"]["heldout_size"]
    assert n == len(load_data("digits").heldout) and report["selection"]["heldout_acc"] == max(accs)
    p = (max(accs) * n + 2) / (n + 4)  # Agresti-Coull
    assert report["selection"]["selection_se"] == pytest.approx((p * (1 - p) / (n + 4)) ** 0.5)
    assert rec["metrics"]["final_model"] == "dart_heldout"
    held = load_data("digits").heldout
    rd = run_dir_for(cfg).path
    with torch.no_grad():
        acc = (load_model(rd, "final")(normalize(rd, held.x)).argmax(1) == held.y).double().mean().item()
    assert acc == pytest.approx(max(accs), abs=1 / len(held.y))  # delivered as it was chosen


def test_dart_warmup_makes_every_member_a_copy_of_member_0(tiny):
    trainer, state = make_run(tiny, "method=dart", "population.size=3", "method.warmup_epochs=1")
    trainer.method.setup(state)
    trainer.perms = [torch.randperm(len(trainer.data.train)) for _ in range(3)]
    trainer.train_step(0)
    assert all(torch.equal(state.population.params[0][0], state.population.params[0][i]) for i in (1, 2))
    with pytest.raises(ValueError, match=r"unknown augmentation recipe 'blur'; known: \[.*'cutmix'"):
        make_run(tiny, "method=dart", "population.member_augment=[crop_flip, blur]")


def test_an_independent_population_given_dart_s_or_papa_s_members_is_their_exact_control(tiny):
    """DART's augmentations and PAPA's per-member regularisation are named populations any method
    may be given: the independent control trains members with exactly the method's augmentations."""
    for method, population in (("dart", "dart"), ("papa", "papa_grid"), ("papa_all", "papa_grid")):
        trainer, _ = make_run(tiny, f"method={method}", "population.size=5")
        control, _ = make_run(tiny, "method=independent", f"population.member_augment={population}",
                              f"population.same_init={method == 'dart'}", "population.size=5")  # fmt: skip
        assert trainer.augment == control.augment and len(set(trainer.augment)) > 1, method


def test_papa_s_grid_is_shuffled_with_the_seed_and_gives_each_member_its_own_entry():
    from wab.parts.augment import MEMBER_GRIDS, member_entries

    grid = MEMBER_GRIDS["papa_grid"]
    draws = {seed: member_entries("papa_grid", 10, seed, 32) for seed in range(3)}
    for entries in draws.values():
        assert all(set(e) == set(grid) and all(e[k] in grid[k] for k in grid) for e in entries)
        assert len({tuple(e.values()) for e in entries}) == 10  # 10 distinct entries of the 81
    assert draws[0] == member_entries("papa_grid", 10, 0, 32) and draws[0] != draws[1]
    with pytest.raises(ValueError, match="not a named population; known: .*'papa_grid'"):
        member_entries("papa", 4, 0, 32)


# ----------------------------------------------------------------------------------------- SWA
def test_swa_equals_torch_swa_utils_on_the_same_checkpoints_and_batches(tiny):
    _, state = make_run(tiny, "method=swa", "population.size=2", "trainer.epochs=4")
    pop, ev = state.population, state.evaluator
    swa = Swa(method_cfg("swa", {"start": 0.5, "cycle": 1}))
    swa.setup(state)
    refs = [AveragedModel(copy.deepcopy(m)) for m in pop.members]
    gen = torch.Generator().manual_seed(0)
    for epoch in range(4):
        perturb(pop, gen)
        state.epoch = epoch
        swa.after_epoch(state)
        if epoch + 1 >= 2:  # start_epoch = ceil(0.5 * 4) = 2
            for ref, m in zip(refs, pop.members):
                ref.update_parameters(m)
    assert swa.n == 3
    models = swa.finalize(state)
    batches = [ev.normalize(x) for x in state.data.train.x.split(ev.batch_size) if len(x) > 1]
    for i, ref in enumerate(refs):
        model = ev.recalibrate_bn(models[f"swa_{i}"].model)  # one process: it holds every member's model
        update_bn(batches, ref)
        for a, b in zip(model.parameters(), ref.module.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        for a, b in zip(model.buffers(), ref.module.buffers()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_swa_selects_its_schedule():
    from wab.run.config import compose_config

    cfg = compose_config(["method=swa"])
    assert cfg["optim"]["schedule"] == "swa" and cfg["method"]["start"] == cfg["optim"]["swa_start"]


# ----------------------------------------------------------------------------------------- ASWA
def test_aswa_decision_rule():
    assert aswa_decision(0.9, 0.8, 0.7) == "hard"
    assert aswa_decision(0.7, 0.9, 0.8) == "soft"
    assert aswa_decision(0.9, 0.95, 0.8) == "soft"
    assert aswa_decision(0.7, 0.75, 0.8) == "reject"


def test_aswa_follows_a_scripted_sequence_of_heldout_scores(tiny, monkeypatch):
    _, state = make_run(tiny, "method=aswa", "population.size=1")
    pop = state.population
    m = Aswa(method_cfg("aswa", {}))
    m.setup(state)
    # per epoch: first -> [v_theta]; later -> [v_run, v_prov]
    script = iter([0.50, 0.60, 0.55, 0.52, 0.58, 0.40, 0.45, 0.70, 0.65])
    monkeypatch.setattr(state.evaluator, "accuracy", lambda model, split="heldout": next(script))
    gen = torch.Generator().manual_seed(0)
    snaps = []
    for epoch in range(5):
        perturb(pop, gen)
        snaps.append(pop.params[0][0].clone())
        state.epoch = epoch
        m.after_epoch(state)
    # e0 first (v_A=.5); e1 run .6 > prov .55 and > .5: hard (n=1, v_A=.6); e2 run .52, prov .58 < .6: reject;
    # e3 run .40, prov .45: reject; e4 run .70 > prov .65 > .6: hard
    assert m.decisions[0] == ["first", "hard", "reject", "reject", "hard"]
    assert m.n[0] == 1 and m.acc[0] == 0.70
    torch.testing.assert_close(m.params[0][0], snaps[4])
    script2 = iter([0.71, 0.75])  # soft: the provisional average is kept, n grows
    monkeypatch.setattr(state.evaluator, "accuracy", lambda model, split="heldout": next(script2))
    perturb(pop, gen)
    running = pop.params[0][0].clone()
    state.epoch = 5
    m.after_epoch(state)
    assert m.decisions[0][-1] == "soft" and m.n[0] == 2
    (selection,) = pop.report_values(m.report(state))["selection"]
    assert selection["heldout_acc"] == 0.75 and selection["heldout_size"] == len(state.data.heldout)
    torch.testing.assert_close(m.params[0][0], (snaps[4] + pop.params[0][0]) / 2)
    assert torch.equal(pop.params[0][0], running)  # the running model is never modified


# ----------------------------------------------------------------------------------------- TWA
def test_rows_of_every_member_combine_one_at_a_time_in_float64(tiny):
    """Population.combine_rows and gram, which TWA fits with (the same bits on any number of
    processes: tests/test_distributed.py)."""
    _, state = make_run(tiny, "population.size=3")
    pop = state.population
    gen = torch.Generator().manual_seed(0)
    rows, weights = torch.randn(6, 50, generator=gen), torch.randn(6, generator=gen)  # two rows per member
    expected = torch.zeros(50, dtype=torch.float64)
    for row, w in zip(rows, weights):
        expected += row.double() * w.double()
    assert torch.equal(pop.combine_rows(rows, weights), expected)
    per_element = torch.randn(6, 50, generator=gen)
    assert torch.equal(pop.combine_rows(rows, per_element), (rows.double() * per_element.double()).cumsum(0)[-1])
    gram = pop.gram(rows)
    assert torch.equal(gram, gram.t())
    torch.testing.assert_close(gram, rows.double() @ rows.double().t())
    with pytest.raises(ValueError, match="give each the same number"):
        pop.combine_rows(rows[:5], weights[:5])


def test_twa_projection_is_onto_the_candidates_span_and_its_coefficients_start_at_the_uniform_average():
    gen = torch.Generator().manual_seed(0)
    cands = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    cands = torch.cat([cands, cands[:1]])  # a repeated candidate (a member and its last snapshot)
    q, _ = torch.linalg.qr(cands[:4].t(), mode="reduced")  # the authors' Gram-Schmidt basis
    g = torch.randn(50, generator=gen, dtype=torch.float64)
    projected = cands.t() @ (pseudo_inverse(cands @ cands.t()) @ (cands @ g))
    torch.testing.assert_close(projected, q @ (q.t() @ g))
    block_of = torch.tensor([0] * 20 + [1] * 30)
    mean = cands.mean(0)
    basis = block_basis(cands, mean, block_of, 2)
    for k in range(4):  # each block of each candidate has unit norm
        assert basis[k, :20].norm() == pytest.approx(1) and basis[k, 20:].norm() == pytest.approx(1)


@pytest.mark.parametrize("variant", ["v", "t"])
def test_twa_training_lowers_the_loss_it_trains_on(tiny, variant):
    trainer, state = make_run(tiny, "method=twa", "population.size=3", f"method.variant={variant}", "trainer.epochs=2")
    trainer.fit()
    twa = trainer.method
    split = "heldout" if variant == "v" else "train"
    ev = state.evaluator
    pop = state.population

    def loss(model):
        logits = ev.logits(model, split)
        return torch.nn.functional.cross_entropy(logits, getattr(state.data, split).y).item()

    uniform = pop.model_from(*pop.mean(record=False))
    twa.cfg.update({"epochs": 3, "lr": 0.5})
    trained = twa.finalize(state)["twa"]
    assert loss(trained) < loss(uniform)
    if variant == "t":  # projected SGD never leaves the candidates' span
        theta = pop.state_of(trained)[0][0].double()
        q, _ = torch.linalg.qr(twa.candidates(state).double().t(), mode="reduced")
        assert (theta - q @ (q.t() @ theta)).norm() < 1e-5 * theta.norm()
    if variant == "v":  # fitted on the held-out split: the report says how large it is and what it can resolve
        sel = twa.report(state)["selection"]
        assert sel["heldout_size"] == len(state.data.heldout) and sel["heldout_acc"] == ev.accuracy(trained)


def test_twa_t_moves_far_from_uniform_toward_the_one_good_candidate_and_records_its_weights(tiny):
    """Members 1 and 2 are member 0 plus large noise: the best point of the candidates' span is
    member 0 itself, effective weights (1, 0, 0), far from the uniform (1/3, 1/3, 1/3)."""
    trainer, state = make_run(tiny, "method=twa", "population.size=3", "method.variant=t", "trainer.epochs=3")
    trainer.fit()
    pop, twa = state.population, trainer.method
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        good = pop.params[0][0]
        for i in (1, 2):
            pop.params[0][i] = good + 2 * good.abs().mean() * torch.randn(good.shape, generator=gen)
    cands = twa.candidates(state).double()
    known = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)  # the recorder recovers known weights exactly
    gram = pop.gram(cands)
    fit = fitted_weights(pop, cands, known @ cands, gram)
    assert fit["weights"] == pytest.approx(known.tolist(), abs=1e-6)
    assert fit["distance_from_uniform"] == pytest.approx(float((known - 1 / 3).abs().sum()), abs=1e-6)
    assert fitted_weights(pop, cands, cands.mean(0), gram)["moved_from_mean"] == pytest.approx(0, abs=1e-6)
    twa.cfg.update({"epochs": 5})
    twa.finalize(state)
    fit = twa.report(state)["fit"]
    assert fit["weights"][0] > 0.6 and max(abs(w) for w in fit["weights"][1:]) < 0.25, fit
    assert fit["distance_from_uniform"] > 0.5 and fit["moved_from_mean"] > 0.3, fit


# ----------------------------------------------------------------------------------------- soups
@pytest.mark.parametrize("same_init", ["true", "false"])
def test_greedy_soup_is_never_worse_than_the_best_member_on_heldout(tiny, same_init):
    cfg = tiny("method=soups", "population.size=4", f"population.same_init={same_init}", "data.heldout_fraction=0.1")
    trainer = Trainer(cfg, run_dir_for(cfg))
    trainer.fit()
    state = trainer.state
    pop, ev = state.population, state.evaluator
    best_member = max(ev.accuracy(pop.model_from(*pop.member_state(i))) for i in range(pop.size))
    chosen, trace, _ = greedy_ingredients(state)
    assert trace[0] == best_member and trace == sorted(trace) and trace[-1] >= best_member
    models = trainer.method.finalize(state)
    assert set(models) == {"greedy_soup", "uniform_soup"}
    gather = state.ledger.ops["soup_gather"]
    assert gather.calls == 1 and gather.elements == pop.num_params  # gathered once for both soups
    assert ev.accuracy(models["greedy_soup"]) == trace[-1]


def test_soups_are_available_to_any_method_as_finalizers(tiny):
    rec = run(tiny("method=papa", "population.finalizers=[greedy_soup,uniform_soup]"))
    assert rec["status"] == "done", rec.get("traceback")
    assert set(rec["metrics"]["final"]) == {"greedy_soup", "uniform_soup"}
    bad = run(tiny("population.finalizers=[nope]"))
    assert bad["status"] == "failed" and "unknown finalizer 'nope'" in bad["error"]


# ------------------------------------------------------------------------------- every method runs
RESUME_EXTRA = {  # settings under which a method acts before and after the interruption at step 7
    "dart": ("method.every_steps=2",),
    "twa": ("method.candidates=both", "method.epochs=1"),
    "papa": ("method.every=3",),
    "local_sgd": ("method.every_steps=4", "population.finalizers=[model_stock,ties,dare]"),  # the anchor resumes
    "diloco": ("method.every_steps=4",),
    "lookaround": ("method.every_steps=3",),
    "papa_all": ("method.every_epochs=1", "method.repair_batches=2", "method.repair_batch_size=64"),
    "papa_2": ("method.every_epochs=1", "method.repair_batches=2", "method.repair_batch_size=64"),
    "independent": ("population.finalizers=[rebasin,greedy_soup,fisher]", "finalizer.fisher.examples=16"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", available_methods())  # the registry: a new method is tested without editing this
def test_every_method_resumes_bit_for_bit(tiny, tmp_path, monkeypatch, name):
    """Interrupted mid-epoch and restarted, each method ends with the uninterrupted run's metrics."""
    overrides = (f"method={name}", "population.size=3", "trainer.epochs=3", "trainer.batch_size=256")
    overrides += RESUME_EXTRA.get(name, ())
    ref = run(dict(tiny(*overrides), out_dir=str(tmp_path / "ref")))
    assert ref["status"] == "done", ref.get("traceback")
    original = Trainer.train_step

    def stopping_step(self, k):
        loss = original(self, k)
        if self.state.step == 7:
            request_stop()
        return loss

    monkeypatch.setattr(Trainer, "train_step", stopping_step)
    cfg = dict(tiny(*overrides), out_dir=str(tmp_path / "resumed"))
    with pytest.raises(Interrupted):
        run(cfg)
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = run(cfg)
    assert resumed["metrics"] == ref["metrics"] and resumed["comm"] == ref["comm"]


# --------------------------------------------------------------------------------------- REPAIR
def _repair_setup(tiny, *overrides):
    trainer, state = make_run(tiny, "population.size=3", "model.width=8", *overrides)
    trainer.fit()  # members that learned something, in different basins
    pop = state.population
    batches = PapaAll(method_cfg("papa_all", {})).repair_batches(state)
    return pop, batches


def test_repair_brings_every_conv_channel_to_the_mixed_statistics_of_the_parents(tiny):
    from wab.methods._repair import conv_statistics, mixed_goals, repair

    pop, batches = _repair_setup(tiny)
    parents = [pop.model_from(*pop.member_state(j)) for j in range(pop.size)]
    stats = [conv_statistics(p, batches) for p in parents]
    weights = [1 / 3, 1 / 3, 1 / 3]
    child = pop.model_from(*pop.mean(record=False))
    before = conv_statistics(child, batches)
    goals = mixed_goals(stats, weights)
    assert repair(child, goals, batches) == 3  # the tiny CNN's three convs
    after = conv_statistics(child, batches)
    for (_, std), (_, goal_std), (_, std_before) in zip(after, goals, before):
        torch.testing.assert_close(std, goal_std, rtol=1e-3, atol=1e-6)
        assert (std_before < goal_std).float().mean() > 0.5  # the average had lost variance
    # a child that is one of its parents is left (nearly) as it was
    parent = pop.model_from(*pop.member_state(1))
    w0 = [p.clone() for p in parent.parameters()]
    repair(parent, mixed_goals(stats, [0, 1, 0]), batches)
    for a, b in zip(w0, parent.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_papa_all_repairs_after_merging_and_says_so(tiny):
    rec = run(tiny("method=papa_all", "method.every_epochs=1", "trainer.epochs=3"))
    assert rec["method_report"] == {"merges": [{"epoch": 1, "repaired_convs": 3}, {"epoch": 2, "repaired_convs": 3}],
                                    "repair": True}  # fmt: skip
    assert rec["comm"]["ops"]["repair_stats"]["calls"] == 2
    mlp = run(tiny("method=papa_all", "method.every_epochs=1", "trainer.epochs=2", "model=mlp"))
    assert mlp["method_report"]["merges"] == [{"epoch": 1, "repaired_convs": 0}]  # no conv: left as merged


# ------------------------------------------------------------------------------- authors' details
def test_twa_t_drops_its_lr_at_the_authors_epochs():
    from wab.methods.twa import twa_t_lr, twa_t_milestones

    assert twa_t_milestones(10) == [5, 8]  # [int(0.5 E), int(0.75 E + 0.9)]
    assert [twa_t_lr(2.0, e, 10) for e in range(10)] == pytest.approx([2.0] * 5 + [0.2] * 3 + [0.02] * 2)
    assert twa_t_milestones(3) == [1, 3]


def test_greedy_soup_breaks_ties_as_model_soups_does(tiny, monkeypatch):
    import wab.methods.soups as soups

    _, state = make_run(tiny, "population.size=4")
    tried = []

    def equal_accuracy(run, model, bn):
        tried.append(model)
        return 0.5

    monkeypatch.setattr(soups, "_heldout_accuracy", equal_accuracy)
    chosen, _, _ = greedy_ingredients(state, "average")
    assert chosen == [3]  # sorted ascending, then reversed: the last of equals comes first


def test_wash_conventions_and_lr_scaling(tiny, monkeypatch):
    import wab.methods.wash as wash_module
    from wab.methods.wash import selection_probabilities

    sel = selection_probabilities(0.1, 3, "constant", "selected", 4)
    changed = selection_probabilities(0.1, 3, "constant", "changed", 4)
    torch.testing.assert_close(changed, sel / (1 - 1 / 4))  # (N-1)/N of selected values change owner
    assert selection_probabilities(0.9, 1, "constant", "changed", 2).item() == 1.0  # capped
    _, state = make_run(tiny, "population.size=4")
    wash = Wash(method_cfg("wash", {"p": 0.2, "schedule": "constant", "lr_scaled": True}))
    wash.setup(state)
    seen = []
    original = wash_module.sample_positions
    monkeypatch.setattr(wash_module, "sample_positions", lambda segs, probs, gen: seen.append(probs) or original(
        segs, probs, gen))  # fmt: skip
    state.lr, state.lr0 = 0.01, 0.04
    wash.after_step(state)
    torch.testing.assert_close(seen[0], torch.full_like(seen[0], 0.2 * 0.25))


# ------------------------------------------------------------------------------- diagnostics
def test_members_recal_is_each_member_after_its_own_bn_recalibration(tiny):
    trainer, state = make_run(tiny, "population.size=3", "trainer.epochs=1")
    metrics = trainer.fit()
    pop, ev = state.population, state.evaluator
    for i, acc in enumerate(metrics["members_recal"]):
        model = ev.recalibrate_bn(pop.model_from(*pop.member_state(i)))
        assert acc == ev.metrics(model)["acc"]
    assert metrics["members_recal_mean"] == pytest.approx(sum(metrics["members_recal"]) / 3)


def test_lmc_barrier_is_zero_for_identical_members_and_positive_for_independent_ones(tiny):
    from wab.core.lmc import connectivity

    _, state = make_run(tiny, "population.size=3", "population.same_init=true")
    pop, ev = state.population, state.evaluator

    def evaluate(st):
        return ev.metrics(ev.recalibrate_bn(pop.model_from(*st)))

    members = [evaluate(pop.member_state(i)) for i in range(3)]
    out = connectivity(pop, evaluate, 5, members, evaluate(pop.mean(record=False)))
    assert out["pair"]["loss_barrier"] == pytest.approx(0.0, abs=1e-6)
    assert out["pair"]["acc_barrier"] == pytest.approx(0.0, abs=1e-9)
    assert out["to_mean"]["loss_barrier"] == pytest.approx(0.0, abs=1e-6)
    rec = run(tiny("population.size=2", "trainer.epochs=4", "trainer.batch_size=32"))  # independent inits
    lmc = rec["metrics"]["lmc"]
    assert lmc["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert lmc["pair"]["loss_barrier"] > 0.1 and lmc["pair"]["acc_barrier"] > 0.05
