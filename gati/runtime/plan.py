"""A plan: which cuts carry which cache, with which threshold, run in which mode."""
from __future__ import annotations

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

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"plan mode must be one of {MODES}, got {self.mode!r}")
        self.entries.sort(key=lambda e: e.cut)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "entries": [asdict(e) for e in self.entries]}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls([PlanEntry(**e) for e in d.get("entries", [])], d.get("mode", "sync"))

    def describe(self) -> str:
        if not self.entries:
            return f"plan ({self.mode}): no caches (every request runs the whole model)"
        rows = [f"  cut {e.cut:>2} {e.cut_name:<12} {e.variant:<7} threshold {e.threshold:.4f}"
                for e in self.entries]
        return f"plan ({self.mode}):\n" + "\n".join(rows)
