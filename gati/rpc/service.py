"""What every service answers: ping() and status() (role, version, uptime, metrics, bundle hash),
and what decides whether it is ready for work (/health/ready on its HTTP port).

Counters and gauges live in the service's Prometheus registry (gati/rpc/metrics.py); `status()`
reads them back from there, so Thrift and /metrics never disagree.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Mapping

from gati import __version__
from gati.rpc.config import Endpoint
from gati.rpc.gen.gati_idl.ttypes import ServiceStatus
from gati.rpc.metrics import ServiceMetrics
from gati.rpc.server import Gate


class ServiceBase:
    """Mixed into every handler: identity, metrics, and the gate that SIGTERM closes."""

    role = "service"

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self.name = metrics.name
        self.bundle_sha256 = metrics.build.bundle_sha256
        self.gate = Gate()  # closed on SIGTERM: see Service.drain
        self._started = time.monotonic()

    def ping(self) -> bool:
        """True while the service takes work; false once it drains (a balancer stops sending)."""
        return not self.gate.closed

    def status(self) -> ServiceStatus:
        counters, gauges = self.metrics.snapshot()
        return ServiceStatus(role=self.role, name=self.name, version=__version__,
                             uptime_s=time.monotonic() - self._started, counters=counters, gauges=gauges,
                             bundle_sha256=self.bundle_sha256, pid=os.getpid())


Ping = Callable[[str, int, float], bool]


class PeerProbe:
    """Which of the peers a service cannot work without do not answer ping.

    Readiness probes may come often and from several checkers; peers are asked at most once per
    `every_s`, each with a short timeout, so a probe never waits long nor floods a peer. With
    `any_of` (replicas: one answering is enough) none is reported down while one answers.
    """

    def __init__(self, peers: Mapping[str, Endpoint], ping: Ping, every_s: float = 1.0, timeout_s: float = 0.5,
                 any_of: bool = False):
        self.peers, self.ping, self.every_s, self.timeout_s = dict(peers), ping, every_s, timeout_s
        self.any_of = any_of
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._down: list[str] = list(self.peers)

    def down(self) -> list[str]:
        with self._lock:
            if time.monotonic() - self._checked >= self.every_s:
                self._down = [name for name, ep in self.peers.items()
                              if not self.ping(ep.host, ep.port, self.timeout_s)]
                if self.any_of and len(self._down) < len(self.peers):
                    self._down = []
                self._checked = time.monotonic()
            return list(self._down)
