"""k-nearest-neighbour cache: cosine similarity to stored training features, similarity-weighted vote.

The neighbour search sits behind a small `NeighborIndex` protocol (gati/neighbor_index.py) so that a remote
index (a Thrift service) can replace the local FAISS one without the cache changing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gati.cache.base import Cache, Params, check_state, require
from gati.errors import GatiError
from gati.neighbor_index import KNN, FaissIndex, NeighborIndex

LOO_SAMPLE = 1000  # stored vectors whose leave-one-out vote estimates the train agreement
VOTE_FLOOR = 1e-6  # keeps every neighbour's weight positive, so all-negative similarities still vote


@dataclass(frozen=True)
class KnnParams(Params):
    k: int = 10
    max_items: int = 20000  # fit keeps a random subset this large: memory and search time grow with it

    def check(self) -> None:
        require(self.k >= 1, f"k must be >= 1, got {self.k}")
        require(self.max_items >= 1, f"max_items must be >= 1, got {self.max_items}")


def unit_rows(x: Tensor) -> Tensor:
    return F.normalize(x, dim=1)


def as_tensor(x: np.ndarray, dtype: type) -> Tensor:
    """A tensor sharing `x`'s memory when possible; copied when `x` is read-only (e.g. a remote index's
    arrays decoded from a message buffer), which torch does not support."""
    x = np.ascontiguousarray(x, dtype=dtype)
    return torch.from_numpy(x if x.flags.writeable else x.copy())


class KnnCache(Cache):
    """Global-average-pooled channels, centred on the fit mean and L2-normalised, searched by cosine.

    Label = similarity-weighted vote of the k nearest stored vectors (each stored with the teacher's
    argmax); confidence = that label's share of the vote. Centring matters: pooled post-ReLU
    features are all non-negative, so without it every pair of vectors looks similar.
    """

    variant = KNN
    reducer_key = "gap"
    Params = KnnParams

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, **hparams: Any) -> None:
        super().__init__(in_shape, num_classes, **hparams)
        self.dim = self.feat_shape[0]
        self._mean = torch.zeros(self.dim)
        self._count = 0
        self._index: NeighborIndex = FaissIndex(self.dim)

    @property
    def index(self) -> NeighborIndex:
        return self._index

    def use_index(self, index: NeighborIndex, *, populate: bool = True) -> None:
        """Search `index` from now on; with `populate`, first copy the stored vectors into it.

        Pass populate=False for an index that already holds this cache's data (e.g. a remote index
        service that loaded the same cache file). A later `fit` builds a fresh local index again.
        """
        if not isinstance(index, NeighborIndex):
            raise GatiError(f"{type(index).__name__} lacks the NeighborIndex methods add, search, export")
        if populate and self._count:
            index.add(*self._index.export())
        self._index = index

    def _fit(self, feats: Tensor, teacher_logits: Tensor, seed: int) -> tuple[int, float]:
        keep = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))
        keep = keep[: self.hparams.max_items].sort().values
        self._mean = feats.mean(dim=0)
        vectors = unit_rows(feats[keep] - self._mean)
        labels = teacher_logits[keep].argmax(dim=1)
        index = FaissIndex(self.dim)
        index.add(vectors.numpy(), labels.numpy())
        self._index, self._count = index, len(keep)
        return 0, self._leave_one_out(vectors, labels)

    def _leave_one_out(self, vectors: Tensor, labels: Tensor) -> float:
        """Agreement on stored vectors when each query's nearest hit (itself) is left out of its vote."""
        sample = vectors[:LOO_SAMPLE]
        if self._count < 2:
            return 0.0
        sims, neighbours = self._index.search(sample.numpy(), self.hparams.k + 1)
        predicted, _ = self._vote(sims[:, 1:], neighbours[:, 1:])
        return float((predicted == labels[:LOO_SAMPLE]).float().mean())

    def _vote(self, sims: np.ndarray, neighbours: np.ndarray) -> tuple[Tensor, Tensor]:
        neighbours_t = as_tensor(neighbours, np.int64)
        if neighbours_t.numel() and int(neighbours_t.max()) >= self.num_classes:
            raise GatiError(f"neighbour index returned label {int(neighbours_t.max())} >= {self.num_classes}")
        valid = neighbours_t >= 0
        weights = as_tensor(sims, np.float32).clamp_min(0.0) + VOTE_FLOOR
        weights = torch.where(valid, weights, 0.0)
        votes = torch.zeros(len(weights), self.num_classes).scatter_add_(1, neighbours_t.clamp_min(0), weights)
        top, label = votes.max(dim=1)
        return label, top / votes.sum(dim=1).clamp_min(VOTE_FLOOR)

    def _predict(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        if len(feats) == 0:
            return torch.empty(0, dtype=torch.int64), torch.empty(0)
        sims, neighbours = self._index.search(unit_rows(feats - self._mean).numpy(), self.hparams.k)
        return self._vote(sims, neighbours)

    def lookup(self, act: Tensor) -> tuple[Tensor, Tensor]:
        """The index lives in host memory: an activation on a GPU is pooled there, then copied over."""
        return self._predict(self._reduce_fn(act).cpu())

    def to(self, device: str | torch.device) -> "KnnCache":
        return self  # FAISS (faiss-cpu) searches on the CPU whatever device the model runs on

    @property
    def graphable(self) -> bool:
        return False  # the search reads its query back to the host

    def nbytes(self) -> int:
        """Stored vectors (float32) and labels (int64), plus the centring mean."""
        return self._count * (self.dim * 4 + 8) + self._mean.numel() * 4

    def _state(self) -> dict[str, Tensor]:
        vectors, labels = self._index.export()
        return {"mean": self._mean, "vectors": as_tensor(vectors, np.float32), "labels": as_tensor(labels, np.int64)}

    def _load_state(self, state: dict[str, Tensor]) -> None:
        check_state(state, {"mean": (self.dim,), "vectors": (-1, self.dim), "labels": (-1,)})
        vectors, labels = state["vectors"].float(), state["labels"].long()
        if len(vectors) != len(labels) or len(labels) == 0:
            raise GatiError(f"{len(vectors)} stored vectors but {len(labels)} labels")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise GatiError(f"stored labels fall outside 0..{self.num_classes - 1}")
        index = FaissIndex(self.dim)
        index.add(vectors.numpy(), labels.numpy())
        self._mean, self._index, self._count = state["mean"].float(), index, len(labels)
