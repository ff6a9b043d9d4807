"""Where a request's time in the server went: the timing fields of a reply (`Prediction` in
idl/gati.thrift, the Open Inference Protocol's response parameters), and the clock that fills them.

Imports nothing from Thrift: `gati bench` reads these names in process too.
"""
from __future__ import annotations

import time

# Milliseconds, all optional: a part nobody measured stays unset.
TIMING_FIELDS = ("server_ms", "decode_ms", "queue_ms", "compute_ms", "lookup_ms", "network_ms")


class Stopwatch:
    """One request's time in the aggregator.

    A request is admitted first (it waits for a worker), then decoded, then handed to the backend.
    The aggregator measures those three itself; the backend reports what it knows (the executor's
    queue, compute, lookups). The backend's time that neither accounts for is `network_ms`: hops,
    serialisation, scheduling. Without a compute time there is nothing to subtract from, and
    `network_ms` stays unset.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self._admitted = self._decoded = self._end = self.start

    def admitted(self) -> None:
        self._admitted = self._decoded = time.perf_counter()

    def decoded(self) -> None:
        self._decoded = time.perf_counter()

    def stop(self) -> float:
        """Seconds since the request arrived."""
        self._end = time.perf_counter()
        return self._end - self.start

    def breakdown(self, queue_ms: float | None, compute_ms: float | None,
                  lookup_ms: float | None) -> dict[str, float | None]:
        """The timing fields but `server_ms`, from the backend's own report (milliseconds or None)."""
        backend_ms = (self._end - self._decoded) * 1000
        reported = sum(v for v in (queue_ms, compute_ms, lookup_ms) if v is not None)
        return {"decode_ms": (self._decoded - self._admitted) * 1000,
                "queue_ms": (self._admitted - self.start) * 1000 + (queue_ms or 0.0),
                "compute_ms": compute_ms, "lookup_ms": lookup_ms,
                "network_ms": max(0.0, backend_ms - reported) if compute_ms is not None else None}
