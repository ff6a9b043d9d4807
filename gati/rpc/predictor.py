"""A cache predictor: serves the learned caches of the cuts placed on it.

`lookup` (a cut's reduced features from the executor) runs the cut's cache and returns the
verdict to the executor, whose cascade loop stops at the first hit (see gati/runtime/cascade.py).

`deploy` swaps in a new version of a cut's cache (and the threshold it answers at) atomically: the served caches are one immutable
mapping replaced as a whole, so a lookup in flight finishes on the version it started with. With a
state directory (gati/rpc/durable.py) each accepted version is written to disk before `deploy`
answers, and a restarted predictor serves the highest one written (its kNN vectors loaded into the
index again); `cache(cut)` hands the serving version's file to a retrainer that lost its own.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
from dataclasses import dataclass

import torch

from gati.cache import Cache
from gati.cache.knn import KnnCache
from gati.errors import GatiError
from gati.rpc.cachefile import cache_from_bytes, cache_to_bytes, mismatch
from gati.rpc.durable import VersionStore
from gati.rpc.gen.gati_idl import NeighborIndex
from gati.rpc.gen.gati_idl.ttypes import (
    CacheInfo,
    CacheUpdate,
    Features,
    InvalidRequest,
    LookupReply,
)
from gati.rpc.index import RemoteIndex, index_key
from gati.rpc.metrics import PredictorMetrics
from gati.rpc.service import ServiceBase
from gati.rpc.tensors import from_tensor
from gati.rpc.transport import Limits, PeerUnavailable, Pool, Throttle
from gati.runtime.cascade import Verdict

log = logging.getLogger("gati.rpc.predictor")


@dataclass(frozen=True)
class Slot:
    """One served cut: its cache, the plan's threshold, and the version serving."""
    cut: int
    cut_name: str
    variant: str
    threshold: float
    cache: Cache
    version: int = 0


class PredictorHandler(ServiceBase):
    role = "predictor"

    def __init__(self, slots: dict[int, Slot], index: Pool | None = None, metrics: PredictorMetrics | None = None,
                 store: VersionStore | None = None):
        self.metrics: PredictorMetrics = metrics or PredictorMetrics()
        super().__init__(self.metrics)
        self.index, self.store = index, store
        self._deploy_lock = threading.Lock()
        self._failures_logged = Throttle()
        self._replaced: dict[int, int] = {}  # cut -> the version its last deploy replaced
        self.slots: dict[int, Slot] = {cut: self._resume(slot) for cut, slot in slots.items()}
        for slot in self.slots.values():
            self.metrics.version.labels(slot.cut_name).set(slot.version)

    # ---- request path ---------------------------------------------------------------------

    def lookup(self, features: Features) -> LookupReply:
        with self.gate.track():  # served while draining: the executor's requests still need it
            return self._lookup(features)

    def _lookup(self, features: Features) -> LookupReply:
        slot = self.slots.get(features.cut)
        try:
            if slot is None:
                raise GatiError(f"cut {features.cut} is not served by {self.name}")
            x = torch.from_numpy(from_tensor(features.features, "features").copy())
            label, conf = slot.cache.predict(x)
            v = Verdict.judge(slot.cut, int(label[0]), float(conf[0]), slot.threshold)
            outcome, error = "hit" if v.hit else "miss", ""
        except Exception as e:  # a broken lookup is no verdict (never a lost request, never a made-up miss)
            if self._failures_logged.allow():  # e.g. the index is down: every lookup fails alike
                log.warning("lookup for request %d at cut %d failed: %s", features.request_id, features.cut, e)
            v, outcome, error = Verdict(features.cut, -1, 0.0, False), "error", str(e) or type(e).__name__
        self.metrics.lookups.labels(slot.cut_name if slot else str(features.cut), outcome).inc()
        return LookupReply(features.request_id, v.cut, v.label, v.confidence, v.hit,
                           slot.version if slot else -1, self.name, error)

    # ---- management -----------------------------------------------------------------------

    def _resume(self, slot: Slot) -> Slot:
        """The highest version in the state directory, else the bundle's (which the index service loads itself)."""
        found = self.store.latest(slot.cut_name, slot.cache) if self.store else None
        if found is not None:
            threshold = slot.threshold if found.record.threshold is None else found.record.threshold
            resumed = dataclasses.replace(slot, cache=found.cache, version=found.version, threshold=threshold)
            try:
                self._attach_index(resumed, populate=True)
                log.info("cut %s resumes version %d from %s", slot.cut_name, found.version, self.store.folder)
                return resumed
            except PeerUnavailable as e:  # the retrainer pushes its version again once both answer
                log.error("cut %s: cannot load version %d into the neighbour index (%s); serving the bundle's "
                          "version 0", slot.cut_name, found.version, e)
        self._attach_index(slot, populate=False)
        return slot

    def cache(self, cut: int) -> bytes:
        """The cache file of the version serving `cut`."""
        slot = self.slots.get(cut)
        if slot is None:
            raise InvalidRequest(f"cut {cut} is not served by {self.name}")
        return cache_to_bytes(slot.cache)

    def caches(self) -> list[CacheInfo]:
        return [CacheInfo(s.cut, s.cut_name, s.variant, s.version, s.threshold) for s in self.slots.values()]

    def deploy(self, update: CacheUpdate) -> None:
        with self._deploy_lock:
            slot = self.slots.get(update.cut)
            if slot is None:
                raise InvalidRequest(f"cut {update.cut} is not served by {self.name}")
            if update.version <= slot.version:
                raise InvalidRequest(f"cut {slot.cut_name} already serves version {slot.version}; "
                                     f"refusing version {update.version}")
            try:
                cache = cache_from_bytes(update.blob)
            except GatiError as e:
                raise InvalidRequest(f"version {update.version} of cut {slot.cut_name} is not a cache: {e}") from e
            wrong = mismatch(cache, slot.cache)
            if wrong:
                raise InvalidRequest(f"version {update.version} cannot serve cut {slot.cut_name}: {wrong}")
            threshold = slot.threshold if update.threshold is None else update.threshold
            if math.isnan(threshold) or threshold < 0:
                raise InvalidRequest(f"version {update.version} of cut {slot.cut_name}: threshold {threshold} is "
                                     "not a confidence (a number >= 0; infinity: never answers)")
            new = dataclasses.replace(slot, cache=cache, version=update.version, threshold=threshold)
            try:
                self._attach_index(new, populate=True)
            except PeerUnavailable as e:
                raise InvalidRequest(f"cannot load version {update.version} into the neighbour index: {e}") from e
            if self.store is not None:  # on disk before it serves: a restart resumes what was acknowledged
                try:
                    self.store.save(new.cut, new.cut_name, new.version, new.variant, update.blob,
                                    threshold=new.threshold)
                except (OSError, GatiError) as e:
                    raise InvalidRequest(f"cannot write version {update.version} to the state directory: "
                                         f"{e}") from e
            self.slots = {**self.slots, new.cut: new}  # one reference swap: atomic for readers
            self._forget_index(slot)
        self.metrics.deploys.labels(slot.cut_name).inc()
        self.metrics.version.labels(slot.cut_name).set(update.version)
        log.info("cut %s now serves version %d at threshold %.4f", slot.cut_name, update.version, new.threshold)

    def _forget_index(self, replaced: Slot) -> None:
        """Reset the index of the version `replaced` had replaced: lookups in flight may still search
        `replaced`'s version, none the one before it, and the index holds a bounded number of keys."""
        before = self._replaced.get(replaced.cut)
        self._replaced[replaced.cut] = replaced.version
        if self.index is None or not isinstance(replaced.cache, KnnCache) or before is None:
            return
        try:
            RemoteIndex(self.index, index_key(replaced.cut_name, before)).reset()
        except PeerUnavailable as e:
            self.index.warn(log, e)

    def _attach_index(self, slot: Slot, populate: bool) -> None:
        """kNN caches search the index service when one is configured."""
        if self.index is None or not isinstance(slot.cache, KnnCache):
            return
        remote = RemoteIndex(self.index, index_key(slot.cut_name, slot.version))
        if populate:
            remote.reset()
        slot.cache.use_index(remote, populate=populate)


def index_pool(host: str, port: int, limits: Limits) -> Pool:
    return Pool(NeighborIndex.Client, host, port, limits, name="index")
