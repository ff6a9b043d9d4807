"""Build one service of the cluster from its configuration: `gati serve --role R` runs `serve()`.

Roles: aggregator, executor (one per replica, `--name` when there are several), predictor (one
per `--name`), index, retrainer, and `all` (the in-process engine behind the aggregator's Thrift
front door, in one process). Each role loads only what it needs: the executor the model, a
predictor the caches of its cuts, the aggregator just the manifest. This module builds the
aggregator and the neighbour index and imports no torch, so they start without it (the index reads
torch files only when its plan serves kNN caches); the roles that hold the model or its caches are
built in gati/rpc/model_roles.py, each with its entry's `threads` torch threads (the OpenMP
environment, which FAISS reads too, was set before anything was imported: see gati/rpc/commands.py).

A service with an `http_port` serves /health/live, /health/ready and /metrics there (the
aggregator also the Open Inference Protocol, /v2). It is ready once built, while the peers it
cannot work without answer ping, and until it drains.
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

from gati.bundle import BundleInfo, read_bundle
from gati.errors import AddressInUse
from gati.rpc import surface
from gati.rpc.aggregator import AggregatorHandler, Backend, ClusterBackend
from gati.rpc.auth import Secret
from gati.rpc.client import ping
from gati.rpc.config import ClusterConfig, ConfigError, Endpoint
from gati.rpc.gen.gati_idl import Aggregator, Executor, NeighborIndex, Retrainer
from gati.rpc.http import HttpServer, Readiness, Route
from gati.rpc.index import IndexHandler
from gati.rpc.inputs import InputSpec
from gati.rpc.metrics import AggregatorMetrics, BuildInfo, IndexMetrics
from gati.rpc.oip import OipModel, oip_routes
from gati.rpc.periodic import Every
from gati.rpc.replicas import Replica
from gati.rpc.server import RpcServer, wait_for_signal
from gati.rpc.service import PeerProbe, ServiceBase
from gati.rpc.tier import TierServer
from gati.rpc.transport import Limits, Pool

log = logging.getLogger("gati.rpc.roles")


@dataclass
class Service:
    """A running service: its handler, its Thrift server, and what to close after it."""
    name: str
    handler: ServiceBase
    server: RpcServer
    peers: PeerProbe | None = None                        # services it cannot work without
    routes: list[Route] = field(default_factory=list)     # HTTP routes of its own (the aggregator's /v2)
    before_close: Callable[[float], None] | None = None   # role-specific draining (the executor's queue)
    closers: list[Callable[[], None]] = field(default_factory=list)
    internal: RpcServer | None = None   # the aggregator's callback port (`server` is its public one)

    def readiness(self) -> Readiness:
        if self.handler.gate.closed:
            return Readiness(False, "draining")
        down = self.peers.down() if self.peers else []
        if down:
            return Readiness(False, f"waiting for {', '.join(down)} to answer")
        return Readiness(True, "ready")

    def drain(self, timeout_s: float) -> None:
        """Refuse new calls, finish those in flight, then close everything."""
        self.handler.gate.close()
        if self.before_close is not None:
            self.before_close(timeout_s)
        if not self.handler.gate.wait_idle(timeout_s):
            log.warning("%s: %d calls still in flight after %.1f s; closing anyway",
                        self.name, self.handler.gate.inflight, timeout_s)
        self.server.close()
        if self.internal is not None:  # after the public port: requests in flight needed its reports
            self.internal.close()
        for close in self.closers:
            close()


def build_service(role: str, cfg: ClusterConfig, name: str | None = None) -> Service:
    cfg.service(role, name)  # a role and name the config knows
    if role == "aggregator":
        return _aggregator(cfg)
    if role == "index":
        return _index(cfg)
    from gati.rpc import model_roles  # torch, and the model or caches: every other role
    return model_roles.build(role, cfg, name)


def serve(role: str, cfg: ClusterConfig, name: str | None = None,
          announce: Callable[[Service, HttpServer | None], None] = lambda s, h: None) -> None:
    """Run one service until SIGTERM/SIGINT, then drain it. Its HTTP port answers from the start
    (live; ready once the bundle is loaded and the peers answer), and closes last."""
    ep = cfg.service(role, name)
    http = HttpServer(ep.host, ep.http_port, name or role).start() if ep.http_port else None
    try:
        service = build_service(role, cfg, name)
        service.server.start()
        if service.internal is not None:
            service.internal.start()
        if http is not None:
            http.mount(service.routes)
            http.attach(service.readiness, service.handler.metrics.registry)
        announce(service, http)
        signum = wait_for_signal()
        log.info("%s: signal %d, draining", service.name, signum)
        service.drain(cfg.timeouts.request_ms / 1000)
    finally:
        if http is not None:
            http.close()


def peer_probe(cfg: ClusterConfig, peers: dict[str, Endpoint], any_of: bool = False) -> PeerProbe:
    """The internal endpoints a service cannot work without (`any_of`: one of them is enough),
    probed with the deployment secret."""
    return PeerProbe(peers, functools.partial(ping, secret=Secret.load(cfg.secret_file)), any_of=any_of)


def _listen(processor: object, handler: ServiceBase, host: str, port: int, port_surface: surface.Surface,
            limits, secret: Secret | None, name: str) -> RpcServer:
    try:
        return RpcServer(processor, host, port, port_surface, limits, secret,
                         handler.metrics.connections, name)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise AddressInUse(f"{name}: {host}:{port} is already in use (another gati serve? "
                               f"`make status-local` lists what runs)") from e
        raise


def internal_server(processor: object, handler: ServiceBase, ep: Endpoint, cfg: ClusterConfig, role: str,
                    name: str) -> RpcServer:
    """An internal port: callers authenticate with the deployment's secret."""
    return _listen(processor, handler, ep.host, ep.port, surface.internal(role, cfg.max_message_bytes),
                   cfg.connections, Secret.load(cfg.secret_file), name)


def front_door(cfg: ClusterConfig, info: BundleInfo, backend: Backend, metrics: AggregatorMetrics,
               peers: PeerProbe | None, callbacks: bool) -> Service:
    """The public port (predict, ping, status) and, for the cluster, the internal callback port."""
    a = cfg.aggregator
    m = info.manifest
    spec = InputSpec(m.preprocess, a.max_request_kb * 1024)
    handler = AggregatorHandler(backend, spec, m.classes, a, metrics, cfg.timeouts)
    largest = max(a.max_request_kb * 1024, 4 * math.prod(m.input_shape))  # an image, or float32 pixels
    # predict holds a worker while it waits in the admission queue: enough workers that a request
    # beyond the queue reaches admission and hears Overloaded.
    limits = dataclasses.replace(cfg.connections, workers=cfg.connections.workers + a.queue_size)
    server = _listen(Aggregator.Processor(handler), handler, a.host, a.port, surface.public(largest), limits, None,
                     "aggregator")
    internal = internal_server(Aggregator.Processor(handler), handler, a.callbacks, cfg, "aggregator",
                               "aggregator-internal") if callbacks else None
    service = Service("aggregator", handler, server, peers, closers=[backend.close], internal=internal)
    model = OipModel(a.model_name or info.path.name, info.sha256[:12], m.input_shape)
    service.routes = oip_routes(model, handler.predict, service.readiness)
    return service


def _aggregator(cfg: ClusterConfig) -> Service:
    info = read_bundle(cfg.bundle)
    limits = Limits.from_config(cfg)
    replicas = [Replica(ex.name, Pool(Executor.Client, ex.host, ex.port, limits, size=cfg.aggregator.workers + 2,
                                      name=ex.name)) for ex in cfg.executors]
    retrainer = Pool(Retrainer.Client, cfg.retrainer.host, cfg.retrainer.port, limits, name="retrainer") \
        if cfg.retrainer else None
    metrics = AggregatorMetrics(build=build_info(info))
    # Heartbeats well inside the executors' idle timeout, so that they never close the watch connection.
    heartbeat_s = min(1.0, cfg.connections.idle_s / 4)
    names = {e.cut: e.cut_name for e in info.plan.entries}
    if cfg.tier is not None:
        names[cfg.tier.cut] = info.manifest.cuts[tier_cut(cfg, info)]
    backend = ClusterBackend(names, replicas, limits, metrics, retrainer,
                             heartbeat_s, cfg.aggregator.sample_rate, info.manifest.target)
    peers = peer_probe(cfg, {ex.name: ex for ex in cfg.executors}, any_of=True)
    return front_door(cfg, info, backend, metrics, peers, callbacks=True)


def _index(cfg: ClusterConfig) -> Service:
    # No torch: the tier and the FAISS indexes are numpy; only a plan's kNN caches are torch files (IndexHandler)
    if cfg.index is None:
        raise ConfigError(f"{cfg.path}: services.index is not configured")
    info = read_bundle(cfg.bundle)
    metrics = IndexMetrics(build=build_info(info))
    tier, closers = None, []
    if cfg.tier is not None:
        cut, folder = tier_cut(cfg, info), cfg.state_folder("index")
        m = info.manifest
        tier = TierServer(cfg.tier, tuple(m.cut_shapes[cut]), m.num_classes, m.cuts[cut], info.sha256, metrics,
                          None if folder is None else folder / "tier")
        if folder is not None:
            snapshots = Every("index-tier-snapshot", cfg.index.snapshot_s, tier.snapshot).start()
            closers.append(lambda: (snapshots.stop(), tier.snapshot()))
    handler = IndexHandler(metrics, cfg.index, tier)
    keys = handler.load_bundle_caches(info)
    log.info("index: loaded %s%s", ", ".join(keys) or "no kNN caches (the plan has none)",
             "" if tier is None else f"; the online tier at {tier.cut_name}")
    server = internal_server(NeighborIndex.Processor(handler), handler, cfg.index, cfg, "index", "index")
    return Service("index", handler, server, closers=closers)


def tier_cut(cfg: ClusterConfig, info: BundleInfo) -> int:
    """The online tier's cut, checked against the bundle: a cut before the model's head."""
    assert cfg.tier is not None
    last = len(info.manifest.cuts) - 1
    if cfg.tier.cut >= last:
        raise ConfigError(f"{cfg.path}: tier.cut {cfg.tier.cut} is not a cut before the bundle's last "
                          f"({last}: {info.manifest.cuts[last]})")
    return cfg.tier.cut


def build_info(info: BundleInfo) -> BuildInfo:
    return BuildInfo.of(info.sha256, info.plan)


def plan_cut_names(info: BundleInfo) -> list[str]:
    return [e.cut_name for e in info.plan.entries]


