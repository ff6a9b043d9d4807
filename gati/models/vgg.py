"""VGG-16 with batch norm, for any input size and 1 or 3 input channels.

Layout: `features` is an `nn.Sequential` of 13 named units `features.0` .. `features.12`, one per 3x3 convolution;
each unit is `Sequential(conv, bn, relu[, maxpool])`, the max-pool riding in the unit that ends a resolution stage
(units 1, 3, 6, 9, 12). The default cut points are the 13 units: a cache may sit after every convolution, and a unit
that ends a stage is cut after its pool, so the cached activation is the smaller, pooled one. A parameter-free global
average pool then takes the features to 512 values, which `classifier` (Linear(512, num_classes)) maps to logits.

The first convolution takes `in_channels` (3: CIFAR's RGB; 1: the Speech Commands spectrograms). After the fifth pool
a 32x32 input is already 512x1x1, so there the global pool changes nothing and the 32x32 RGB model is the plain
CIFAR VGG-16; a 98x40 spectrogram is 512x3x1 and is averaged. Both share one state-dict layout, `features.<i>.0.*`
(conv, with bias), `features.<i>.1.*` (batch norm), `classifier.*`.
"""

from __future__ import annotations

import torch
from torch import nn

# Output channels per conv; "M" = 2x2 max-pool after the previous conv.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                    512, 512, 512, "M")


def _units(cfg: tuple[int | str, ...], in_ch: int) -> list[nn.Sequential]:
    """One `Sequential(conv, bn, relu)` per conv entry; an "M" appends a max-pool to the unit before it."""
    units: list[nn.Sequential] = []
    for item in cfg:
        if item == "M":
            units[-1].append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_ch = int(item)
        units.append(nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
                                   nn.BatchNorm2d(out_ch), nn.ReLU()))
        in_ch = out_ch
    return units


class VGG(nn.Module):
    """VGG with batch norm; see the module docstring for the unit layout and cut points."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        units = _units(cfg, in_channels)
        self.features = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(units[-1][0].out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.features(x))
        out = torch.flatten(out, 1)
        return self.classifier(out)


def vgg_cuts(cfg: tuple[int | str, ...] = VGG16_CFG) -> list[str]:
    """Cut points without building the model: every conv unit, in forward order."""
    return [f"features.{i}" for i in range(sum(1 for item in cfg if item != "M"))]
