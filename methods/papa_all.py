"""PAPA-all (Jolicoeur-Martineau et al., TMLR 2024): every K epochs every member is replaced by
the population mean (weights and buffers; each member keeps its optimizer state).

Merges happen at the end of epochs 0, K, 2K, ... (the first epoch included), never after the
last epoch, so the members still differ when evaluated. With ``repair`` (on by default, as in the
authors' CIFAR runs) REPAIR (:mod:`wab.methods._repair`) rescales the merged model's convolutions to the
parents' mixed channel statistics, measured on ``repair_batches`` batches of
``repair_batch_size`` training images (the authors' ``n_iter=5``, batch 500). Communication
(D + B) / (K S) per member per step, plus the channel statistics when repairing.
"""

import torch

from wab.method import Method, Range, RunState, register
from wab.methods._repair import conv_statistics, mixed_goals, repair


def merge_epochs(epochs: int, every: int, include_first: bool = True) -> list[int]:
    """0-based epochs after which the population merges: multiples of K, never the last."""
    if every < 1:
        raise ValueError(f"merge interval must be >= 1 epoch, got {every}")
    first = 0 if include_first else every
    return [e for e in range(first, epochs - 1, every)]


@register("papa_all")
class PapaAll(Method):
    """PAPA-all: average all members into the mean every K epochs."""

    synchronizes = True  # every member set to one state: the anchor of task-vector merges

    op = "average_into_members"
    constraints = {"every_epochs": Range(1), "repair_batches": Range(1), "repair_batch_size": Range(1)}

    def setup(self, run: RunState) -> None:
        self.merges = set(merge_epochs(run.epochs, self.hp.every_epochs, self.hp.include_first))
        self.repair = self.hp.repair
        self.done: list[dict] = []

    def after_epoch(self, run: RunState) -> None:
        if run.epoch in self.merges:
            self.merge(run)

    def mixing(self, run: RunState) -> torch.Tensor:
        """W [N, N]: member i becomes sum_j W[i, j] theta_j."""
        n = run.population.size
        return torch.full((n, n), 1.0 / n, dtype=torch.float64)

    def merge(self, run: RunState) -> None:
        pop = run.population
        weights = self.mixing(run)
        stats, batches = self.parent_statistics(run) if self.repair else (None, None)
        if self.op == "average_into_members":
            pop.average_into_members(include_buffers=self.hp.include_buffers)
        else:
            pop.mix(weights, include_buffers=self.hp.include_buffers, op=self.op)
        repaired = self.repair_children(run, weights, stats, batches) if self.repair else 0
        self.done.append({"epoch": run.epoch + 1, "repaired_convs": repaired})

    def parent_statistics(self, run: RunState) -> tuple[list, list[torch.Tensor]]:
        """Every parent's conv channel statistics, each measured by the process that holds the
        parent (small: two values per channel), and the batches they were measured on."""
        pop = run.population
        batches = self.repair_batches(run)
        local = [conv_statistics(pop.model_from(*state), batches) for state in pop.local_states()]
        return pop.all_members(local), batches

    def repair_children(self, run: RunState, weights: torch.Tensor, stats: list, batches: list) -> int:
        """REPAIR each child this process holds (identical children, PAPA-all's, once)."""
        pop = run.population
        channels = sum(int(m.numel()) * 2 for m, _ in stats[0]) if stats and stats[0] else 0
        if channels:
            run.ledger.record("repair_stats", channels, 4)
        repaired: dict[tuple, tuple] = {}
        count = 0
        for k, row in enumerate(pop.held_rows(weights)):  # each child's mixing weights over the parents
            key = tuple(row.tolist())
            if key not in repaired:
                child = pop.model_from([p[k] for p in pop.params], [b[k] for b in pop.buffers])
                count = repair(child, mixed_goals(stats, row.tolist()), batches)
                repaired[key] = pop.state_of(child)
            pop.load_held(k, *repaired[key])
        return count  # the same for every child: the convs of the architecture

    def repair_batches(self, run: RunState) -> list[torch.Tensor]:
        """``repair_batches`` batches of plain training images, drawn from the method's stream."""
        train, size = run.data.train, self.hp.repair_batch_size
        order = torch.randperm(len(train), generator=run.rng)[: self.hp.repair_batches * size]
        order = order.to(train.x.device)
        return [run.evaluator.normalize(train.x[idx]) for idx in order.split(size)]

    def report(self, run: RunState) -> dict:
        return {"merges": self.done, "repair": self.repair}

    def state_dict(self, run: RunState) -> dict:
        return {"done": self.done}

    def load_state_dict(self, run: RunState, state: dict) -> None:
        self.done = [dict(d) for d in state["done"]]
