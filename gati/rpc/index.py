"""The neighbour-index tier: FAISS indexes of (unit vector -> base-model label), one per key.

A key names one version of one kNN cache (`<cut name>@v<version>`). At start the service loads the
bundle's kNN caches itself (version 0), so a restarted index rejoins without the predictors'
help; predictors add later versions before they swap to them (and reset the version two back,
which no lookup uses any more). `RemoteIndex` is the client a `KnnCache` searches through
(`KnnCache.use_index`).

What a caller may make it hold is bounded (`services.index` in the cluster config): at most
`max_keys` indexes, `max_vectors` vectors in each, vectors of at most `max_dim` dimensions. An
addition beyond a bound is refused whole (InvalidRequest naming the bound) and counted
(`gati_index_refused_total{bound}`); nothing of it is stored.

When the cluster has an online neighbour tier (the config's `tier`), this service keeps it too
(`judge`, `remember`, `deploy_tier`, `tier`: gati/rpc/tier.py); without one those calls say so.
"""
from __future__ import annotations

import threading

import numpy as np

from gati.bundle import BundleInfo
from gati.errors import GatiError, InvalidInput
from gati.neighbor_index import KNN, FaissIndex
from gati.rpc.config import IndexConfig
from gati.rpc.gen.gati_idl.ttypes import (
    Features,
    InvalidRequest,
    LookupReply,
    SearchResult,
    TierInfo,
    TierUpdate,
    Vectors,
)
from gati.rpc.metrics import IndexMetrics
from gati.rpc.service import ServiceBase
from gati.rpc.tensors import from_tensor, to_tensor
from gati.rpc.tier import TierServer
from gati.rpc.transport import Pool

MAX_K = 1024


def index_key(cut_name: str, version: int) -> str:
    return f"{cut_name}@v{version}"


class _Entry:
    def __init__(self, index: FaissIndex):
        self.index = index
        self.lock = threading.Lock()  # FAISS flat indexes are not safe to add to while searching


class IndexHandler(ServiceBase):
    role = "index"

    def __init__(self, metrics: IndexMetrics | None = None, bounds: IndexConfig = IndexConfig("", 0),
                 tier: TierServer | None = None):
        self.metrics: IndexMetrics = metrics or IndexMetrics()
        super().__init__(self.metrics)
        self.bounds, self.tier_server = bounds, tier
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    # ---- the online tier (gati/rpc/tier.py) ---------------------------------------------

    def judge(self, features: Features) -> LookupReply:
        with self.gate.track():  # served while draining: the executors' requests still need it
            if self.tier_server is None:
                return LookupReply(features.request_id, features.cut, -1, 0.0, False, 0, self.name,
                                   "this cluster has no online tier")
            return self.tier_server.judge(features)

    def remember(self, vectors, labels) -> None:
        if self.tier_server is not None:
            self.tier_server.remember(vectors, labels)

    def deploy_tier(self, update: TierUpdate) -> None:
        self._tier().deploy(update)

    def tier(self) -> TierInfo:
        return self._tier().info()

    def _tier(self) -> TierServer:
        if self.tier_server is None:
            raise InvalidRequest("this cluster has no online tier (the config's `tier`)")
        return self.tier_server

    def add(self, key: str, vectors, labels) -> None:
        x, y = _arrays(vectors, labels)
        b = self.bounds
        if x.shape[1] > b.max_dim:
            self._refuse("max_dim", f"vectors of {x.shape[1]} dimensions; the index takes at most {b.max_dim} "
                                    f"(max_dim)")
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= b.max_keys:
                    self._refuse("max_keys", f"{len(self._entries)} indexes are held (max_keys {b.max_keys}); "
                                             f"reset one before adding {key!r}")
                entry = self._entries[key] = _Entry(FaissIndex(x.shape[1]))
        with entry.lock:
            if entry.index.ntotal + len(x) > b.max_vectors:
                self._refuse("max_vectors", f"index {key} holds {entry.index.ntotal} vectors; {len(x)} more would "
                                            f"pass max_vectors {b.max_vectors}")
            try:
                entry.index.add(x, y)
            except InvalidInput as e:
                raise InvalidRequest(f"index {key}: {e}") from e
            self.metrics.vectors.labels(key).set(entry.index.ntotal)
        self.metrics.added.inc(len(y))

    def _refuse(self, bound: str, message: str) -> None:
        self.metrics.refused.labels(bound).inc()
        raise InvalidRequest(message)

    def search(self, key: str, queries, k: int) -> SearchResult:
        with self.gate.track():
            return self._search(key, queries, k)

    def _search(self, key: str, queries, k: int) -> SearchResult:
        entry = self._entry(key)
        q = _float_rows(queries, "queries")
        if not 1 <= k <= MAX_K:
            raise InvalidRequest(f"k must be in 1..{MAX_K}, got {k}")
        if q.shape[1] != entry.index.dim:
            raise InvalidRequest(f"index {key} holds {entry.index.dim}-d vectors, queries are {q.shape[1]}-d")
        with entry.lock:
            try:
                sims, labels = entry.index.search(q, k)
            except GatiError as e:
                raise InvalidRequest(f"index {key}: {e}") from e
        self.metrics.searches.inc()
        return SearchResult(sims=to_tensor(sims.astype(np.float32)), labels=to_tensor(labels.astype(np.int64)))

    def size(self, key: str) -> int:
        entry = self._entries.get(key)
        return 0 if entry is None else entry.index.ntotal

    def reset(self, key: str) -> None:
        with self._lock:
            if self._entries.pop(key, None) is not None:
                self.metrics.vectors.remove(key)

    def export(self, key: str) -> Vectors:
        entry = self._entry(key)
        with entry.lock:
            vectors, labels = entry.index.export()
        return Vectors(vectors=to_tensor(vectors.astype(np.float32)), labels=to_tensor(labels))

    def load_bundle_caches(self, info: BundleInfo) -> list[str]:
        """Add the plan's kNN caches (version 0) from the bundle; returns their keys. Their files are torch files: an
        index whose plan has kNN caches imports torch to read them, one without never does."""
        keys = []
        for e in info.plan.entries:
            if e.variant != KNN:
                continue
            vectors, labels = info.load_cache(e.cut, e.variant).index.export()
            key = index_key(e.cut_name, 0)
            self.reset(key)
            self.add(key, to_tensor(vectors), to_tensor(labels))
            keys.append(key)
        return keys

    def _entry(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            raise InvalidRequest(f"no index named {key!r} (known: {', '.join(sorted(self._entries)) or 'none'})")
        return entry


def _float_rows(t, what: str) -> np.ndarray:
    try:
        x = from_tensor(t, what)
    except InvalidInput as e:
        raise InvalidRequest(str(e)) from e
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidRequest(f"{what} must be a non-empty float32 N x d array, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidRequest(f"{what} contain NaN or infinite values")
    return x


def _arrays(vectors, labels) -> tuple[np.ndarray, np.ndarray]:
    x = _float_rows(vectors, "vectors")
    try:
        y = from_tensor(labels, "labels")
    except InvalidInput as e:
        raise InvalidRequest(str(e)) from e
    if y.dtype != np.int64 or y.shape != (len(x),):
        raise InvalidRequest(f"labels must be int64 [{len(x)}], got {y.dtype} {y.shape}")
    return x, y


class RemoteIndex:
    """The NeighborIndex protocol (add, search, export) over Thrift, for `KnnCache.use_index`."""

    def __init__(self, pool: Pool, key: str):
        self.pool, self.key = pool, key

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        self.pool.call("add", self.key, to_tensor(np.asarray(x, np.float32)), to_tensor(np.asarray(labels, np.int64)))

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        r = self.pool.call("search", self.key, to_tensor(np.asarray(x, np.float32)), k)
        return from_tensor(r.sims, "sims"), from_tensor(r.labels, "labels")

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.pool.call("export", self.key)
        return from_tensor(r.vectors, "vectors").copy(), from_tensor(r.labels, "labels").copy()

    def reset(self) -> None:
        self.pool.call("reset", self.key)
