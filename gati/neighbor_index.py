"""FAISS behind a small protocol, without torch: where labelled unit vectors are stored and searched.

The kNN cache searches a `NeighborIndex` (gati/cache/knn.py), so that a remote one (the neighbour-index service's,
`gati.rpc.index.RemoteIndex`) can replace the local `FaissIndex` without the cache changing; the service keeps
`FaissIndex`es, and the online tier (gati/learning/neighbours.py) searches its slots with the same FAISS. None of
them needs torch, so neither does the neighbour-index service unless its plan serves kNN caches (their files are
torch files).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gati.errors import GatiError, InvalidInput

SMALL_SEARCH = 64  # queries; below this a search runs on one OpenMP thread
KNN = "knn"  # the kNN cache's variant name (gati/cache/knn.py), which the index service loads from a plan


def load_faiss() -> Any:
    """FAISS, imported on first use: a GPU host that serves only dense caches need not install it."""
    import faiss
    return faiss


class OneThread:
    """Per-request searches are tiny: an OpenMP thread team per call costs more than it saves.

    FAISS and torch share one OpenMP runtime, and its thread count is per calling thread, so it
    is lowered only around the search and restored after: setting it once at import would also
    drop torch's own thread count to 1 for the whole process.
    """

    def __enter__(self) -> None:
        faiss = load_faiss()
        self.saved = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        load_faiss().omp_set_num_threads(self.saved)


@runtime_checkable
class NeighborIndex(Protocol):
    """Where a KnnCache keeps its labelled unit vectors and searches them by inner product."""

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        """Store rows of `x` (float32 M x D) with int64 `labels` [M]."""

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities float32 N x k', labels int64 N x k') of the k' <= k nearest; label -1 = none."""

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """Everything stored: (vectors float32 M x D, labels int64 [M]); used to save or move the data."""


class FaissIndex:
    """The local NeighborIndex: an exact FAISS inner-product index plus a label per stored vector."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = load_faiss().IndexFlatIP(dim)
        self._labels = np.empty(0, dtype=np.int64)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim or labels.shape != (len(x),):
            raise InvalidInput(f"index add needs M x {self.dim} vectors and M labels, got {x.shape}, {labels.shape}")
        self._index.add(np.ascontiguousarray(x, dtype=np.float32))
        self._labels = np.concatenate((self._labels, labels.astype(np.int64, copy=False)))

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.ntotal == 0:
            raise GatiError("the neighbour index is empty")
        x = np.ascontiguousarray(x, dtype=np.float32)
        with OneThread() if len(x) < SMALL_SEARCH else nullcontext():
            sims, ids = self._index.search(x, min(k, self.ntotal))
        return sims, np.where(ids >= 0, self._labels[ids], -1)

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        return self._index.reconstruct_n(0, self.ntotal), self._labels.copy()
