"""Thread-safe named counters: what a service reports in `status()` (its handler's and its ports')."""
from __future__ import annotations

import threading
from collections import defaultdict


class Counters:
    """Monotonic counts, or a running maximum (gauges come from a handler's `gauges()`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def max(self, name: str, value: int) -> None:
        with self._lock:
            self._counts[name] = max(self._counts.get(name, value), value)

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
