"""Build one service of the cluster from its configuration: `gati serve --role R` runs `serve()`.

Roles: aggregator, executor, predictor (one per `--name`), index, retrainer, and `all` (the
in-process engine behind the aggregator's Thrift front door, in one process). Each role loads
only what it needs: the executor the model, a predictor the caches of its cuts, the aggregator
just the manifest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from gati.bundle import MANIFEST, cache_file, load_bundle, read_manifest
from gati.cache import Cache, load_cache
from gati.data import Preprocess
from gati.rpc import surface
from gati.rpc.aggregator import AggregatorHandler, ClusterBackend, EngineBackend
from gati.rpc.auth import Secret
from gati.rpc.config import ClusterConfig, ConfigError, Endpoint
from gati.rpc.executor import ExecutorHandler, aggregator_pool, make_routes
from gati.rpc.gen.gati_idl import (
    Aggregator,
    Executor,
    NeighborIndex,
    Predictor,
    Retrainer,
)
from gati.rpc.index import IndexHandler
from gati.rpc.inputs import InputSpec
from gati.rpc.metrics import ServingMetrics
from gati.rpc.predictor import PredictorHandler, Slot, index_pool
from gati.rpc.retrainer import CutState, RetrainerHandler
from gati.rpc.server import RpcServer, wait_for_signal
from gati.rpc.service import ServiceBase
from gati.rpc.transport import Limits, Pool
from gati.runtime.engine import Engine
from gati.runtime.plan import Plan

log = logging.getLogger("gati.rpc.roles")
ROLES = ("aggregator", "executor", "predictor", "index", "retrainer", "all")


@dataclass(frozen=True)
class BundleInfo:
    """What most roles need from a bundle: the manifest, without the model."""
    path: Path
    manifest: dict
    plan: Plan
    sha256: str
    input_shape: tuple[int, int, int]
    classes: list[str]
    preprocess: Preprocess
    n_stages: int

    @classmethod
    def read(cls, path: Path) -> "BundleInfo":
        m = read_manifest(path)
        pre = m["preprocess"]
        return cls(Path(path), m, Plan.from_dict(m["plan"]), hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest(),
                   tuple(m.get("input_shape", (3, 32, 32))), list(m["classes"]),
                   Preprocess(tuple(pre["mean"]), tuple(pre["std"])), len(m["cuts"]) + 1)

    @property
    def cut_names(self) -> list[str]:
        return [e.cut_name for e in self.plan.entries]

    def caches(self, cut_names: list[str]) -> dict[int, Cache]:
        return {e.cut: load_cache(self.path / cache_file(e.cut, e.variant))
                for e in self.plan.entries if e.cut_name in cut_names}


@dataclass
class Service:
    """A running service: its handler, its Thrift server, and what to close after it."""
    name: str
    handler: ServiceBase
    server: RpcServer
    before_close: Callable[[float], None] | None = None   # role-specific draining (the executor's queue)
    closers: list[Callable[[], None]] = field(default_factory=list)
    internal: RpcServer | None = None   # the aggregator's callback port (`server` is its public one)

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
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if role == "predictor":
        if not name:
            raise ConfigError(f"--role predictor needs --name (one of: {', '.join(p.name for p in cfg.predictors)})")
        return _predictor(cfg, name)
    return {"aggregator": _aggregator, "all": _all, "executor": _executor, "index": _index,
            "retrainer": _retrainer}[role](cfg)


def serve(role: str, cfg: ClusterConfig, name: str | None = None,
          announce: Callable[[Service], None] = lambda s: None) -> None:
    """Run one service until SIGTERM/SIGINT, then drain it."""
    service = build_service(role, cfg, name)
    service.server.start()
    if service.internal is not None:
        service.internal.start()
    announce(service)
    signum = wait_for_signal()
    log.info("%s: signal %d, draining", service.name, signum)
    service.drain(cfg.timeouts.request_ms / 1000)


def _server(processor: object, handler: ServiceBase, ep: Endpoint, cfg: ClusterConfig, role: str,
            name: str) -> RpcServer:
    """An internal port: callers authenticate with the deployment's secret."""
    return RpcServer(processor, ep.host, ep.port, surface.internal(role, cfg.max_message_bytes), cfg.connections,
                     Secret.load(cfg.secret_file), handler.counters, name)


def _front_door(cfg: ClusterConfig, info: BundleInfo, backend, metrics: ServingMetrics, callbacks: bool) -> Service:
    """The public port (predict, ping, status) and, for the cluster, the internal callback port."""
    a = cfg.aggregator
    spec = InputSpec(info.input_shape, info.preprocess, a.max_request_kb * 1024)
    handler = AggregatorHandler(backend, spec, info.classes, a, metrics, cfg.timeouts.request_ms / 1000, info.sha256)
    largest = max(a.max_request_kb * 1024, 4 * math.prod(info.input_shape))  # an image, or float32 pixels
    # predict holds a worker while it waits in the admission queue: enough workers that a request
    # beyond the queue reaches admission and hears Overloaded.
    limits = dataclasses.replace(cfg.connections, workers=cfg.connections.workers + a.queue_size)
    server = RpcServer(Aggregator.Processor(handler), a.host, a.port, surface.public(largest), limits,
                       counters=handler.counters, name="aggregator")
    internal = _server(Aggregator.Processor(handler), handler, a.callbacks, cfg, "aggregator",
                       "aggregator-internal") if callbacks else None
    if a.metrics_port:
        metrics.serve(a.host, a.metrics_port)
    return Service("aggregator", handler, server, closers=[metrics.close, backend.close], internal=internal)


def _aggregator(cfg: ClusterConfig) -> Service:
    torch.set_num_threads(1)  # decoding and preprocessing one small image
    info = BundleInfo.read(cfg.bundle)
    limits = Limits.from_config(cfg)
    ex = cfg.executor
    executor = Pool(Executor.Client, ex.host, ex.port, limits, size=cfg.aggregator.workers + 2, name="executor")
    retrainer = Pool(Retrainer.Client, cfg.retrainer.host, cfg.retrainer.port, limits, name="retrainer") \
        if cfg.retrainer else None
    metrics = ServingMetrics()
    backend = ClusterBackend([e.cut for e in info.plan.entries], {e.cut: e.cut_name for e in info.plan.entries},
                             info.n_stages, executor, metrics, retrainer)
    return _front_door(cfg, info, backend, metrics, callbacks=True)


def _all(cfg: ClusterConfig) -> Service:
    bundle = load_bundle(cfg.bundle, cfg.device)
    info = BundleInfo.read(cfg.bundle)
    metrics = ServingMetrics()
    return _front_door(cfg, info, EngineBackend(Engine(bundle), metrics), metrics, callbacks=False)


def _executor(cfg: ClusterConfig) -> Service:
    if cfg.executor.threads:
        torch.set_num_threads(cfg.executor.threads)
    bundle = load_bundle(cfg.bundle, cfg.device)
    limits = Limits.from_config(cfg)
    where = {cut: (p.host, p.port) for p in cfg.predictors
             for cut in cfg.placement([e.cut_name for e in bundle.plan.entries])[p.name]}
    # A predictor costs a request at most one lookup timeout, a new connection's handshake included.
    lookup_s = cfg.timeouts.lookup_ms / 1000
    routes = make_routes(bundle, where, dataclasses.replace(limits, connect_s=min(limits.connect_s, lookup_s),
                                                            call_s=min(limits.call_s, lookup_s)))
    handler = ExecutorHandler(bundle, routes,
                              aggregator_pool(cfg.aggregator.host, cfg.aggregator.callbacks.port, limits),
                              lookup_s, cfg.executor.workers, lookahead(cfg, bundle.plan))
    server = _server(Executor.Processor(handler), handler, cfg.executor, cfg, "executor", "executor")
    return Service("executor", handler, server, before_close=handler.drain)


def lookahead(cfg: ClusterConfig, plan: Plan) -> int:
    """Configured, or the plan's mode: sync plans wait for each verdict, async ones run one stage ahead."""
    if cfg.executor.lookahead >= 0:
        return cfg.executor.lookahead
    return 0 if plan.mode == "sync" else 1


def _predictor(cfg: ClusterConfig, name: str) -> Service:
    torch.set_num_threads(1)  # a lookup is a small matrix product; threads only contend
    pc = cfg.predictor(name)
    info = BundleInfo.read(cfg.bundle)
    cuts = cfg.placement(info.cut_names)[name]
    caches = info.caches(cuts)
    slots = {e.cut: Slot(e.cut, e.cut_name, e.variant, e.threshold, caches[e.cut])
             for e in info.plan.entries if e.cut in caches}
    limits = Limits.from_config(cfg)
    index = index_pool(cfg.index.host, cfg.index.port, limits) if cfg.index else None
    handler = PredictorHandler(name, slots, aggregator_pool(cfg.aggregator.host, cfg.aggregator.callbacks.port,
                                                            limits), index, info.sha256)
    return Service(name, handler, _server(Predictor.Processor(handler), handler, pc, cfg, "predictor", name))


def _index(cfg: ClusterConfig) -> Service:
    if cfg.index is None:
        raise ConfigError(f"{cfg.path}: services.index is not configured")
    torch.set_num_threads(1)
    info = BundleInfo.read(cfg.bundle)
    handler = IndexHandler(info.sha256)
    keys = handler.load_bundle_caches(cfg.bundle)
    log.info("index: loaded %s", ", ".join(keys) or "no kNN caches (the plan has none)")
    return Service("index", handler, _server(NeighborIndex.Processor(handler), handler, cfg.index, cfg, "index",
                                             "index"))


def _retrainer(cfg: ClusterConfig) -> Service:
    if cfg.retrainer is None:
        raise ConfigError(f"{cfg.path}: services.retrainer is not configured")
    torch.set_num_threads(1)
    info = BundleInfo.read(cfg.bundle)
    limits = Limits.from_config(cfg)
    placement = cfg.placement(info.cut_names)
    caches = info.caches(info.cut_names)
    pools = {p.name: Pool(Predictor.Client, p.host, p.port, limits, size=1, name=p.name) for p in cfg.predictors}
    owner = {cut: pname for pname, cuts in placement.items() for cut in cuts}
    states = {e.cut: CutState(e.cut, e.cut_name, e.threshold, caches[e.cut], 0, pools[owner[e.cut_name]])
              for e in info.plan.entries}
    handler = RetrainerHandler(states, cfg.retrainer, int(info.manifest["num_classes"]), info.sha256)
    return Service("retrainer", handler, _server(Retrainer.Processor(handler), handler, cfg.retrainer, cfg,
                                                 "retrainer", "retrainer"))
