"""The bench's wall-clock budget: a slow CPU gets fewer repeats, never a weaker measurement.

``make bench`` must finish in 10 minutes on a fresh clone, and our CPUs differ by more than an
order of magnitude in the time a large chip takes (the bench report has the figures). Every repeated
measurement (timed chips, cold-start children, candidate paths, whole scenes) asks
:meth:`Budget.repeats` for its iterations: it always runs the minimum the figure needs
(a median needs its runs, a cached cold start needs the child that builds the cache), and
runs the rest only while the next one, as long as the last, fits the loop's share of the
time left. Every cut is recorded, so the report says which figure has fewer runs and why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Budget"]


@dataclass
class Budget:
    """``total_s`` seconds from ``start`` (``time.perf_counter``); ``reserve_s`` is kept back for
    the fixed-cost steps at the end (the Lambda image build)."""

    total_s: float
    start: float = field(default_factory=time.perf_counter)
    reserve_s: float = 0.0
    cuts: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, float] = field(default_factory=dict)

    @classmethod
    def since(cls, started_at: float | None, total_s: float, reserve_s: float = 0.0) -> Budget:
        """A budget that began at epoch second ``started_at`` (``make bench`` passes its own start,
        so a fresh clone's venv build counts too; None: now). The time already gone is recorded
        as the section "before the bench"."""
        budget = cls(total_s, reserve_s=reserve_s)
        if started_at is not None:
            before = max(time.time() - started_at, 0.0)
            budget.start -= before
            budget.sections["before the bench"] = before
        return budget

    def left(self) -> float:
        """Seconds left for the budgeted loops (the reserve excluded); negative once overrun."""
        return self.total_s - self.reserve_s - (time.perf_counter() - self.start)

    def repeats(self, what: str, wanted: int, minimum: int, share: float) -> Iterator[int]:
        """Iteration indices for a loop of ``wanted`` runs that may take ``share`` of the time left.

        Runs ``minimum`` iterations whatever the budget; after that, one more only while
        ``now + the last iteration's seconds`` stays inside the loop's deadline.
        """
        deadline = time.perf_counter() + share * max(self.left(), 0.0)
        last = 0.0
        for i in range(wanted):
            if i >= minimum and time.perf_counter() + last > deadline:
                self.cuts.append({"what": what, "wanted": wanted, "ran": i, "each_s": round(last, 2)})
                return
            t0 = time.perf_counter()
            yield i
            last = time.perf_counter() - t0

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Add the wall seconds of the ``with`` block to :attr:`sections` under ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sections[name] = self.sections.get(name, 0.0) + time.perf_counter() - t0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_s": self.total_s,
            "reserve_s": self.reserve_s,
            "elapsed_s": round(time.perf_counter() - self.start, 1),
            "sections_s": {k: round(v, 1) for k, v in self.sections.items()},
            "cuts": self.cuts,
        }
