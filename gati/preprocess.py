"""Preprocessing: how pixels become the model's input, held as data that a bundle's manifest records.

`Preprocess` knows what the model takes: a channel count (1 or 3), a size H x W and a mean and std per channel.
Called on uint8 pixels N x H x W x C (C = 1 or 3, any H x W) it returns float32 N x channels x H' x W':

1. channels: greyscale -> RGB repeats the value; RGB -> greyscale is PIL's luma (ITU-R 601-2, in PIL's own
   fixed-point rounding), so an array converts exactly as `Image.convert("L")` would convert the image;
2. scale: x / 255;
3. resize, only when the size differs from the model's: PIL's BILINEAR filter (antialiased when shrinking) on
   each channel's float values, so nothing is rounded twice; torch's `antialias=True`, which resized before
   2026-12-07, follows the same filter and gives the same values to within 2e-6;
4. normalise: (x - mean) / std per channel.

Numpy and PIL do every step, so the serving front door, which only checks inputs and forwards them, never imports
torch; `__call__` hands the result to torch for the model.

`image_pixels` turns an opened image file into such pixels (1 channel for greyscale modes, RGB for every other
mode); data sets and the serving front door both decode through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from gati.errors import GatiError, InvalidInput

if TYPE_CHECKING:
    import torch

RESIZE_MODES: tuple[str, ...] = ("bilinear",)
# Manifests written before the size was recorded hold only mean and std: their models took 32 x 32 RGB.
LEGACY_SIZE = (32, 32)
# Pillow modes that hold one grey value per pixel (with or without alpha); every other mode is decoded as RGB.
_GREYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


@dataclass(frozen=True)
class Preprocess:
    """What the model takes and how pixels are brought to it (see the module docstring for the steps)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] = LEGACY_SIZE  # H x W
    resize: str = "bilinear"

    def __post_init__(self) -> None:
        try:  # lists (YAML, argparse) and numpy scalars become the plain tuples that compare and hash
            object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
            object.__setattr__(self, "std", tuple(float(s) for s in self.std))
            object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        except (TypeError, ValueError) as exc:
            raise GatiError(f"preprocessing values must be numbers: {exc}") from exc
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise GatiError(f"preprocessing needs one mean and one std per channel, for 1 or 3 channels; "
                            f"got mean {list(self.mean)} and std {list(self.std)}")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(s) and s > 0 for s in self.std):
            raise GatiError(f"preprocessing mean must be finite and std positive; got mean {list(self.mean)} "
                            f"and std {list(self.std)}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise GatiError(f"input size must be two positive integers H x W, got {self.size}")
        if self.resize not in RESIZE_MODES:
            raise GatiError(f"unknown resize {self.resize!r}; known: {', '.join(RESIZE_MODES)}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """C x H x W of one model input."""
        return (self.channels, *self.size)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """uint8 N x H x W x C (C = 1 or 3, any H x W) -> float32 N x channels x size[0] x size[1], as a tensor."""
        import torch
        return torch.from_numpy(self.array(images))

    def array(self, images: np.ndarray) -> np.ndarray:
        """The same as a numpy array, without torch."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                or images.shape[-1] not in (1, 3) or 0 in images.shape[1:3]:
            shape = getattr(images, "shape", None)
            raise InvalidInput(f"expected uint8 images of shape N x H x W x C with C = 1 or 3, got "
                               f"{type(images).__name__} {getattr(images, 'dtype', '')} {shape}")
        # float32 throughout, one IEEE operation per value and step: resizing aside, the values torch computed
        # before 2026-12-07, bit for bit (tests/test_preprocess.py checks every pixel value), so stored
        # calibration scores still apply
        x = to_channels(images, self.channels).transpose(0, 3, 1, 2).astype(np.float32, order="C")
        x /= np.float32(255.0)  # in place: a 4096 x 4096 request holds one float copy of its pixels, not two
        if tuple(x.shape[2:]) != self.size:
            x = _bilinear(x, self.size)  # the only mode in RESIZE_MODES
        mean, std = self._columns
        x -= mean  # in place, like the division: x is this call's own C-ordered copy
        x /= std
        return x

    @cached_property
    def _columns(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std as float32 1 x C x 1 x 1, made once rather than per request."""
        return tuple(np.asarray(v, dtype=np.float32).reshape(1, -1, 1, 1) for v in (self.mean, self.std))

    def to_dict(self) -> dict:
        return {"channels": self.channels, "size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize}

    @classmethod
    def from_dict(cls, entry: dict) -> "Preprocess":
        """A manifest's `preprocess` entry; one with only mean and std (older bundles) was 32 x 32."""
        try:
            pre = cls(entry["mean"], entry["std"], entry.get("size", LEGACY_SIZE), entry.get("resize", "bilinear"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise GatiError(f"preprocess entry {entry!r} is malformed ({type(exc).__name__}: {exc})") from exc
        if int(entry.get("channels", pre.channels)) != pre.channels:
            raise GatiError(f"preprocess entry says {entry['channels']} channels but gives {pre.channels} means")
        return pre


def _bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 N x C x H x W resized to `size` (H x W), one channel at a time as a PIL float image (mode "F")."""
    out = np.empty((*x.shape[:2], *size), dtype=np.float32)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            channel = Image.fromarray(np.ascontiguousarray(x[n, c]))
            out[n, c] = np.asarray(channel.resize(size[::-1], Image.BILINEAR))
    return out


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ... x C pixels with `channels` channels, converted as PIL converts "L" <-> "RGB"."""
    if images.shape[-1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    rgb = images.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16  # Pillow's L24
    return luma.astype(np.uint8)[..., None]


def image_pixels(img: Image.Image) -> np.ndarray:
    """uint8 H x W x C pixels of an opened image: C = 1 for greyscale modes, 3 (RGB, alpha dropped) otherwise."""
    grey = img.mode in _GREYSCALE_MODES
    pixels = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.uint8)
    return pixels.reshape(img.height, img.width, 1 if grey else 3)
