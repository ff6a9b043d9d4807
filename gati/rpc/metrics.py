"""Serving metrics (Prometheus): latency, outcomes, hits per cut, cancellations, errors, queue depth,
and live agreement estimated from the sampled requests the executor finishes in the background.

Each server owns its own registry, so several can live in one process (tests, `--role all`).
`snapshot()` reads the same numbers back for `status()`, so they are counted once.
"""
from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

# Batch-1 CNN requests on a CPU take milliseconds; resolve the fast path finely.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                   0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("gati_request_latency_seconds", "Server-side latency of answered requests",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("gati_requests", "Requests by outcome", ["outcome"], registry=r)
        self.hits = Counter("gati_hits", "Requests answered by a cache, by cut ('final': the full model)",
                            ["cut"], registry=r)
        self.cancellations = Counter("gati_cancellations", "Requests cancelled at their deadline before an answer",
                                     registry=r)
        self.errors = Counter("gati_errors", "Failures by kind", ["kind"], registry=r)
        self.queue_depth = Gauge("gati_queue_depth", "Admitted requests waiting for a worker", registry=r)
        self.in_flight = Gauge("gati_in_flight", "Requests being answered", registry=r)
        self.sampled = Counter("gati_sampled", "Sampled requests finished by the full model", registry=r)
        self.sampled_hits = Counter("gati_sampled_hits", "Sampled requests a cache answered", registry=r)
        self.sampled_wrong = Counter("gati_sampled_wrong", "Sampled hits whose label differs from the full model's",
                                     registry=r)
        self.live_agreement = Gauge("gati_live_agreement",
                                    "Estimated end-to-end agreement with the full model (sampled requests)",
                                    registry=r)
        self.live_hit_agreement = Gauge("gati_live_hit_agreement",
                                        "Agreement of cache answers with the full model (sampled hits)", registry=r)
        self._lock = threading.Lock()
        self._tally = [0, 0, 0]  # sampled, sampled hits, sampled wrong: the gauges' inputs
        self._server = None

    def answered(self, seconds: float, exit_name: str) -> None:
        self.latency.observe(seconds)
        self.requests.labels("ok").inc()
        self.hits.labels(exit_name).inc()

    def failed(self, outcome: str) -> None:
        self.requests.labels(outcome).inc()
        self.errors.labels(outcome).inc()

    def sample(self, hit: bool, agree: bool) -> None:
        """One sampled request: did the answer it got (cache or full model) equal the full model's?"""
        self.sampled.inc()
        if hit:
            self.sampled_hits.inc()
        if not agree:
            self.sampled_wrong.inc()
        with self._lock:
            t = self._tally
            t[0], t[1], t[2] = t[0] + 1, t[1] + hit, t[2] + (not agree)
            n, hits, wrong = t
            self.live_agreement.set(1.0 - wrong / n)
            if hits:
                self.live_hit_agreement.set(1.0 - wrong / hits)

    def serve(self, host: str, port: int) -> None:
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def snapshot(self) -> tuple[dict[str, int], dict[str, float]]:
        """(counters, gauges) named like `requests.ok`, `hits.layer2.1`, `queue_depth`."""
        counters: dict[str, int] = {}
        gauges: dict[str, float] = {}
        for family in self.registry.collect():
            short = family.name.removeprefix("gati_")
            for s in family.samples:
                if family.type == "counter" and s.name.endswith("_total"):
                    key = ".".join([short, *s.labels.values()])
                    counters[key] = int(s.value)
                elif family.type == "gauge":
                    gauges[short] = float(s.value)
                elif family.type == "histogram" and s.name.endswith("_count"):
                    counters[f"{short}.count"] = int(s.value)
        return counters, gauges
