"""A small convolutional head: one 3x3 conv over the activation pooled to at most 8x8, then a linear layer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gati.cache.base import Cache, check_state, confidence_and_label, require
from gati.cache.train import DistillSettings, HeadParams, distill

GRID = 2  # the conv output is average-pooled to GRID x GRID before the linear layer
# A wider conv answers more requests at equal wrong answers (256 output channels instead of 64: +9-19% at
# ResNet-18's layer1.0, +4-9% at layer2.0; docs/results.md, "Wider convolutional heads"), but its multiply-adds
# grow with input x output channels. By default that product is the same at every cut, 64 x 256 (the old
# 64-channel head's at a 256-channel input), so narrow early cuts get wide heads and wide cuts stay at 64. Fitting
# still costs more at 256 output channels than the product says (the batch norm and pooling grow with the output).
CONV_SIZE = 64 * 256
MIN_CHANNELS, MAX_CHANNELS = 64, 256
# A draft (what the build plans with before deciding what to fit in full) is the narrowest head; where the head is
# that narrow already (at 256 input channels and more), it is fitted for 3 epochs instead. Either cuts the fit to
# between a fifth and a half. Not both at once: 3-epoch drafts at ResNet-18's early cuts lost the plan its best
# head there (1.90x against 2.07x measured, docs/results.md, "Cheaper drafts at layer3 and layer4").
DRAFT_EPOCHS = 3


def default_channels(in_channels: int) -> int:
    return max(MIN_CHANNELS, min(MAX_CHANNELS, CONV_SIZE // in_channels))


@dataclass(frozen=True)
class ConvFcParams(HeadParams):
    channels: int = 0  # the conv's output channels; 0: default_channels of the input's
    # 10, not HeadParams' 15: at layer2.0 30 epochs answered 19% fewer requests than 15 (it overfits), and 8
    # epochs of a 256-channel head did as well as 15; the saved time pays for the wider heads.
    epochs: int = 10

    def check(self) -> None:
        super().check()
        require(self.channels >= 0, f"channels must be >= 0 (0: by the input's width), got {self.channels}")


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of one conv equal to bn(conv(x)) with bn's running statistics (eval mode)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight.detach() * scale[:, None, None, None]
    bias = bn.bias.detach() - bn.running_mean * scale
    return weight.contiguous(), bias.contiguous()


class ConvFcCache(Cache):
    """pool8 -> Conv2d(C, K, 3, padding=1) + BN + ReLU -> avg-pool 2x2 -> flatten -> Linear(4 K, nc).

    BatchNorm normalises the conv's output while fitting (no input standardisation needed) and is
    folded into the conv afterwards, so predict is conv, relu, pool, linear.
    """

    variant = "convfc"
    reducer_key = "pool8"
    Params = ConvFcParams

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, **hparams: Any) -> None:
        super().__init__(in_shape, num_classes, **hparams)
        if self.hparams.channels == 0:  # resolved here, so the saved config names the width it was fitted at
            self.hparams = dataclasses.replace(self.hparams, channels=default_channels(self.in_shape[0]))
        self._weights: dict[str, Tensor] = {}

    def draft(self) -> "ConvFcCache | None":
        # A cheaper head ranks the cut (DRAFT_EPOCHS says which): of ResNet-18's three 256-channel heads, two served no
        # exit in any plan measured, for a third of the fitting time (docs/results.md, "Where a default build's time
        # goes"), and no plan measured served its 64-channel heads at layer3 and layer4, the costliest of the rest.
        if self.hparams.channels > MIN_CHANNELS:
            cheaper = {"channels": MIN_CHANNELS}
        elif self.hparams.epochs > DRAFT_EPOCHS:
            cheaper = {"epochs": DRAFT_EPOCHS}
        else:
            return None
        hparams = {**dataclasses.asdict(self.hparams), **cheaper}
        return ConvFcCache(self.in_shape, self.num_classes, **hparams)

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
