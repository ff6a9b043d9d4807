"""Bounded admission: at most `capacity` requests admitted, `workers` of them running at once, and
no deadline longer than the server allows.

A request beyond capacity is refused at once (`Overloaded`) instead of queueing without bound; an
admitted one waits for a worker until its deadline (`DeadlineExceeded`). A client chooses its
deadline, but at most `max_request_ms`: a request with a deadline of weeks would otherwise hold a
worker that long when the executor it waits on is gone.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from gati.rpc.gen.gati_idl.ttypes import DeadlineExceeded, Overloaded


class Admission:
    def __init__(self, capacity: int, workers: int, on_depth: Callable[[int], None] = lambda _: None):
        self.capacity, self.workers, self.on_depth = capacity, workers, on_depth
        self.admitted = 0
        self.running = 0
        self._cond = threading.Condition()

    @contextmanager
    def slot(self, deadline: float) -> Iterator[None]:
        """Hold a worker for the body; `deadline` is time.monotonic() seconds."""
        with self._cond:
            if self.admitted >= self.capacity:
                raise Overloaded(f"{self.admitted} requests admitted (queue_size {self.capacity}); retry later")
            self.admitted += 1
            self._depth()
            got = self._cond.wait_for(lambda: self.running < self.workers,
                                      timeout=max(0.0, deadline - time.monotonic()))
            if not got:
                self.admitted -= 1
                self._depth()
                raise DeadlineExceeded("the request's deadline passed while it waited for a worker")
            self.running += 1
            self._depth()
        try:
            yield
        finally:
            with self._cond:
                self.running -= 1
                self.admitted -= 1
                self._depth()
                self._cond.notify()

    def _depth(self) -> None:
        self.on_depth(self.admitted - self.running)


def deadline_s(asked_ms: int | None, default_ms: float, max_ms: float) -> float:
    """Seconds a request may take: the client's `deadline_ms` (none or <= 0: `default_ms`), capped at `max_ms`."""
    ms = asked_ms if asked_ms is not None and asked_ms > 0 else default_ms
    return min(ms, max_ms) / 1000
