"""The online tier's vectors: a request's activation at the tier's cut, reduced and L2-normalised, which is what the
tier (gati/learning/neighbours.py) stores and searches, and what its search costs.

Apart from the tier because it needs torch and the tier does not: in the cluster the executor makes the vectors
(`unit_vector`) and the neighbour-index service, which keeps the tier, only searches them.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gati.cache.reduce import make_reducer
from gati.errors import InvalidInput
from gati.learning.neighbours import NeighbourTier


def unit_vector(reduce: Callable[[Tensor], Tensor], act: Tensor) -> np.ndarray:
    """The first activation of `act`, reduced and L2-normalised: what the tier stores and searches (float32 [dim]).
    The cluster's executor computes it with the same function and sends only it (gati/rpc/tier.py)."""
    with torch.inference_mode():
        flat = reduce(act[:1]).reshape(1, -1).float()
        return F.normalize(flat, dim=1)[0].cpu().numpy()


@functools.cache
def _reducer(key: str) -> Callable[[Tensor], Tensor]:
    # parameter-free, so one per reducer name serves every tier; forward skips nn.Module's hooks per request
    return make_reducer(key).forward


def tier_vector(tier: NeighbourTier, act: Tensor) -> np.ndarray:
    """A 1 x C x H x W activation at the tier's cut as the tier's unit vector (float32 [dim])."""
    if act.dim() != 4 or tuple(act.shape[1:]) != tier.in_shape:
        raise InvalidInput(f"the tier reads activations of shape N x {tier.in_shape}, got {tuple(act.shape)}")
    return unit_vector(_reducer(tier.config.reducer), act)


def time_tier(tier: NeighbourTier, repeats: int = 30) -> float:
    """Milliseconds of the tier's reduce and search when full, on a scratch copy: its cost in the latency model."""
    scratch = NeighbourTier(tier.config, tier.in_shape, tier.num_classes)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(tier.config.capacity, tier.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for i, v in enumerate(vectors):
        scratch.add(v, i % tier.num_classes)
    act = torch.zeros(1, *tier.in_shape)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scratch.judge(tier_vector(scratch, act), math.inf)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))
