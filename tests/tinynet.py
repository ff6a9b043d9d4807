"""A tiny CNN and a synthetic image folder: fast end-to-end material for core tests.

The synthetic classes are coloured blobs at class-dependent positions plus noise, so a network's
early activations already separate some of them (caches can hit) but not all (some miss). The folder can
also be greyscale and of another size (`write_folder(..., size=(20, 14), channels=1)`), for `grey_factory`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

CUTS = ["stem", "block1", "block2", "block3"]


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 4, in_channels: int = 3):
        super().__init__()
        self.stem = Block(in_channels, 8, 1)
        self.block1 = Block(8, 16, 2)
        self.block2 = Block(16, 16, 2)
        self.block3 = Block(16, 32, 2)
        self.linear = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def factory(num_classes: int) -> nn.Module:
    return TinyNet(num_classes)


def grey_factory(num_classes: int) -> nn.Module:
    """TinyNet for single-channel input (any size: it pools globally before its head)."""
    return TinyNet(num_classes, in_channels=1)


def synthetic_images(label: int, n: int, rng: np.random.Generator, size: tuple[int, int] = (32, 32),
                     channels: int = 3) -> np.ndarray:
    """n uint8 images H x W x channels of class `label`: a blob of the label's colour (or grey level) in the label's
    quadrant, on noise (proportions and random draws of the original 32x32 RGB folder, whatever the size)."""
    colours = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220], [200, 200, 40]], dtype=np.float64)
    if channels == 1:
        colours = np.array([[230], [30], [180], [80]], dtype=np.float64)
    h, w = size
    bh, bw = h * 12 // 32, w * 12 // 32
    imgs = rng.normal(110, 40, size=(n, h, w, channels))
    for i in range(n):
        y = (label // 2) * (h * 14 // 32) + rng.integers(0, h * 6 // 32)
        x = (label % 2) * (w * 14 // 32) + rng.integers(0, w * 6 // 32)
        imgs[i, y:y + bh, x:x + bw] = colours[label] + rng.normal(0, 30, size=(bh, bw, channels))
    return np.clip(imgs, 0, 255).astype(np.uint8)


def write_folder(root: Path, train_per_class: int = 80, test_per_class: int = 120, seed: int = 0,
                 size: tuple[int, int] = (32, 32), channels: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for label in range(4):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(synthetic_images(label, n, rng, size, channels)):
                Image.fromarray(img[..., 0] if channels == 1 else img).save(folder / f"{i:04d}.png")
    return root


def train_tiny(data_root: Path, out: Path, epochs: int = 3, seed: int = 0, channels: int = 3) -> Path:
    """A quickly trained TinyNet checkpoint (reasonable, not perfect, accuracy) for the folder's own input."""
    from gati.data import load_split, preprocess_for
    torch.manual_seed(seed)
    data = load_split("imagefolder", data_root, "train")
    x, y = preprocess_for("imagefolder", data_root)(data.images), torch.as_tensor(data.labels)
    model = TinyNet(4, in_channels=channels)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(model.eval().state_dict(), out)
    return out
