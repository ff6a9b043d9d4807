"""Waiting until the aggregator answers `ping` (the real waiter; tests inject their own)."""
from __future__ import annotations

import time
from typing import Callable

from gati.rpc import client
from gati.rpc.config import Endpoint


def ping_once(endpoint: Endpoint, timeout_s: float) -> bool:
    return client.ping(endpoint.host, endpoint.port, timeout_s)


def wait_for_ping(endpoint: Endpoint, timeout_s: float,
                  ping: Callable[[Endpoint, float], bool] = ping_once,
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic,
                  interval_s: float = 10.0, ping_timeout_s: float = 3.0) -> bool:
    """True once `ping` succeeds; False when `timeout_s` passes first. Instances install
    PyTorch on first boot, so several minutes of failed pings are normal."""
    deadline = clock() + timeout_s
    while True:
        if ping(endpoint, ping_timeout_s):
            return True
        if clock() + interval_s > deadline:
            return False
        sleep(interval_s)
