"""A small convolutional head: one 3x3 conv over the activation pooled to at most 8x8, then a linear layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gati.cache.base import Cache, check_state, confidence_and_label, require
from gati.cache.train import DistillSettings, HeadParams, distill

GRID = 2  # the conv output is average-pooled to GRID x GRID before the linear layer


@dataclass(frozen=True)
class ConvFcParams(HeadParams):
    channels: int = 64

    def check(self) -> None:
        super().check()
        require(self.channels >= 1, f"channels must be >= 1, got {self.channels}")


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of one conv equal to bn(conv(x)) with bn's running statistics (eval mode)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight.detach() * scale[:, None, None, None]
    bias = bn.bias.detach() - bn.running_mean * scale
    return weight.contiguous(), bias.contiguous()


class ConvFcCache(Cache):
    """pool8 -> Conv2d(C, 64, 3, padding=1) + BN + ReLU -> avg-pool 2x2 -> flatten -> Linear(256, nc).

    BatchNorm normalises the conv's output while fitting (no input standardisation needed) and is
    folded into the conv afterwards, so predict is conv, relu, pool, linear.
    """

    variant = "convfc"
    reducer_key = "pool8"
    Params = ConvFcParams

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, **hparams: Any) -> None:
        super().__init__(in_shape, num_classes, **hparams)
        self._weights: dict[str, Tensor] = {}

    def _build(self) -> nn.Sequential:
        channels = self.hparams.channels
        return nn.Sequential(
            nn.Conv2d(self.feat_shape[0], channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(GRID),
            nn.Flatten(),
            nn.Linear(channels * GRID * GRID, self.num_classes),
        )

    def _fit(self, feats: Tensor, teacher_logits: Tensor, seed: int) -> tuple[int, float]:
        settings = DistillSettings.of(self.hparams)
        model, agree = distill(self._build, feats, teacher_logits, settings, seed=seed)
        conv_weight, conv_bias = fold_batchnorm(model[0], model[1])
        linear = model[5]
        self._load_state({
            "conv_weight": conv_weight,
            "conv_bias": conv_bias,
            "fc_weight": linear.weight.detach().clone(),
            "fc_bias": linear.bias.detach().clone(),
        })
        return settings.epochs, agree

    def _predict(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        w = self._weights
        h = F.conv2d(feats.to(w["conv_weight"].dtype), w["conv_weight"], w["conv_bias"], padding=1).relu_()
        h = F.adaptive_avg_pool2d(h, GRID).flatten(1)
        return confidence_and_label(F.linear(h, w["fc_weight"], w["fc_bias"]).float())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._weights.values())

    def _state(self) -> dict[str, Tensor]:
        return dict(self._weights)

    def _load_state(self, state: dict[str, Tensor]) -> None:
        c, channels, flat = self.feat_shape[0], self.hparams.channels, self.hparams.channels * GRID * GRID
        check_state(
            state,
            {
                "conv_weight": (channels, c, 3, 3),
                "conv_bias": (channels,),
                "fc_weight": (self.num_classes, flat),
                "fc_bias": (self.num_classes,),
            },
        )
        dtype = torch.bfloat16 if self.hparams.bf16 else torch.float32
        self._weights = {name: t.to(dtype) for name, t in state.items()}
