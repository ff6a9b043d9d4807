"""A periodic task in a daemon thread: the services' snapshots (the index's online tier, the retrainer's samples)
and the retrainer's resynchronisation run on it."""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("gati.rpc.periodic")


class Every:
    """Runs `task` in a daemon thread every `interval_s` seconds (first at once) until `stop()`; the thread
    sleeps on an event between runs, and a failed run is logged and retried at the next one. `setup` runs once in
    the thread first (e.g. gati.learning.background.as_background)."""

    def __init__(self, name: str, interval_s: float, task: Callable[[], None],
                 setup: Callable[[], None] | None = None):
        self.name, self.interval_s, self.task, self.setup = name, interval_s, task, setup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Every:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        if self.setup is not None:
            self.setup()
        while not self._stop.is_set():
            try:
                self.task()
            except Exception:  # keep running: the next period may succeed (a peer back, a disk with room)
                log.exception("%s failed; retrying in %.1f s", self.name, self.interval_s)
            self._stop.wait(self.interval_s)
