"""Evaluation: one code path for every method.

Members (each, and their mean/min/max), the ensemble (mean of logits; mean of probabilities),
the uniform average with buffers averaged and after BatchNorm recalibration, and every model a
method's ``finalize`` returns. Metrics: accuracy, NLL, ECE (15 bins), members' mean pairwise
disagreement, and members' mean L2 distance to the population mean. The members' logits are
computed once per evaluation and serve every member and ensemble metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from wab.core.lmc import connectivity
from wab.core.population import Held, Population
from wab.parts.augment import Augmenter, Normalizer
from wab.parts.data import DataSplits, ImageSet

ECE_BINS = 15


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def expected_calibration_error(probs: Tensor, y: Tensor, bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins (Guo et al., 2017)."""
    conf, pred = probs.max(1)
    correct = (pred == y).double()
    idx = (conf.double() * bins).ceil().clamp(1, bins).long() - 1
    total = torch.zeros(bins, dtype=torch.float64, device=y.device)
    gap = total.clone().index_add_(0, idx, correct - conf.double())
    return float(gap.abs().sum() / len(y))


def prob_metrics(probs: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy, NLL and ECE of predicted probabilities [M, C]."""
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), y).item()
    acc = (probs.argmax(1) == y).double().mean().item()
    return {"acc": acc, "nll": nll, "ece": expected_calibration_error(probs, y)}


def logit_metrics(logits: Tensor, y: Tensor) -> dict[str, float]:
    return prob_metrics(logits.float().softmax(1), y)


@dataclass(frozen=True)
class BNRecalibration:
    """BatchNorm recalibration on augmented training batches (``trainer.bn_recal=augmented``), as
    the authors' code feeds its training loader to it (SWA's ``bn_update``, Izmailov et al., 2018;
    REPAIR's ``train_aug_loader``, Jordan et al., 2023): one pass over the training images in a
    random order, in batches of ``batch_size``, each through ``augment`` (the run's augmentation,
    without mixing, which a loader does not do). The order and the augmentation come from a
    generator seeded afresh at every recalibration, so every model recalibrated in a run sees the
    same batches. On CIFAR-10 with crop and flip, the clean images' statistics cost a trained CNN
    3-5 points that these recover (docs/reference_study.md)."""

    augment: Augmenter
    batch_size: int
    seed: int

    def batches(self, train: ImageSet) -> Iterator[Tensor]:
        rng = np.random.default_rng([self.seed, 7_777])
        order = torch.from_numpy(rng.permutation(len(train))).to(train.x.device)
        for idx in order.split(self.batch_size):
            yield self.augment(train.x[idx], train.y[idx], rng).x


class Evaluator:
    """Evaluates models and populations on the data splits, the same way for every method."""

    def __init__(self, data: DataSplits, normalize: Normalizer, batch_size: int = 1000,
                 recal: BNRecalibration | None = None) -> None:  # fmt: skip
        self.data = data
        self.normalize = normalize
        self.batch_size = batch_size
        self.recal = recal  # None: recalibrate on the clean training images

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "heldout", "test"):
            raise ValueError(f"unknown split {name!r}; known: train, heldout, test")
        return getattr(self.data, name)

    @torch.no_grad()
    def logits(self, model: nn.Module, split: str = "test") -> Tensor:
        """The model's logits [M, C] on a split, in eval mode."""
        data = self.split(split)
        if len(data) == 0:
            raise ValueError(f"split {split!r} is empty (set data.heldout_fraction > 0 for a held-out split)")
        was_training = model.training
        model.eval()
        out = torch.cat([model(self.normalize(x)) for x in data.x.split(self.batch_size)])
        model.train(was_training)
        return out.float()

    def metrics(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        return logit_metrics(self.logits(model, split), self.split(split).y)

    def accuracy(self, model: nn.Module, split: str = "heldout") -> float:
        return self.metrics(model, split)["acc"]

    @torch.no_grad()
    def recalibrate_bn(self, model: nn.Module) -> nn.Module:
        """Reset BatchNorm statistics and recompute them as a cumulative average (momentum None)
        over one pass of the training data in train mode, with no gradient (as torch's
        ``swa_utils.update_bn``): the clean images in chunks of ``batch_size``, or with ``recal``
        the augmented batches it gives. Returns the model, in eval mode."""
        bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        if not bns:
            return model.eval()
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        train = self.data.train
        batches = self.recal.batches(train) if self.recal else map(self.normalize, train.x.split(self.batch_size))
        for batch in batches:
            if len(batch) > 1:  # a batch of one has no variance
                model(batch)
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        return model.eval()

    def evaluate(
        self,
        population: Population,
        finals: dict[str, nn.Module] | None = None,
        recalibrate_finals: bool | Collection[str] = True,
        progress: bool = False,
        keep: dict[str, dict[str, Tensor]] | None = None,
        diagnose: bool = False,
        lmc_points: int = 0,
    ) -> dict:
        """Every metric of one evaluation on the test split (see README, final.json). With ``keep``,
        the state_dicts of the delivered models this process writes are stored in it (``avg_bn``
        and the shared final models, as evaluated, on the main process; a member's own model,
        :class:`~wab.core.population.Held`, on the process holding it). ``diagnose`` (the final
        evaluation) also measures each member after recalibrating its own BatchNorm statistics
        (``members_recal``) and, with ``lmc_points`` >= 2, the members' linear mode connectivity
        (:mod:`wab.core.lmc`)."""
        finals = finals or {}
        if isinstance(recalibrate_finals, bool):  # every final model, or none; else the names of those to recalibrate
            recalibrate_finals = set(finals) if recalibrate_finals else set()
        recalibrate_finals = frozenset(recalibrate_finals)
        n = len(population.members)  # this process's share of the per-member work
        extra = n + (1 + n) * max(lmc_points - 2, 0) if diagnose else 0
        bar = tqdm(total=n + 2 + len(finals) + extra, desc="evaluating", leave=False,
                   disable=None if progress else True)  # fmt: skip
        with bar:
            ensemble = self._members_and_ensemble(population, bar)
            avg, avg_bn, final = self._single_models(population, finals, recalibrate_finals, keep, bar)
            diagnostics = self._diagnostics(population, avg_bn, lmc_points, bar) if diagnose else {}
        final_name = next(iter(final), "avg_bn")
        primary = final.get(final_name, avg_bn)
        disagreement = ensemble.pop("disagreement")
        out = {
            **ensemble,
            **{f"avg_{k}": v for k, v in avg.items()},
            **{f"avg_bn_{k}": v for k, v in avg_bn.items()},
            "final_model": final_name,
            "final_acc": primary["acc"],
            "nll": primary["nll"],
            "ece": primary["ece"],
            "disagreement": disagreement,
            "distance_to_mean": population.distance_to_mean(),
            "final": final,
            **diagnostics,
        }
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}

    def _members_and_ensemble(self, population: Population, bar: tqdm) -> dict:
        """Each member's metrics, their mean, min and max, the ensembles' and the disagreement,
        from the logits of this process's members (the members' logits are never gathered)."""
        y = self.data.test.y
        logits = []  # [n_local, M, C]
        for k, m in enumerate(population.members):
            bar.set_description(f"evaluating member {k + 1} of {len(population.members)} held here")
            logits.append(self.logits(m))
            bar.update()
        local = torch.stack(logits)
        probs = local.softmax(2)
        members = population.all_members([prob_metrics(p, y) for p in probs])
        accs = [m["acc"] for m in members]
        ens_logit = logit_metrics(population.mean_rows(local), y)
        ens_prob = prob_metrics(population.mean_rows(probs), y)
        return {
            "individual": accs,
            "individual_mean": sum(accs) / len(accs),
            "individual_min": min(accs),
            "individual_max": max(accs),
            "individual_nll_mean": sum(m["nll"] for m in members) / len(members),
            "individual_ece_mean": sum(m["ece"] for m in members) / len(members),
            **{f"ensemble_{k}": v for k, v in ens_logit.items()},
            **{f"ensemble_prob_{k}": v for k, v in ens_prob.items()},
            "disagreement": _disagreement(population, local.argmax(2), local.shape[2]),
        }

    def _single_models(self, population: Population, finals: dict[str, nn.Module], recalibrate_finals: frozenset[str],
                       keep: dict[str, dict[str, Tensor]] | None, bar: tqdm) -> tuple[dict, dict, dict]:  # fmt: skip
        """The uniform average (as it is, and after BN recalibration) and each delivered model:
        each evaluated by one process and the metrics shared; a member's own model (Held) by the
        process holding it, the others in turn. With ``keep``, the state_dicts this process writes."""
        avg_model = population.average_model()
        world, rank = population.comm.world, population.comm.rank
        owners = {"avg": 0, **{name: m.owner if isinstance(m, Held) else j % world
                               for j, (name, m) in enumerate(finals.items(), 1)}}  # fmt: skip
        jobs = {"avg": lambda: self._average(avg_model, bar)}
        for name, m in finals.items():
            model = m.model if isinstance(m, Held) else m
            recal = name in recalibrate_finals
            jobs[name] = lambda name=name, model=model, recal=recal: self._final(name, model, recal, bar)
        done = _split_jobs(population, jobs, owners)
        if keep is not None:  # the delivered models, as their evaluator recalibrated them
            _share_buffers(population, avg_model, owners["avg"])
            if rank == 0:
                keep["avg_bn"] = avg_model.state_dict()
            for name, m in finals.items():
                if isinstance(m, Held):  # saved by the process holding it
                    if m.owner == rank:
                        keep[name] = m.model.state_dict()
                    continue
                if name in recalibrate_finals:
                    _share_buffers(population, m, owners[name])
                if rank == 0:
                    keep[name] = m.state_dict()
        bar.update(2 + len(finals))
        avg, avg_bn = done["avg"]
        return avg, avg_bn, {name: done[name] for name in finals}

    def _average(self, model: nn.Module, bar: tqdm) -> tuple[dict, dict]:
        """The average's metrics as it is, then after BN recalibration (in place)."""
        bar.set_description("evaluating the average")
        avg = self.metrics(model)
        bar.set_description("recalibrating BN of the average")
        avg_bn = self.metrics(self.recalibrate_bn(model)) if has_batchnorm(model) else avg
        return avg, avg_bn

    def _final(self, name: str, model: nn.Module, recalibrate: bool, bar: tqdm) -> dict:
        bar.set_description(f"evaluating {name}")
        if recalibrate:
            self.recalibrate_bn(model)
        return self.metrics(model)

    def _diagnostics(self, population: Population, avg_bn: dict, lmc_points: int, bar: tqdm) -> dict:
        """Each member after recalibrating its own BN statistics, and the LMC diagnostics."""

        def evaluate(state) -> dict:
            bar.update()
            return self.metrics(self.recalibrate_bn(population.model_from(*state)))

        bar.set_description("recalibrating BN of each member")
        members = population.all_members([evaluate(state) for state in population.local_states()])
        accs = [m["acc"] for m in members]
        out: dict = {"members_recal": accs, "members_recal_mean": sum(accs) / len(accs)}
        if lmc_points >= 2:
            bar.set_description("linear mode connectivity")
            out["lmc"] = connectivity(population, evaluate, lmc_points, members, avg_bn)
        return out


def _split_jobs(population: Population, jobs: dict[str, Callable[[], Any]], owners: dict[str, int]) -> dict[str, Any]:
    """Run each job on its process (``owners``) and give every process every result."""
    rank = population.comm.rank
    mine = {name: fn() for name, fn in jobs.items() if owners[name] == rank}
    return {k: v for part in population.comm.all_gather_objects(mine, "eval_results") for k, v in part.items()}


def _share_buffers(population: Population, model: nn.Module, src: int) -> None:
    """Copy the buffers (BatchNorm statistics) of ``model`` from the process that recalibrated it."""
    for b in model.buffers():
        population.comm.broadcast(b, src)


def _disagreement(population: Population, preds: Tensor, classes: int) -> float:
    """The members' mean pairwise disagreement from their predictions [n_local, M], without
    gathering them: per example, with n_c members predicting class c, the pairs that disagree
    are (N^2 - sum_c n_c^2) / 2 (integer counts, exact on any number of processes)."""
    n = population.size
    if n < 2:
        return 0.0
    counts = F.one_hot(preds, classes).sum(0, dtype=torch.float64)  # [M, C]
    counts = population.comm.all_reduce_sum(counts)
    disagreeing = (n * n - (counts * counts).sum(1)) / 2
    return float(disagreeing.mean() / (n * (n - 1) / 2))
