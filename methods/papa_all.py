"""PAPA-all (Jolicoeur-Martineau et al., TMLR 2024): every K epochs every member is replaced by
the population mean (weights and buffers; each member keeps its optimizer state).

Merges happen at the end of epochs 0, K, 2K, ... (the first epoch included), never after the
last epoch, so the members still differ when evaluated. Communication (D + B) / (K S) per member
per step.
"""

from wab.method import Method, RunState, register


def merge_epochs(epochs: int, every: int, include_first: bool = True) -> list[int]:
    """0-based epochs after which the population merges: multiples of K, never the last."""
    if every < 1:
        raise ValueError(f"merge interval must be >= 1 epoch, got {every}")
    first = 0 if include_first else every
    return [e for e in range(first, epochs - 1, every)]


@register("papa_all")
class PapaAll(Method):
    """PAPA-all: average all members into the mean every K epochs."""

    def setup(self, run: RunState) -> None:
        self.merges = set(
            merge_epochs(run.epochs, int(self.cfg.get("every_epochs", 5)), self.cfg.get("include_first", True))
        )

    def after_epoch(self, run: RunState) -> None:
        if run.epoch in self.merges:
            self.merge(run)

    def merge(self, run: RunState) -> None:
        run.population.average_into_members(include_buffers=bool(self.cfg.get("include_buffers", True)))
