"""Fixed, parameter-free reducers: pool a cut's N x C x H x W activation down to what a cache head reads.

Reducers are kept apart from the learned heads so that the build pipeline can store reduced features
once per distinct reducer, and the distributed executor can send the small reduced tensor instead of
the whole activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gati.errors import InvalidInput
from gati.reducer_names import check_reducer


def _check_4d(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InvalidInput(f"a reducer takes an N x C x H x W activation tensor, got {got}")


class GlobalAvgPool(nn.Module):
    """N x C x H x W -> N x C (spatial mean)."""

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x)
        return x.mean(dim=(2, 3))


class GlobalAvgMaxPool(nn.Module):
    """N x C x H x W -> N x 2C: spatial mean then spatial max, concatenated along channels."""

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x)
        return torch.cat((x.mean(dim=(2, 3)), x.amax(dim=(2, 3))), dim=1)


class ShrinkPool(nn.Module):
    """N x C x H x W -> N x C x min(H, size) x min(W, size) by adaptive average pooling.

    Never enlarges: an activation already smaller than the target keeps its size (replicating pixels
    would only add redundant features to the head), and one that is no larger is returned as is.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x)
        h, w = x.shape[-2:]
        if h <= self.size and w <= self.size:
            return x  # already small enough; adaptive pooling to the same size is a slow copy
        return F.adaptive_avg_pool2d(x, (min(h, self.size), min(w, self.size)))

    def extra_repr(self) -> str:
        return f"size={self.size}"


def make_reducer(key: str) -> nn.Module:
    """The reducer named `key` (one of REDUCERS)."""
    check_reducer(key)
    if key == "gap":
        return GlobalAvgPool()
    if key == "gapmax":
        return GlobalAvgMaxPool()
    return ShrinkPool(int(key.removeprefix("pool")))
