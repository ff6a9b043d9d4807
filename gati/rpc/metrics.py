"""Prometheus metrics: one registry per service, with the families of its role.

Every service exports `gati_build_info` (version, bundle hash, plan), the process metrics
(`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...) and
`gati_peer_unreachable_total`; each role adds its own families below. Names follow Prometheus
practice: counters end in `_total`, durations are `_seconds`, shares are `_ratio`. No family
counts what another already counts: answered requests are the latency histogram's `_count` (by
exit), failures are counted once, by reason.

Each service owns its registry, so several live in one process (tests, `--role all`). The same
numbers reach Thrift's `status()` through `snapshot()`, so they are counted once. `/metrics` on
the service's HTTP port serves the registry (gati/rpc/http.py).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from gati import __version__
from gati.runtime.plan import Plan

if TYPE_CHECKING:
    from gati.learning.guarantee import AgreementSnapshot
    from gati.learning.online import LearnerStatus

# Batch-1 CNN requests on a CPU take milliseconds; resolve the fast path finely.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                   0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
STAGE_BUCKETS = (0, 1, 2, 3, 4, 8)

# Counters and histograms would each add a `_created` timestamp series; nothing here reads them.
disable_created_metrics()


@dataclass(frozen=True)
class BuildInfo:
    """What a service serves: the labels of `gati_build_info`."""
    bundle_sha256: str = ""
    plan: str = ""               # `describe_plan(plan)`

    @classmethod
    def of(cls, bundle_sha256: str, plan: Plan) -> "BuildInfo":
        return cls(bundle_sha256, describe_plan(plan))


def describe_plan(plan: Plan) -> str:
    """One line a dashboard can show: `sync: layer1.0/fc@0.930, layer2.1/linear@0.810`."""
    entries = ", ".join(f"{e.cut_name}/{e.variant}@{e.threshold:.3f}" for e in plan.entries)
    return f"{plan.mode}: {entries or 'no caches'}"


class ConnectionEvents:
    """What a service's RPC ports saw: connections accepted, refused or dropped (by reason), frames
    that waited for buffer room, and the most connections open at once, per port ("public",
    "internal"). In the service's registry when given one (so /metrics and status() show them)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        registry = registry if registry is not None else CollectorRegistry()
        self._events = Counter("gati_rpc_connection_events", "Connections accepted, refused or dropped, and "
                               "frames that waited, by port and event", ["port", "event"], registry=registry)
        self._peak = Gauge("gati_rpc_connections_peak", "The most connections open at once, by port", ["port"],
                           registry=registry)
        self._lock = threading.Lock()
        self._peaks: dict[str, int] = {}

    def count(self, port: str, event: str, n: int = 1) -> None:
        self._events.labels(port, event).inc(n)

    def open(self, port: str, n: int) -> None:
        """`n` connections are open on `port` now: raises the peak if it is a new high."""
        with self._lock:
            if n > self._peaks.get(port, -1):
                self._peaks[port] = n
                self._peak.labels(port).set(n)

    def get(self, port: str, event: str) -> int:
        return int(self._events.labels(port, event)._value.get())

    def peak(self, port: str) -> int:
        with self._lock:
            return self._peaks.get(port, 0)


class ServiceMetrics:
    """The registry of one service, with what every role exports."""

    def __init__(self, role: str, name: str, build: BuildInfo = BuildInfo()):
        self.role, self.name, self.build = role, name, build
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        info = Gauge("gati_build_info", "The service's version, bundle and plan (always 1)",
                     ["version", "bundle_sha256", "plan", "role", "service"], registry=self.registry)
        info.labels(__version__, build.bundle_sha256, build.plan, role, name).set(1)
        self.peer_unreachable = self.counter("gati_peer_unreachable", "Messages a peer service did not take",
                                             ["peer"])
        self.connections = ConnectionEvents(self.registry)  # what the service's RPC ports saw

    def counter(self, name: str, doc: str, labels: tuple[str, ...] | list[str] = ()) -> Counter:
        return Counter(name, doc, list(labels), registry=self.registry)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] | list[str] = ()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=self.registry)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> Histogram:
        return Histogram(name, doc, list(labels), buckets=buckets, registry=self.registry)

    def snapshot(self) -> tuple[dict[str, int], dict[str, float]]:
        """(counters, gauges) for `status()`, named `<family>.<label values>` without the `gati_`
        prefix: `lookups.stem.hit`, `queue_depth`. A histogram gives `<family>.<labels>.count`
        (a counter) and `.sum` (a gauge); build info and process metrics are left to /metrics."""
        counters: dict[str, int] = {}
        gauges: dict[str, float] = {}
        for family in self.registry.collect():
            if not family.name.startswith("gati_") or family.name == "gati_build_info":
                continue
            short = family.name.removeprefix("gati_")
            for s in family.samples:
                key = ".".join([short, *s.labels.values()])
                if family.type == "counter" and s.name.endswith("_total"):
                    counters[key] = int(s.value)
                elif family.type == "gauge":
                    gauges[key] = float(s.value)
                elif family.type == "histogram" and s.name.endswith("_count"):
                    counters[f"{key}.count"] = int(s.value)
                elif family.type == "histogram" and s.name.endswith("_sum"):
                    gauges[f"{key}.sum"] = float(s.value)
        return counters, gauges


class AggregatorMetrics(ServiceMetrics):
    """The front door: latency by exit, failures, the admission queue, live agreement."""

    def __init__(self, name: str = "aggregator", build: BuildInfo = BuildInfo()):
        super().__init__("aggregator", name, build)
        self.duration = self.histogram("gati_request_duration_seconds",
                                       "Answered requests, decode to answer, by the exit that answered "
                                       "(a cut's name, or 'final': the full model)", LATENCY_BUCKETS, ("exit",))
        self.failures = self.counter("gati_request_failures", "Requests answered with an error, by error type",
                                     ["reason"])
        self.queue_depth = self.gauge("gati_queue_depth", "Admitted requests waiting for a worker")
        self.in_flight = self.gauge("gati_requests_in_flight", "Requests being answered")
        self.sampled = self.counter("gati_sampled_requests", "Sampled requests finished by the full model, "
                                    "by what answered them", ["answered_by"])
        self.disagreements = self.counter("gati_sampled_disagreements",
                                          "Sampled requests whose answer differs from the full model's")
        self.live_agreement = self.gauge("gati_live_agreement_ratio",
                                         "Estimated end-to-end agreement with the full model (sampled requests)")
        self.live_hit_agreement = self.gauge("gati_live_hit_agreement_ratio",
                                             "Agreement of cache answers with the full model (sampled hits)")
        self.degraded = self.counter("gati_degraded_answers", "Answers given without a planned cut's verdict "
                                     "(its predictor down or late): the full model answered from that cut, "
                                     "by the first missing cut", ["cut"])
        self.moved = self.counter("gati_requests_moved", "Requests handed to another executor replica after "
                                  "this one refused them, failed or died with them in flight", ["replica"])
        self.replica_up = self.gauge("gati_executor_up", "1 while an executor replica answers its watcher",
                                     ["replica"])
        self.replica_in_flight = self.gauge("gati_executor_in_flight", "Requests sent to an executor replica "
                                            "and not yet answered (routing sends to the least)", ["replica"])
        self.live_lower_bound = self.gauge("gati_live_agreement_lower_bound_ratio",
                                           "Anytime-valid lower confidence bound on the agreement of every request "
                                           "answered so far, from the sampled requests (the in-process engine's, "
                                           "or the cluster aggregator's)")
        self.live_fallbacks = self.counter("gati_live_fallbacks", "Times the live lower bound was about to fall "
                                           "below the target and no early exits were asked for (cluster)")
        self.fallback_level = self.gauge("gati_fallback_level", "The certified level served (0: no early exits; "
                                         "the highest: the plan's own)")
        self._lock = threading.Lock()
        self._tally = [0, 0, 0]  # sampled, sampled hits, sampled wrong: the ratios' inputs

    def answered(self, seconds: float, exit_name: str) -> None:
        self.duration.labels(exit_name).observe(seconds)

    def watch_live(self, status: Callable[[], LearnerStatus]) -> None:
        """Read the live bound, its point estimate (for `gati_live_agreement_ratio`) and the level from an online
        engine whenever the metrics are read."""
        self.watch_bound(lambda: status().live)
        self.fallback_level.set_function(lambda: status().level)

    def watch_bound(self, snapshot: Callable[[], AgreementSnapshot]) -> None:
        """Read the live bound and its point estimate (for `gati_live_agreement_ratio`) whenever the metrics are
        read."""
        self.live_lower_bound.set_function(lambda: snapshot().lower_bound)
        self.live_agreement.set_function(lambda: snapshot().point_estimate)

    def failed(self, reason: str) -> None:
        self.failures.labels(reason).inc()

    def sample(self, hit: bool, agree: bool) -> None:
        """One sampled request: did the answer it got (cache or full model) equal the full model's?"""
        self.sampled.labels("cache" if hit else "model").inc()
        if not agree:
            self.disagreements.inc()
        with self._lock:
            t = self._tally
            t[0], t[1], t[2] = t[0] + 1, t[1] + hit, t[2] + (not agree)
            n, hits, wrong = t
            self.live_agreement.set(1.0 - wrong / n)
            if hits:
                self.live_hit_agreement.set(1.0 - wrong / hits)


class ExecutorMetrics(ServiceMetrics):
    """The stage loop: how requests ended, stages run, lookups that became misses."""

    def __init__(self, name: str = "executor", build: BuildInfo = BuildInfo()):
        super().__init__("executor", name, build)
        self.requests = self.counter("gati_executor_requests", "Requests the executor finished, by how they ended "
                                     "(completed: the full model ran; stopped: a hit or a cancel; failed)",
                                     ["outcome"])
        self.stages = self.counter("gati_stages_run", "Stages run, all requests together")
        self.stages_after_hit = self.histogram("gati_stages_after_hit",
                                               "Stages run after the cut that hit (unsampled requests)", STAGE_BUCKETS)
        self.lookup_failures = self.counter("gati_lookup_failures", "Lookups without a verdict (the full model "
                                            "answers from there): the predictor unreachable, late, or failing",
                                            ["reason"])
        self.queue_depth = self.gauge("gati_queue_depth", "Requests waiting for an executor worker")
        self.in_flight = self.gauge("gati_requests_in_flight", "Requests in the stage loop")


class PredictorMetrics(ServiceMetrics):
    """Cache lookups by cut and verdict, and the version each cut serves."""

    def __init__(self, name: str = "predictor", build: BuildInfo = BuildInfo()):
        super().__init__("predictor", name, build)
        self.lookups = self.counter("gati_lookups", "Cache lookups by cut and verdict (hit, miss, error)",
                                    ["cut", "verdict"])
        self.deploys = self.counter("gati_cache_deploys", "New cache versions swapped in", ["cut"])
        self.version = self.gauge("gati_cache_version", "The cache version each cut serves", ["cut"])


class IndexMetrics(ServiceMetrics):
    """The neighbour index: searches, vectors added and held."""

    def __init__(self, name: str = "index", build: BuildInfo = BuildInfo()):
        super().__init__("index", name, build)
        self.searches = self.counter("gati_index_searches", "Nearest-neighbour searches")
        self.added = self.counter("gati_index_vectors_added", "Vectors added to the indexes")
        self.vectors = self.gauge("gati_index_vectors", "Vectors held, by index key", ["key"])
        self.refused = self.counter("gati_index_refused", "Additions refused by the index's bounds, or (tier) a "
                                    "malformed message for the online tier", ["bound"])
        # The online neighbour tier (gati/rpc/tier.py), when the cluster has one
        self.tier_judged = self.counter("gati_tier_judged", "The online tier's verdicts by outcome (hit, miss, error)",
                                        ["outcome"])
        self.tier_size = self.gauge("gati_tier_vectors", "Vectors the online tier holds")
        self.tier_bytes = self.gauge("gati_tier_bytes", "Memory the online tier reserved for its vectors (its bound)")
        self.tier_version = self.gauge("gati_tier_version", "The online tier's threshold version (0: never deployed)")
        self.tier_threshold = self.gauge("gati_tier_threshold", "The confidence the online tier answers at "
                                         "(+Inf: it answers nothing)")


class RetrainerMetrics(ServiceMetrics):
    """Samples received and what became of each retraining."""

    def __init__(self, name: str = "retrainer", build: BuildInfo = BuildInfo()):
        super().__init__("retrainer", name, build)
        self.samples = self.counter("gati_retrainer_samples", "Samples kept, by cut", ["cut"])
        self.dropped = self.counter("gati_retrainer_samples_dropped", "Samples refused at the door, never stored, "
                                    "by what was wrong", ["reason"])
        self.retrains = self.counter("gati_retrains", "Candidate caches by result (deployed, rejected, "
                                     "deploy_failed)", ["result"])
        self.version = self.gauge("gati_cache_version", "The cache version each cut serves", ["cut"])
        self.held = self.gauge("gati_retrainer_samples_held", "Samples held for the next refit, by cut "
                               "(resumed from the state directory after a restart)", ["cut"])
        self.resyncs = self.counter("gati_retrainer_resyncs", "Versions made consistent with a predictor: "
                                    "pushed again (it served an older one) or adopted (it served a newer one)",
                                    ["cut", "action"])
        self.joint = self.counter("gati_retrainer_joint_samples", "Sampled requests whose features at every planned "
                                  "cut arrived together: what automatic refits fit on and re-certify with")
        self.reviews = self.counter("gati_retrainer_reviews", "Automatic re-certifications of the whole cascade by "
                                    "outcome (deployed; climbed: back up the ladder after a fallback; fallback: the "
                                    "serving cascade's agreement is below the target, no early exits; kept: nothing "
                                    "changes; deploy_failed)", ["outcome"])
        self.live_fallbacks = self.counter("gati_retrainer_live_fallbacks", "Steps down the ladder of certified "
                                           "vectors asked by the aggregator's live bound, by result (pushed, "
                                           "deploy_failed)", ["result"])
        self.review_bound = self.gauge("gati_retrainer_review_lower_bound", "The last review's certified lower "
                                       "bound on end-to-end agreement, at the vector deployed or re-tested")
