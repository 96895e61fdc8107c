"""The merging finalizers: each against a transcription of its authors' update on identical
tensors, and each one's defining invariants (docs/merging.md)."""

import pytest
import torch

import wab.methods.fisher as fisher_module
from wab.method import merge_inputs
from wab.methods._merging import SCALES
from wab.methods.fisher import diagonal_fisher, fisher
from wab.methods.model_stock import model_stock
from wab.methods.regmean import input_grams, reduce_non_diagonal, regmean
from wab.methods.task_vectors import dare, drop_and_rescale, task_arithmetic, ties, trim
from wab.run.lifecycle import run
from wab.run.records import run_id
from wab.run.validate import InvalidConfig, validate

from .test_methods import make_run

ANCHORED = ("population.same_init=true",)


def spread(pop, seed=0, scale=0.1):
    """Members moved apart from wherever they are (each its own noise)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pop.params:
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def params_of(model, pop):
    return pop.state_of(model)[0]


def mean_params(pop):
    return pop.mean(record=False)[0]


# ---------------------------------------------------------------------------------------- Fisher
def _their_fisher_merge(thetas, fishers, floor=1e-6):
    """mmatena/model_merging merging.py, _merge_with_coeffs with normalize_fishers and
    favor_target_model at their defaults, coefficients 1/N, on stacked flat tensors."""
    n = len(thetas)
    norms = [torch.sqrt((f**2).sum()) for f in fishers]
    coefficients = [1.0 / n / norm for norm in norms]
    lhs, rhs = [], []
    for j, (theta, coeff, f) in enumerate(zip(thetas, coefficients, fishers)):
        diag = torch.maximum(f, torch.tensor(floor)) if j == 0 else f
        lhs.append(coeff * diag)
        rhs.append(coeff * diag * theta)
    return torch.stack(rhs).sum(0) / torch.stack(lhs).sum(0)


def test_fisher_merge_is_the_authors_on_the_same_fishers(tiny, monkeypatch):
    _, state = make_run(tiny, "population.finalizers=[fisher]", "finalizer.fisher.examples=8")
    pop = state.population
    spread(pop)
    gen = torch.Generator().manual_seed(1)
    fishers = {i: torch.rand(pop.num_params, generator=gen) ** 3 for i in range(pop.size)}
    fishers[0][:10] = 0.0  # below the floor: member 0's floor applies there
    calls = iter(range(pop.size))

    def given(model, x, y, variant, generator):
        flat = fishers[next(calls)]
        return [s.view(flat[s.start : s.stop]).double() for s in pop.param_segments]

    monkeypatch.setattr(fisher_module, "diagonal_fisher", given)
    got = params_of(fisher(state)["fisher"], pop)[0]
    want = _their_fisher_merge([pop.params[0][i] for i in range(pop.size)], [fishers[i] for i in range(pop.size)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    report = state.reports["fisher"]
    assert report["examples"] == 8 and len(report["fisher_norms"]) == pop.size


def test_equal_fishers_give_the_uniform_average_and_one_member_itself(tiny, monkeypatch):
    _, state = make_run(tiny, "population.finalizers=[fisher]", "finalizer.fisher.examples=8")
    pop = state.population
    spread(pop)
    same = torch.rand(pop.num_params, generator=torch.Generator().manual_seed(2)) + 1e-3
    monkeypatch.setattr(fisher_module, "diagonal_fisher", lambda model, x, y, variant, generator: [
        s.view(same[s.start : s.stop]).double() for s in pop.param_segments])  # fmt: skip
    assert torch.equal(params_of(fisher(state)["fisher"], pop)[0], mean_params(pop)[0])
    _, one = make_run(tiny, "population.size=1", "population.finalizers=[fisher]", "finalizer.fisher.examples=8")
    monkeypatch.undo()
    assert torch.equal(params_of(fisher(one)["fisher"], one.population)[0], one.population.params[0][0])


def test_the_exact_fisher_is_the_probability_weighted_squared_gradient(tiny):
    _, state = make_run(tiny, "population.size=1")
    model = state.population.members[0]
    x = state.evaluator.normalize(state.data.train.x[:3])
    got = diagonal_fisher(model, x, state.data.train.y[:3], "exact", None)
    want = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
    model.eval()
    for xi in x:  # their loop: every class's log-probability, its squared gradient times its probability
        logp = model(xi[None]).log_softmax(-1)[0]
        for c in range(len(logp)):
            grads = torch.autograd.grad(logp[c], list(model.parameters()), retain_graph=True)
            for w, g in zip(want, grads):
                w += logp[c].exp().item() * g.double() ** 2
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w / 3, rtol=1e-5, atol=1e-10)
    empirical = diagonal_fisher(model, x, state.data.train.y[:3], "empirical", None)
    assert all(torch.all(e >= 0) for e in empirical) and any(not torch.equal(e, g) for e, g in zip(empirical, got))


# --------------------------------------------------------------------------------------- RegMean
def test_regmean_is_the_authors_closed_form_on_linear_layers_and_the_mean_elsewhere(tiny):
    _, state = make_run(tiny, "population.finalizers=[regmean]", "finalizer.regmean.examples=64",
                        "finalizer.regmean.alpha=0.7")  # fmt: skip
    pop = state.population
    spread(pop)
    gen_state = state.rng.get_state()
    got = regmean(state)["regmean"]
    state.rng.set_state(gen_state)
    x = state.evaluator.normalize(state.data.train.x[torch.randperm(len(state.data.train), generator=state.rng)[:64]])
    models = [pop.model_from([p[i] for p in pop.params], [b[i] for b in pop.buffers]) for i in range(pop.size)]
    grams = [reduce_non_diagonal(input_grams(m, x, 1000)["head"], 0.7) for m in models]
    # bloomberg/dataless-model-merging: sum_cov_inv @ sum(G_i @ W_i^T), transposed
    their = torch.matmul(torch.inverse(sum(grams)), sum(g @ m.head.weight.double().T for g, m in zip(grams, models))).T
    torch.testing.assert_close(got.head.weight.double(), their, rtol=1e-5, atol=1e-6)
    mean = pop.model_from(*pop.mean(record=False))
    torch.testing.assert_close(got.features[0][0].weight, mean.features[0][0].weight, rtol=0, atol=0)
    torch.testing.assert_close(got.head.bias, mean.head.bias, rtol=0, atol=0)
    assert state.reports["regmean"]["linear_layers"] == ["head"]
    off = grams[0] - torch.diag(torch.diagonal(grams[0]))
    assert torch.allclose(off, 0.7 * (input_grams(models[0], x, 1000)["head"] - torch.diag(torch.diagonal(
        input_grams(models[0], x, 1000)["head"]))))  # fmt: skip


def test_regmean_with_identical_inputs_is_the_uniform_average(tiny):
    _, state = make_run(tiny, "population.finalizers=[regmean]", "finalizer.regmean.examples=64", *ANCHORED)
    pop = state.population
    head = next(s for s in pop.param_segments if s.name == "head.weight")
    with torch.no_grad():  # members differ in their head only: the head's inputs are the same in all
        pop.params[0][:, head.start : head.stop] += torch.randn(pop.size, head.numel) * 0.1
    got = regmean(state)["regmean"]
    torch.testing.assert_close(params_of(got, pop)[0], mean_params(pop)[0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------- Model Stock
def _mergekit_model_stock(w0, ws):
    """mergekit model_stock.py (filter_wise false) on one tensor."""
    w0, ws = w0.view(-1), [w.view(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            norm = torch.norm(offsets[i]) * torch.norm(offsets[j])
            cos.append(((offsets[i] * offsets[j]).sum() / norm.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean()
    t = len(ws) * c / (1 + (len(ws) - 1) * c)
    return t * sum(ws) / len(ws) + (1 - t) * w0


def test_model_stock_is_mergekits_rule_per_tensor(tiny):
    _, state = make_run(tiny, "population.finalizers=[model_stock]", *ANCHORED)
    pop = state.population
    spread(pop)
    got = params_of(model_stock(state)["model_stock"], pop)[0]
    anchor = pop.anchor[0][0]
    for seg in pop.param_segments:
        sl = slice(seg.start, seg.stop)
        torch.testing.assert_close(got[sl], _mergekit_model_stock(anchor[sl], list(pop.params[0][:, sl])),
                                   rtol=1e-5, atol=1e-7)  # fmt: skip
    assert state.reports["model_stock"]["anchor"] == "initialisation"


def test_model_stock_gives_the_anchor_for_orthogonal_task_vectors_and_the_mean_for_identical_ones(tiny):
    _, state = make_run(tiny, "population.size=2", "population.finalizers=[model_stock]", *ANCHORED)
    pop = state.population
    anchor = pop.anchor[0][0]
    with torch.no_grad():  # member 0 moves on the even entries of every tensor, member 1 on the odd ones
        for seg in pop.param_segments:
            idx = torch.arange(seg.start, seg.stop)
            pop.params[0][0, idx[0::2]] += 0.5
            pop.params[0][1, idx[1::2]] += 0.5
    torch.testing.assert_close(params_of(model_stock(state)["model_stock"], pop)[0], anchor, rtol=0, atol=1e-7)
    assert all(abs(v["t"]) < 1e-6 for v in state.reports["model_stock"]["layers"].values())
    with torch.no_grad():
        pop.params[0][1] = pop.params[0][0]
    torch.testing.assert_close(params_of(model_stock(state)["model_stock"], pop)[0], pop.params[0][0],
                               rtol=0, atol=1e-6)  # fmt: skip


# ------------------------------------------------------------------------- the task-vector merges
def test_task_arithmetic_at_one_over_n_is_the_uniform_average_and_heldout_never_loses_to_it(tiny):
    _, state = make_run(tiny, "population.size=4", "population.finalizers=[task_arithmetic]",
                        "finalizer.task_arithmetic.scale=0.25", *ANCHORED)  # fmt: skip
    pop = state.population
    spread(pop)
    torch.testing.assert_close(params_of(task_arithmetic(state)["task_arithmetic"], pop)[0], mean_params(pop)[0],
                               rtol=0, atol=1e-7)  # fmt: skip
    state.cfg["finalizer"]["task_arithmetic"]["scale"] = "heldout"
    task_arithmetic(state)
    choice = state.reports["task_arithmetic"]["selection"]
    assert choice["scales"] == list(SCALES)
    assert choice["heldout_acc"] == max(choice["heldout_accs"]) >= choice["heldout_accs"][SCALES.index(0.25)]


def _their_ties(flat_taus, k, sign="mass"):
    """prateeky2806/ties-merging merge_utils.py: topk_values_mask, resolve_sign('mass') with
    resolve_zero_signs('majority'), disjoint_merge('dis-mean')."""
    n, d = flat_taus.shape
    kth, _ = flat_taus.abs().kthvalue(d - int(d * k), dim=1, keepdim=True)
    trimmed = flat_taus * (flat_taus.abs() >= kth)
    signs = None
    if sign == "mass":
        signs = torch.sign(trimmed.sum(0))
        signs[signs == 0] = torch.sign(signs.sum())
        keep = torch.where(signs.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    else:
        keep = trimmed != 0
    selected = trimmed * keep
    return selected.sum(0) / torch.clamp((selected != 0).sum(0).float(), min=1)


@pytest.mark.parametrize("k", [0.2, 0.5])
def test_ties_is_the_authors_trim_elect_and_disjoint_mean(tiny, k):
    _, state = make_run(tiny, "population.finalizers=[ties]", f"finalizer.ties.k={k}", *ANCHORED)
    pop = state.population
    spread(pop)
    taus = pop.params[0] - pop.anchor[0][0]
    got = params_of(ties(state)["ties"], pop)[0]
    torch.testing.assert_close(got, pop.anchor[0][0] + _their_ties(taus, k), rtol=1e-6, atol=1e-7)
    kept = state.reports["ties"]["kept_fraction"]
    assert 0 < kept <= k + 1e-3


def test_ties_keeping_everything_without_election_is_task_arithmetic_at_one_over_n(tiny):
    _, state = make_run(tiny, "population.finalizers=[ties]", "finalizer.ties.k=1.0", "finalizer.ties.sign=none",
                        *ANCHORED)  # fmt: skip
    pop = state.population
    spread(pop)
    assert torch.all(pop.params[0] != pop.anchor[0][0])  # no task-vector entry is exactly 0
    assert torch.equal(trim([pop.params[0] - pop.anchor[0][0]], 1.0)[0], pop.params[0] - pop.anchor[0][0])
    torch.testing.assert_close(params_of(ties(state)["ties"], pop)[0], mean_params(pop)[0], rtol=0, atol=1e-7)


def test_dare_drops_with_probability_p_rescales_and_keeps_its_expectation(tiny):
    _, state = make_run(tiny, "population.finalizers=[dare]", "finalizer.dare.p=0.3", *ANCHORED)
    pop = state.population
    spread(pop)
    taus = [pop.params[0] - pop.anchor[0][0]]
    draws = torch.stack([drop_and_rescale(state, taus, 0.3, True)[0] for _ in range(400)])
    dropped = (draws == 0).double().mean()
    assert abs(float(dropped) - 0.3) < 0.01
    kept = draws[0] != 0
    torch.testing.assert_close(draws[0][kept], taus[0][kept] / 0.7)  # the kept entries, divided by 1 - p
    err = (draws.double().mean(0) - taus[0]).abs() / taus[0].abs().clamp(min=1e-12)
    assert float(err.median()) < 0.1  # the mean of 400 draws is its input (standard error ~ 0.033 relative)
    assert torch.equal(drop_and_rescale(state, taus, 0.0, True)[0], taus[0])
    model = dare(state)["dare"]
    assert state.reports["dare"]["combine"] == "average" and model is not None


# ----------------------------------------------------------------------- chaining, checks and ids
def test_merges_after_rebasin_combine_the_aligned_members(tiny):
    rec = run(tiny("population.finalizers=[rebasin,fisher,regmean]", "finalizer.fisher.examples=16",
                   "finalizer.regmean.examples=64"))  # fmt: skip
    assert rec["status"] == "done", rec.get("error")
    assert {"rebasin", "rebasin+fisher", "rebasin+regmean"} <= set(rec["metrics"]["final"])
    assert rec["method_report"]["rebasin+fisher"]["examples"] == 16
    assert set(rec["cost"]["finalizers"]) == {"rebasin", "rebasin+fisher", "rebasin+regmean"}
    assert rec["cost"]["finalizers"]["rebasin+fisher"]["flops"] > 0
    assert rec["comm"]["ops"]["fisher_merge"]["elements"] == 3 * rec["comm"]["ops"]["rebasin_gather"]["elements"]


def test_a_merge_may_come_before_and_after_rebasin(tiny):
    rec = run(tiny("population.finalizers=[fisher,rebasin,fisher]", "finalizer.fisher.examples=16"))
    assert rec["status"] == "done", rec.get("error")
    assert {"fisher", "rebasin", "rebasin+fisher"} <= set(rec["metrics"]["final"])
    assert rec["metrics"]["final"]["fisher"] != rec["metrics"]["final"]["rebasin+fisher"]


def test_aligned_inputs_are_the_rebasin_rows(tiny):
    _, state = make_run(tiny, "population.finalizers=[rebasin]")
    from wab.methods.rebasin import rebasin

    assert merge_inputs(state).params[0] is state.population.params[0]
    rebasin(state)
    aligned = merge_inputs(state)
    assert aligned.prefix == "rebasin+" and aligned.params[0] is not state.population.params[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["population.finalizers=[ties]"], "finalizer ties merges task vectors from an anchor, and method independent"),
        (["population.finalizers=[model_stock,dare]"], "finalizers model_stock, dare merge task vectors"),
        (["population.finalizers=[fisher,fisher]"], "would make fisher more than once"),
        (["population.finalizers=[fisher,rebasin,regmean,fisher,regmean]"], "would make rebasin\\+regmean more"),
        (["population.finalizers=[greedy_soup,rebasin,greedy_soup]"], "would make greedy_soup more than once"),
        (["population.finalizers=[rebasin,fisher,rebasin]"], "would make rebasin more than once"),
        (
            ["population.finalizers=[fisher]", "finalizer.fisher.variant=sampledd"],
            "finalizer.fisher.variant must be one of",
        ),
        (["population.finalizers=[ties]", "finalizer.ties.k=0", *ANCHORED], "finalizer.ties.k must be in (0, 1]"),
        (
            ["population.finalizers=[task_arithmetic]", "finalizer.task_arithmetic.scale=big", *ANCHORED],
            "finalizer.task_arithmetic.scale must be one of ('heldout',) or must be a number",
        ),
        (
            ["population.finalizers=[model_stock]", "population.size=1", "method=swa", *ANCHORED],
            "model_stock needs population.size >= 2",
        ),
        (
            ["population.finalizers=[task_arithmetic]", "data.heldout_fraction=0", *ANCHORED],
            "task_arithmetic needs a held-out",
        ),
    ],
)
def test_a_merge_that_cannot_work_is_refused_before_the_run(tiny, overrides, message):
    with pytest.raises(InvalidConfig, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        validate(tiny(*overrides))


def test_a_merge_with_a_fixed_scale_needs_no_heldout_split(tiny):
    validate(tiny("population.finalizers=[task_arithmetic]", "finalizer.task_arithmetic.scale=0.5",
                  "data.heldout_fraction=0", *ANCHORED))  # fmt: skip


def test_only_the_requested_finalizers_settings_make_a_run_id(tiny):
    plain = run_id(tiny())
    assert run_id(tiny("finalizer.fisher.examples=7")) == plain  # fisher not requested: not part of the run
    asked = run_id(tiny("population.finalizers=[fisher]"))
    assert asked != plain and run_id(tiny("population.finalizers=[fisher]", "finalizer.fisher.examples=7")) != asked
    dare_ta = ("population.finalizers=[dare]", "finalizer.dare.combine=task_arithmetic", *ANCHORED)
    assert run_id(tiny(*dare_ta)) != run_id(tiny(*dare_ta, "finalizer.task_arithmetic.scale=0.5"))  # its combine's


def test_a_population_that_never_shared_a_state_reports_the_merge_skipped(tiny):
    rec = run(tiny("method=local_sgd", "method.every_steps=1000", "population.finalizers=[ties]"))
    assert rec["status"] == "done", rec.get("error")
    assert "ties" not in rec["metrics"]["final"]
    assert rec["method_report"]["ties"]["skipped"].startswith("no anchor")


def test_the_anchor_is_the_last_shared_state_and_survives_a_checkpoint(tiny):
    _, state = make_run(tiny, "method=local_sgd", "population.finalizers=[ties]")
    pop = state.population
    assert pop.anchor is None  # members from their own initialisations share nothing yet
    spread(pop)
    pop.average_into_members()
    assert pop.anchor_source == "synchronisation 1" and torch.equal(pop.anchor[0][0], pop.params[0][0])
    saved = pop.anchor[0][0].clone()
    sd = pop.state_dict()
    spread(pop, seed=3)
    pop.average_into_members()
    assert not torch.equal(pop.anchor[0][0], saved)
    pop.load_state_dict(sd)
    assert torch.equal(pop.anchor[0][0], saved) and pop.anchor_source == "synchronisation 1"
    _, untracked = make_run(tiny, "method=local_sgd")
    untracked.population.average_into_members()
    assert untracked.population.anchor is None and "anchor" not in untracked.population.state_dict()
