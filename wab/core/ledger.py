"""The communication ledger: every collective operation of the population records here, nowhere else.

Counts follow the parameter-server convention of ../shared/METHODS.md: ``elements`` is what one
member sends (a full exchange of the parameters is D elements per member), ``bytes`` the same in
bytes, ``calls`` how many times the operation ran (its rounds), and ``pattern`` the collective it
is on a network: ``all_reduce`` (a mean), ``all_gather`` (every member's values to every member),
``neighbour`` (point-to-point exchanges with a few peers; ``elements`` counts every peer's copy)
or ``broadcast`` (one member's values to all). :mod:`wab.parts.network` costs them on a named link.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PATTERNS = ("all_reduce", "all_gather", "neighbour", "broadcast")


@dataclass
class OpCount:
    elements: float = 0.0
    bytes: float = 0.0
    calls: int = 0
    pattern: str = "all_reduce"


@dataclass
class CommLedger:
    """Per-operation totals of elements, bytes and calls sent per member."""

    ops: dict[str, OpCount] = field(default_factory=dict)

    def record(self, op: str, elements: float, bytes_per_element: int, pattern: str = "all_reduce") -> None:
        if pattern not in PATTERNS:
            raise ValueError(f"ledger pattern must be one of {PATTERNS}, got {pattern!r}")
        count = self.ops.setdefault(op, OpCount(pattern=pattern))
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
                name: {"elements": c.elements, "bytes": c.bytes, "calls": c.calls, "pattern": c.pattern}
                for name, c in sorted(self.ops.items())
            },
        }

    def state_dict(self) -> dict:
        return {name: [c.elements, c.bytes, c.calls, c.pattern] for name, c in self.ops.items()}

    def load_state_dict(self, state: dict) -> None:
        self.ops = {name: OpCount(float(v[0]), float(v[1]), int(v[2]), *(v[3:] or ["all_reduce"]))
                    for name, v in state.items()}  # fmt: skip


def measured_summary(
    traffic: dict[str, dict[str, list[float]]], processes: list[int], members: int, steps: int, ledger_per_step: float
) -> dict:
    """The ``comm.measured`` block: what a run's processes handed to collectives (sent) and got
    back from the others (received), summed over every process of every life of the run, per
    phase (``train``: the method's operations, what the ledger models; ``eval``, ``checkpoint``
    and ``control`` apart) and operation. Per member and step it divides by N and by all the
    run's steps, which holds when the process count changed on a resume. ``ratio_to_ledger`` is
    the training bytes sent over the ledger's: above 1 where a collective hands more than the
    ledger's ideal exchange (an all-gather sends its rows to every process), below where rows on
    one process need not travel."""
    per = 1.0 / (members * steps) if steps else 0.0
    sent = {ph: sum(v[0] for v in ops.values()) for ph, ops in traffic.items()}
    received = {ph: sum(v[1] for v in ops.values()) for ph, ops in traffic.items()}
    train_sent = sent.get("train", 0.0) * per
    return {
        "processes": list(processes),
        "bytes": {
            ph: {op: {"sent": v[0], "received": v[1]} for op, v in sorted(ops.items())}
            for ph, ops in sorted(traffic.items())
        },  # fmt: skip
        "sent_by_phase": sent,
        "received_by_phase": received,
        "bytes_per_member_per_step": train_sent,
        "received_per_member_per_step": received.get("train", 0.0) * per,
        "ratio_to_ledger": train_sent / ledger_per_step if ledger_per_step else None,
    }
