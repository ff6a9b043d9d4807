"""Build one service of the cluster from its configuration: `gati serve --role R` runs `serve()`.

Roles: aggregator, executor (one per replica, `--name` when there are several), predictor (one
per `--name`), index, retrainer, and `all` (the in-process engine behind the aggregator's Thrift
front door, in one process). Each role loads only what it needs: the executor the model, a
predictor the caches of its cuts, the aggregator just the manifest. Each runs with its entry's
`threads` torch threads (the OpenMP environment was set before torch was imported: see
gati/rpc/commands.py).

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

import torch

from gati.bundle import BundleInfo, load_bundle, read_bundle
from gati.errors import AddressInUse
from gati.learning.neighbours import NeighbourTier, time_tier
from gati.learning.online import OnlineConfig, OnlineEngine
from gati.rpc import surface
from gati.rpc.aggregator import AggregatorHandler, ClusterBackend, EngineBackend
from gati.rpc.auth import Secret
from gati.rpc.client import ping
from gati.rpc.config import ClusterConfig, ConfigError, Endpoint, ExecutorConfig
from gati.rpc.durable import Every, VersionStore
from gati.rpc.executor import ExecutorHandler, TierRoute, aggregator_pool, make_routes
from gati.rpc.gen.gati_idl import (
    Aggregator,
    Executor,
    NeighborIndex,
    Predictor,
    Retrainer,
)
from gati.rpc.http import HttpServer, Readiness, Route
from gati.rpc.index import IndexHandler
from gati.rpc.inputs import InputSpec
from gati.rpc.metrics import (
    AggregatorMetrics,
    BuildInfo,
    ExecutorMetrics,
    IndexMetrics,
    PredictorMetrics,
    RetrainerMetrics,
)
from gati.rpc.oip import OipModel, oip_routes
from gati.rpc.predictor import PredictorHandler, Slot, index_pool
from gati.rpc.replicas import Replica
from gati.rpc.retrainer import CutState, RetrainerHandler, TierState
from gati.rpc.server import RpcServer, wait_for_signal
from gati.rpc.service import PeerProbe, ServiceBase
from gati.rpc.tier import TierServer
from gati.rpc.transport import Limits, Pool
from gati.runtime.engine import Engine
from gati.runtime.plan import LOOKAHEAD, Plan

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
    threads = cfg.threads(role, name)
    if threads:
        torch.set_num_threads(threads)
    if role == "predictor":
        return _predictor(cfg, name)
    if role == "executor":
        return _executor(cfg, name)
    return {"aggregator": _aggregator, "all": _all, "index": _index, "retrainer": _retrainer}[role](cfg)


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


def _peers(cfg: ClusterConfig, peers: dict[str, Endpoint], any_of: bool = False) -> PeerProbe:
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


def _server(processor: object, handler: ServiceBase, ep: Endpoint, cfg: ClusterConfig, role: str,
            name: str) -> RpcServer:
    """An internal port: callers authenticate with the deployment's secret."""
    return _listen(processor, handler, ep.host, ep.port, surface.internal(role, cfg.max_message_bytes),
                   cfg.connections, Secret.load(cfg.secret_file), name)


def _front_door(cfg: ClusterConfig, info: BundleInfo, backend, metrics: AggregatorMetrics,
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
    internal = _server(Aggregator.Processor(handler), handler, a.callbacks, cfg, "aggregator",
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
    peers = _peers(cfg, {ex.name: ex for ex in cfg.executors}, any_of=True)
    return _front_door(cfg, info, backend, metrics, peers, callbacks=True)


def _all(cfg: ClusterConfig) -> Service:
    bundle = load_bundle(cfg.bundle, cfg.device)
    metrics = AggregatorMetrics(build=build_info(bundle.info))
    rate = cfg.aggregator.sample_rate
    engine = OnlineEngine(bundle, OnlineConfig(sample_rate=rate, learn=False), on_checked=metrics.sample) \
        if rate > 0 else Engine(bundle)
    return _front_door(cfg, bundle.info, EngineBackend(engine, metrics), metrics, None, callbacks=False)


def _executor(cfg: ClusterConfig, name: str | None) -> Service:
    ex = cfg.executor(name)
    bundle = load_bundle(cfg.bundle, cfg.device)
    limits = Limits.from_config(cfg)
    where = {cut: (p.host, p.port) for p in cfg.predictors
             for cut in cfg.placement(plan_cut_names(bundle.info))[p.name]}
    # A predictor costs a request at most one lookup timeout, a new connection's handshake included.
    lookup_s = cfg.timeouts.lookup_ms / 1000
    lookups = dataclasses.replace(limits, connect_s=min(limits.connect_s, lookup_s), call_s=min(limits.call_s, lookup_s))
    routes = make_routes(bundle, where, lookups)
    tier = None
    if cfg.tier is not None:
        tier_cut(cfg, bundle.info)
        tier = TierRoute(cfg.tier, index_pool(cfg.index.host, cfg.index.port, lookups))
    handler = ExecutorHandler(bundle, routes,
                              aggregator_pool(cfg.aggregator.host, cfg.aggregator.callbacks.port, limits),
                              lookup_s, ex.workers, lookahead(ex, bundle.plan),
                              ExecutorMetrics(ex.name, build_info(bundle.info)), ex.queue_size, tier)
    server = _server(Executor.Processor(handler), handler, ex, cfg, "executor", ex.name)
    return Service(ex.name, handler, server, _peers(cfg, {"aggregator": cfg.aggregator.callbacks}),
                   before_close=handler.drain)


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


def lookahead(ex: ExecutorConfig, plan: Plan) -> int:
    """Configured, or the plan's mode: sync plans wait for each verdict, async ones run one stage ahead."""
    if ex.lookahead >= 0:
        return ex.lookahead
    return LOOKAHEAD[plan.mode]


def _predictor(cfg: ClusterConfig, name: str) -> Service:
    pc = cfg.predictor(name)
    info = read_bundle(cfg.bundle)
    cuts = cfg.placement(plan_cut_names(info))[name]
    caches = info.plan_caches(cuts)
    slots = {e.cut: Slot(e.cut, e.cut_name, e.variant, e.threshold, caches[e.cut])
             for e in info.plan.entries if e.cut in caches}
    limits = Limits.from_config(cfg)
    index = index_pool(cfg.index.host, cfg.index.port, limits) if cfg.index else None
    handler = PredictorHandler(slots, index, PredictorMetrics(name, build_info(info)), version_store(cfg, name, info))
    return Service(name, handler, _server(Predictor.Processor(handler), handler, pc, cfg, "predictor", name))


def _index(cfg: ClusterConfig) -> Service:
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
    return Service("index", handler, _server(NeighborIndex.Processor(handler), handler, cfg.index, cfg, "index",
                                             "index"), closers=closers)


def _retrainer(cfg: ClusterConfig) -> Service:
    if cfg.retrainer is None:
        raise ConfigError(f"{cfg.path}: services.retrainer is not configured")
    info = read_bundle(cfg.bundle)
    limits = Limits.from_config(cfg)
    placement = cfg.placement(plan_cut_names(info))
    caches = info.plan_caches()
    pools = {p.name: Pool(Predictor.Client, p.host, p.port, limits, size=1, name=p.name) for p in cfg.predictors}
    owner = {cut: pname for pname, cuts in placement.items() for cut in cuts}
    states = {e.cut: CutState(e.cut, e.cut_name, e.threshold, caches[e.cut], 0, pools[owner[e.cut_name]])
              for e in info.plan.entries}
    folder = cfg.state_folder("retrainer")
    tier = None
    if cfg.tier is not None:
        m = info.manifest
        shape = tuple(m.cut_shapes[tier_cut(cfg, info)])
        tier = TierState(cfg.tier, index_pool(cfg.index.host, cfg.index.port, limits),
                         time_tier(NeighbourTier(cfg.tier, shape, m.num_classes)), info.sha256)
    handler = RetrainerHandler(states, cfg.retrainer, info.manifest.num_classes,
                               RetrainerMetrics(build=build_info(info)), version_store(cfg, "retrainer", info),
                               folder / "samples" if folder else None, info, tier)
    server = _server(Retrainer.Processor(handler), handler, cfg.retrainer, cfg, "retrainer", "retrainer")
    return Service("retrainer", handler.start(), server, closers=[handler.close])


def version_store(cfg: ClusterConfig, name: str, info: BundleInfo) -> VersionStore | None:
    """The service's deployed versions under the config's state_dir; None: kept in memory only."""
    folder = cfg.state_folder(name)
    return None if folder is None else VersionStore(folder / "versions", info.sha256)
