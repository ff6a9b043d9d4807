"""The paper's predictor: fully connected layers on the activation pooled to a fixed small size."""

from __future__ import annotations

from dataclasses import dataclass

from gati.cache.mlp import MlpCache, MlpParams

MAX_FLAT = 4096  # flattened features beyond this make the first layer too big for a cheap lookup


@dataclass(frozen=True)
class FcParams(MlpParams):
    dropout: float = 0.0


class FcCache(MlpCache):
    """Pool to 4x4 (2x2 when C*16 > 4096) -> flatten -> standardise -> Linear(flat, hidden) -> ReLU -> Linear."""

    variant = "fc"
    reducer_key = "pool4"  # for C <= 256; reducer_for(in_shape) and instances give the real choice
    Params = FcParams

    @classmethod
    def reducer_for(cls, in_shape: tuple[int, int, int]) -> str:
        return "pool4" if in_shape[0] * 16 <= MAX_FLAT else "pool2"
