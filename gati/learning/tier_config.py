"""Where the online neighbour tier (gati/learning/neighbours.py) sits and how much it holds: a cluster config's
`tier`, read without importing torch."""
from __future__ import annotations

from dataclasses import dataclass

from gati.errors import GatiError
from gati.reducer_names import REDUCERS


@dataclass(frozen=True)
class TierConfig:
    """Where the tier sits and how much it holds."""

    cut: int = 0  # the cut (index into the bundle's cuts) whose activation it reads
    reducer: str = "pool2"  # a reducer name: the stem pooled to 2x2 per channel (gati/learning/neighbours.py)
    capacity: int = 2048  # vectors held at most
    k: int = 8  # neighbours each search reads

    def __post_init__(self) -> None:
        for name in ("cut", "capacity", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "cut" else 1):
                raise GatiError(f"tier {name} must be an integer >= {0 if name == 'cut' else 1}, got {value!r}")
        if self.reducer not in REDUCERS:
            raise GatiError(f"tier reducer must be one of {', '.join(REDUCERS)}, got {self.reducer!r}")
