"""A two-layer MLP head on average- and max-pooled channels."""

from __future__ import annotations

from dataclasses import dataclass

from gati.cache.base import require
from gati.cache.linear import DenseCache
from gati.cache.train import HeadParams


@dataclass(frozen=True)
class MlpParams(HeadParams):
    hidden: int = 256
    dropout: float = 0.2  # only while fitting; predict is deterministic

    def check(self) -> None:
        super().check()
        require(self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}")
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")


class MlpCache(DenseCache):
    """concat(avg, max) pooled channels -> standardise -> Linear(2C, hidden) -> ReLU -> Linear."""

    variant = "mlp"
    reducer_key = "gapmax"
    Params = MlpParams

    def hidden_dims(self) -> tuple[int, ...]:
        return (self.hparams.hidden,)

    def dropout(self) -> float:
        return self.hparams.dropout
