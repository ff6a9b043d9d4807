"""What every service answers: ping() and status() (role, version, uptime, counters, bundle hash)."""
from __future__ import annotations

import os
import time

from gati import __version__
from gati.rpc.counters import Counters
from gati.rpc.gen.gati_idl.ttypes import ServiceStatus
from gati.rpc.server import Gate


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
