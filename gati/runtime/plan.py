"""A plan: which cuts carry which cache, with which threshold, run in which mode, and its certified levels.

Certification tests a fixed sequence of threshold vectors, conservative to aggressive, and every vector
before the first that fails is certified at the same level (fixed-sequence testing). A plan keeps a few
of them as *levels* to fall back to when live traffic goes wrong (`gati.learning.guarantee`): level 0 is
always "no early exits" (every answer is the base model's), the last level is the chosen vector (the
entries' thresholds). A manifest written before levels existed reads as [chosen].
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

# A plan's mode says how its lookups run beside the stages. For the cascade loop it is a lookahead:
# how many stages may run past a verdict not read yet (sync 0: wait for it; async 1: overlap the next stage).
LOOKAHEAD = {"sync": 0, "async": 1}
MODES = tuple(LOOKAHEAD)


@dataclass
class PlanEntry:
    cut: int          # index into the bundle's cut list
    cut_name: str     # module path of the cut, for people and metrics
    variant: str      # cache variant (see gati.cache.VARIANTS)
    threshold: float  # a lookup hits when its confidence >= threshold


@dataclass
class Plan:
    entries: list[PlanEntry] = field(default_factory=list)
    mode: str = "sync"  # sync: look up, then run the next stage; async: overlap the lookup with it
    # Certified threshold vectors (one threshold per entry, in cut order), most conservative first; the last
    # is the entries' own thresholds. Empty: only the chosen vector is known (see `levels`).
    certified_levels: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"plan mode must be one of {MODES}, got {self.mode!r}")
        for level in self.certified_levels:
            if len(level) != len(self.entries):
                raise ValueError(f"a certified level has {len(level)} thresholds for {len(self.entries)} entries")
        order = sorted(range(len(self.entries)), key=lambda i: self.entries[i].cut)
        self.entries = [self.entries[i] for i in order]
        self.certified_levels = [[float(level[i]) for i in order] for level in self.certified_levels]

    @property
    def levels(self) -> list[list[float]]:
        """Threshold vectors to serve with, by level: 0 is no early exits, the last is the chosen vector."""
        chosen = [e.threshold for e in self.entries]
        known = self.certified_levels or ([chosen] if self.entries else [])
        return [[math.inf] * len(self.entries), *[list(level) for level in known]]

    def to_dict(self) -> dict:
        return {"mode": self.mode, "entries": [asdict(e) for e in self.entries],
                "certified_levels": [list(level) for level in self.certified_levels]}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls([PlanEntry(**e) for e in d.get("entries", [])], d.get("mode", "sync"),
                   [list(level) for level in d.get("certified_levels", [])])

    def describe(self) -> str:
        if not self.entries:
            return f"plan ({self.mode}): no caches (every request runs the whole model)"
        rows = [f"  cut {e.cut:>2} {e.cut_name:<12} {e.variant:<7} threshold {e.threshold:.4f}"
                for e in self.entries]
        return (f"plan ({self.mode}; {len(self.levels)} levels, level 0 = no early exits):\n"
                + "\n".join(rows))
