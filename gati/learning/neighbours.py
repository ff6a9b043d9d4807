"""The online neighbour tier: recent requests, remembered with the base model's answer, answer their near-duplicates.

Requests that ran to the end (misses, and sampled hits run to the end as shadow checks) are stored at one early cut
as a reduced, L2-normalised activation with the base model's label. A later request is searched against them by
inner product (cosine similarity) with FAISS; when its nearest neighbours are similar enough and agree, the tier
answers at that cut and the rest of the network never runs. This is what bursts and repeated scenes (a camera, a
popular image) need: the learned caches generalise over classes, the tier remembers instances.

The confidence rule. The base model's own answer is not stable on near-duplicates: a jittered copy of an image on
a class border gets another label a few percent of the time, so the single nearest neighbour's label is wrong
more often than a 0.99 target allows, however similar it is. The tier therefore reads the k nearest neighbours and
takes the nearest one's label, with confidence

    (1 / k) * sum_i s_i * (+1 if label_i equals that label, else -1),   clipped to [0, 1]

(s_i the cosine similarities; missing neighbours count 0): high only when several stored copies are all close and
all agree, and pulled down by any close neighbour that disagrees. Measured on `repeat` over ResNet-18
(`experiments/tier_choice.py`, docs/results.md), the nearest similarity alone answered a small fraction of what
this rule answers at the same error rate; k = 8 answered the most at the strictest rates (k = 4 at looser ones),
and the stem pooled 2x2 nearly as much as deeper cuts at a sliver of their cost.

Memory is bounded: at most `capacity` vectors, in a preallocated slot matrix (capacity x dim float32). When it is
full, a new vector replaces the slot used least recently, where a slot is used when it is inserted and whenever it
is among the neighbours of a search that hit. Least recently used, not oldest first: a working set re-requested
for hours keeps the slots that keep answering, while one-off requests (which never become a hit's neighbour) make
way first; and with exact per-slot recency there is no block to rebuild, so eviction is O(capacity) in numpy and
FAISS searches the slot matrix directly (`faiss.knn`), no index to remove from.

Before a threshold for it is certified (`gati.learning.refit`, on live samples exchangeable by the server's coin),
the tier does not answer: its threshold is infinite. Thread-safe: searches and inserts take one lock.

The tier holds and searches vectors; it needs no torch, so the service that keeps it in the cluster (the neighbour
index) starts without it. Making a request's vector from its activation is gati/learning/tier_vector.py's job.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from gati.errors import GatiError, InvalidInput
from gati.learning.tier_config import TierConfig
from gati.neighbor_index import OneThread, load_faiss
from gati.reducer_names import reduced_shape

TIER = "tier"  # the tier's name where a cache's variant would stand (costs, scores, records)


@dataclass(frozen=True)
class TierVerdict:
    """The tier's answer for one request: its label (-1 when empty) and confidence in [0, 1]."""

    label: int
    confidence: float


EMPTY = TierVerdict(-1, 0.0)


class NeighbourTier:
    """Labelled unit vectors at one cut, searched by similarity, bounded by least-recently-used replacement."""

    def __init__(self, config: TierConfig, in_shape: tuple[int, int, int], num_classes: int) -> None:
        self.config = config
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        self.dim = math.prod(reduced_shape(config.reducer, self.in_shape))
        self._vectors = np.zeros((config.capacity, self.dim), dtype=np.float32)
        self._labels = np.full(config.capacity, -1, dtype=np.int64)
        self._used = np.zeros(config.capacity, dtype=np.int64)  # the clock at each slot's last use
        self._size = 0
        self._clock = 0
        self.inserted = 0  # vectors ever added
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def nbytes(self) -> int:
        """What the tier holds, all preallocated: vectors, labels and recency per slot."""
        return self._vectors.nbytes + self._labels.nbytes + self._used.nbytes

    def judge(self, vector: np.ndarray, threshold: float) -> TierVerdict:
        """The tier's verdict on a unit vector; the neighbours of a verdict at or above `threshold` count as used."""
        k = self.config.k
        with self._lock:
            if self._size == 0:
                return EMPTY
            with OneThread():  # one query: a thread team costs more than it saves (gati.neighbor_index)
                sims, slots = load_faiss().knn(vector[None], self._vectors[:self._size], min(k, self._size),
                                               metric=load_faiss().METRIC_INNER_PRODUCT)
            sims, slots = sims[0], slots[0]
            labels = self._labels[slots]
            verdict = confidence(sims, labels, k)
            if verdict.confidence >= threshold:
                self._clock += 1
                self._used[slots] = self._clock
        return verdict

    def add(self, vector: np.ndarray, label: int) -> None:
        """Store one unit vector with the base model's label; when full, replace the least recently used slot."""
        if vector.shape != (self.dim,) or not 0 <= int(label) < self.num_classes:
            raise InvalidInput(f"the tier stores a [{self.dim}] vector with a label in 0..{self.num_classes - 1}, "
                               f"got {vector.shape} and {label!r}")
        with self._lock:
            if self._size < self.config.capacity:
                slot = self._size
                self._size += 1
            else:
                slot = int(np.argmin(self._used))
            self._clock += 1
            self._vectors[slot], self._labels[slot], self._used[slot] = vector, int(label), self._clock
            self.inserted += 1

    def export(self) -> dict[str, np.ndarray]:
        """The stored slots, for the state directory."""
        with self._lock:
            n = self._size
            return {"vectors": self._vectors[:n].copy(), "labels": self._labels[:n].copy(),
                    "used": self._used[:n].copy(), "clock": np.array([self._clock, self.inserted])}

    def restore(self, saved: dict[str, np.ndarray]) -> None:
        """Load what `export` wrote (the most recently used `capacity` slots when it held more)."""
        vectors, labels, used = saved["vectors"], saved["labels"], saved["used"]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or not len(vectors) == len(labels) == len(used):
            raise GatiError(f"a saved tier holds {vectors.shape} vectors, this tier {self.dim}-dimensional ones")
        keep = np.argsort(used, kind="stable")[-self.config.capacity:]
        with self._lock:
            n = len(keep)
            self._vectors[:n], self._labels[:n], self._used[:n] = vectors[keep], labels[keep], used[keep]
            self._size = n
            self._clock, self.inserted = (int(v) for v in saved["clock"])


def confidence(sims: np.ndarray, labels: np.ndarray, k: int) -> TierVerdict:
    """The confidence rule of the module docstring over the nearest neighbours (most similar first)."""
    label = int(labels[0])
    signed = np.where(labels == label, sims, -sims)
    return TierVerdict(label, float(min(1.0, max(0.0, float(signed.sum()) / k))))
