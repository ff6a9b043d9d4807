"""The steps of a deployment that tests replace: building the wheel, finding this machine's
address, waiting for and pinging the aggregator, sleeping between retries, printing."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gati.cloud.artifacts import build_wheel
from gati.cloud.network import this_machine_cidr
from gati.cloud.wait import Endpoint, ping_once, wait_for_ping


@dataclass
class Hooks:
    build_wheel: Callable[[Path, Path], Path] = build_wheel          # (project, out dir)
    wait_ready: Callable[[Endpoint, float], bool] = wait_for_ping    # (endpoint, timeout s)
    ping: Callable[[Endpoint, float], bool] = ping_once
    my_cidr: Callable[[], str] = this_machine_cidr
    sleep: Callable[[float], None] = time.sleep
    echo: Callable[[str], None] = print
    waiter_delay_s: int = 5
