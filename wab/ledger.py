"""The communication ledger: every collective operation of the population records here, nowhere else.

Counts follow the parameter-server convention of ../shared/METHODS.md: ``elements`` is what one
member sends (a full exchange of the parameters is D elements per member), ``bytes`` the same in
bytes, ``calls`` how many times the operation ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OpCount:
    elements: float = 0.0
    bytes: float = 0.0
    calls: int = 0


@dataclass
class CommLedger:
    """Per-operation totals of elements, bytes and calls sent per member."""

    ops: dict[str, OpCount] = field(default_factory=dict)

    def record(self, op: str, elements: float, bytes_per_element: int) -> None:
        count = self.ops.setdefault(op, OpCount())
        count.elements += float(elements)
        count.bytes += float(elements) * bytes_per_element
        count.calls += 1

    @property
    def elements_total(self) -> float:
        return sum(c.elements for c in self.ops.values())

    @property
    def bytes_total(self) -> float:
        return sum(c.bytes for c in self.ops.values())

    def summary(self, steps: int) -> dict:
        """The ``comm`` block of metrics.jsonl and final.json."""
        per_step = 1.0 / steps if steps else 0.0
        return {
            "elements_total": self.elements_total,
            "bytes_total": self.bytes_total,
            "elements_per_step": self.elements_total * per_step,
            "bytes_per_step": self.bytes_total * per_step,
            "ops": {
                name: {"elements": c.elements, "bytes": c.bytes, "calls": c.calls}
                for name, c in sorted(self.ops.items())
            },
        }

    def state_dict(self) -> dict:
        return {name: [c.elements, c.bytes, c.calls] for name, c in self.ops.items()}

    def load_state_dict(self, state: dict) -> None:
        self.ops = {name: OpCount(float(e), float(b), int(c)) for name, (e, b, c) in state.items()}
