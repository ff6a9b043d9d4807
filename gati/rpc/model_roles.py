"""The roles that hold the model or its caches, and so import torch: the executor, the predictors, the retrainer,
and `all` (the in-process engine behind the front door). gati/rpc/roles.py builds the aggregator and the
neighbour index without torch and imports this module for every other role."""
from __future__ import annotations

import dataclasses
import logging

import torch

from gati.bundle import BundleInfo, load_bundle, read_bundle
from gati.learning.neighbours import NeighbourTier
from gati.learning.online import OnlineConfig, OnlineEngine
from gati.learning.tier_vector import time_tier
from gati.rpc.config import ClusterConfig, ConfigError, ExecutorConfig
from gati.rpc.durable import VersionStore
from gati.rpc.engine_backend import EngineBackend
from gati.rpc.executor import ExecutorHandler, TierRoute, aggregator_pool, make_routes
from gati.rpc.gen.gati_idl import Executor, Predictor, Retrainer
from gati.rpc.metrics import AggregatorMetrics, ExecutorMetrics, PredictorMetrics, RetrainerMetrics
from gati.rpc.predictor import PredictorHandler, Slot, index_pool
from gati.rpc.retrainer import CutState, RetrainerHandler, TierState
from gati.rpc.roles import Service, build_info, front_door, internal_server, peer_probe, plan_cut_names, tier_cut
from gati.rpc.transport import Limits, Pool
from gati.runtime.engine import Engine
from gati.runtime.plan import LOOKAHEAD, Plan

log = logging.getLogger("gati.rpc.roles")


def build(role: str, cfg: ClusterConfig, name: str | None = None) -> Service:
    """Any role but the aggregator, with its entry's torch threads."""
    threads = cfg.threads(role, name)
    if threads:
        torch.set_num_threads(threads)
    if role == "predictor":
        return _predictor(cfg, name)
    if role == "executor":
        return _executor(cfg, name)
    return {"all": _all, "retrainer": _retrainer}[role](cfg)


def _all(cfg: ClusterConfig) -> Service:
    bundle = load_bundle(cfg.bundle, cfg.device)
    metrics = AggregatorMetrics(build=build_info(bundle.info))
    rate = cfg.aggregator.sample_rate
    engine = OnlineEngine(bundle, OnlineConfig(sample_rate=rate, learn=False), on_checked=metrics.sample) \
        if rate > 0 else Engine(bundle)
    return front_door(cfg, bundle.info, EngineBackend(engine, metrics), metrics, None, callbacks=False)


def _executor(cfg: ClusterConfig, name: str | None) -> Service:
    ex = cfg.executor(name)
    bundle = load_bundle(cfg.bundle, cfg.device)
    limits = Limits.from_config(cfg)
    where = {cut: (p.host, p.port) for p in cfg.predictors
             for cut in cfg.placement(plan_cut_names(bundle.info))[p.name]}
    # A predictor costs a request at most one lookup timeout, a new connection's handshake included.
    lookup_s = cfg.timeouts.lookup_ms / 1000
    lookups = dataclasses.replace(limits, connect_s=min(limits.connect_s, lookup_s),
                                  call_s=min(limits.call_s, lookup_s))
    routes = make_routes(bundle, where, lookups)
    tier = None
    if cfg.tier is not None:
        tier_cut(cfg, bundle.info)
        tier = TierRoute(cfg.tier, index_pool(cfg.index.host, cfg.index.port, lookups))
    handler = ExecutorHandler(bundle, routes,
                              aggregator_pool(cfg.aggregator.host, cfg.aggregator.callbacks.port, limits),
                              lookup_s, ex.workers, lookahead(ex, bundle.plan),
                              ExecutorMetrics(ex.name, build_info(bundle.info)), ex.queue_size, tier)
    server = internal_server(Executor.Processor(handler), handler, ex, cfg, "executor", ex.name)
    return Service(ex.name, handler, server, peer_probe(cfg, {"aggregator": cfg.aggregator.callbacks}),
                   before_close=handler.drain)


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
    return Service(name, handler, internal_server(Predictor.Processor(handler), handler, pc, cfg, "predictor", name))


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
    server = internal_server(Retrainer.Processor(handler), handler, cfg.retrainer, cfg, "retrainer", "retrainer")
    return Service("retrainer", handler.start(), server, closers=[handler.close])


def version_store(cfg: ClusterConfig, name: str, info: BundleInfo) -> VersionStore | None:
    """The service's deployed versions under the config's state_dir; None: kept in memory only."""
    folder = cfg.state_folder(name)
    return None if folder is None else VersionStore(folder / "versions", info.sha256)
