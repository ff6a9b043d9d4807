"""What every service answers: ping() and status() (role, version, uptime, counters, bundle hash)."""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

from gati import __version__
from gati.rpc.gen.gati_idl.ttypes import ServiceStatus
from gati.rpc.server import Gate


class Counters:
    """Thread-safe named counters: monotonic, or a running maximum (gauges come from `gauges()`)."""

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


class ServiceBase:
    """Mixed into every handler; subclasses add to `counters` and may override `gauges()`."""

    role = "service"

    def __init__(self, name: str, bundle_sha256: str = "") -> None:
        self.name = name
        self.bundle_sha256 = bundle_sha256
        self.counters = Counters()
        self.gate = Gate()  # closed on SIGTERM: see Service.drain
        self._started = time.monotonic()

    def ping(self) -> bool:
        return True

    def gauges(self) -> dict[str, float]:
        return {}

    def status(self) -> ServiceStatus:
        return ServiceStatus(role=self.role, name=self.name, version=__version__,
                             uptime_s=time.monotonic() - self._started, counters=self.counters.snapshot(),
                             gauges=self.gauges(),
                             bundle_sha256=self.bundle_sha256, pid=os.getpid())
