"""Image perturbations for request streams: what consecutive video frames differ by, and CIFAR-10-C corruptions.

Every function takes one uint8 image H x W x C (C = 1 or 3, any H and W: RGB photos, single-channel
spectrograms) and a seeded `np.random.Generator`, and returns a new uint8 image of the same shape; the
input is never modified. Arithmetic is in [0, 1] floats, rounded back to uint8 at the end.

`frame_jitter`: the differences between consecutive frames of a camera watching a scene, scaled by one
`strength` (0 = an exact copy): a shift of up to 6% of the shorter side per axis (2 pixels at 32x32,
edges repeated), brightness +-8% of the range, contrast x(1 +- 10%) around the per-channel mean, Gaussian
sensor noise with a standard deviation up to 1.5% of the range, and a JPEG re-encode at a quality between
95 and 75; a horizontal flip with probability `flip` (not scaled: set it to 0 where a flip changes the
meaning, e.g. a spectrogram's frequency axis).

`corrupt`: one of four CIFAR-10-C corruptions (Hendrycks and Dietterich, ICLR 2019) at severity 1-5 with
their published CIFAR constants: `noise` (Gaussian, std 0.04-0.10), `blur` (Gaussian, sigma 0.4-1.0 pixels
at 32x32, scaled with the shorter side), `brightness` (+0.05-0.3 on the HSV value, hue and saturation kept),
`contrast` (deviations from the per-channel mean times 0.75-0.15). Severity 0 returns an unchanged copy.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from gati.errors import WorkloadError

CORRUPTIONS: tuple[str, ...] = ("noise", "blur", "brightness", "contrast")
MAX_SEVERITY = 5

# CIFAR-10-C's constants per severity 1..5 (its make_cifar_c.py).
_NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)  # pixels of a 32x32 image
_BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
_REFERENCE_SIDE = 32  # the image size those constants were chosen for

# Frame jitter at strength 1.
_SHIFT_FRACTION = 0.06
_BRIGHTNESS_JITTER = 0.08
_CONTRAST_JITTER = 0.10
_NOISE_JITTER = 0.015
_JPEG_BEST, _JPEG_WORST = 95, 75


def frame_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0,
                 flip: float = 0.0) -> np.ndarray:
    """`image` as the next frame of a video might show it (see the module docstring); strength 0 and flip 0: a copy."""
    x = _to_unit(image)
    if rng.random() < flip:
        x = x[:, ::-1]
    if strength > 0:
        x = _shift(x, rng, max(1, round(_SHIFT_FRACTION * strength * min(x.shape[:2]))))
        x = _scale_contrast(x, 1.0 + _CONTRAST_JITTER * strength * rng.uniform(-1, 1))
        x = x + _BRIGHTNESS_JITTER * strength * rng.uniform(-1, 1)
        x = x + rng.normal(scale=_NOISE_JITTER * strength * rng.random(), size=x.shape)
        quality = round(_JPEG_BEST - (_JPEG_BEST - _JPEG_WORST) * min(strength, 1.0) * rng.random())
        return _jpeg(_to_uint8(x), quality)
    return _to_uint8(x)


def corrupt(image: np.ndarray, kind: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """`image` with CIFAR-10-C corruption `kind` at `severity` (0 = none, 1-5 = CIFAR-10-C's levels)."""
    if kind not in CORRUPTIONS:
        raise WorkloadError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
    if not 0 <= severity <= MAX_SEVERITY:
        raise WorkloadError(f"severity must be 0..{MAX_SEVERITY}, got {severity}")
    if severity == 0:
        return image.copy()
    level = severity - 1
    if kind == "blur":
        sigma = _BLUR_SIGMA[level] * min(image.shape[:2]) / _REFERENCE_SIDE
        return _from_pil(_to_pil(image).filter(ImageFilter.GaussianBlur(radius=sigma)), image.shape)
    x = _to_unit(image)
    if kind == "noise":
        x = x + rng.normal(scale=_NOISE_STD[level], size=x.shape)
    elif kind == "brightness":
        x = _raise_value(x, _BRIGHTNESS[level])
    else:
        x = _scale_contrast(x, _CONTRAST[level])
    return _to_uint8(x)


def _to_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0], "L") if image.shape[-1] == 1 else Image.fromarray(image, "RGB")


def _from_pil(img: Image.Image, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8).reshape(shape)


def _shift(x: np.ndarray, rng: np.random.Generator, most: int) -> np.ndarray:
    """A window of the image moved by up to `most` pixels per axis, the edge pixels repeated where it runs off."""
    dy, dx = rng.integers(-most, most + 1, size=2)
    padded = np.pad(x, ((most, most), (most, most), (0, 0)), mode="edge")
    h, w = x.shape[:2]
    return padded[most + dy:most + dy + h, most + dx:most + dx + w]


def _scale_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * factor + means


def _raise_value(x: np.ndarray, amount: float) -> np.ndarray:
    """Add `amount` to the HSV value (the largest channel) and scale the channels with it: hue and saturation stay.

    A black pixel has no hue; it becomes the grey of its new value, as an HSV round trip makes it.
    """
    x = np.clip(x, 0.0, 1.0)
    value = x.max(axis=-1, keepdims=True)
    new_value = np.minimum(value + amount, 1.0)
    ratio = np.divide(new_value, value, out=np.zeros_like(value), where=value > 0)
    return np.where(value > 0, x * ratio, new_value)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    pil = _to_pil(image)
    pil.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as img:
        return _from_pil(img.convert(pil.mode), image.shape)
