"""A client's Request -> the model's input: decode, check, and bring it to the model as the manifest's `Preprocess`
says (channels converted, resized, normalised).

A request carries exactly one of:
- `image`: the bytes of one image file in a common format (PNG, JPEG, BMP, GIF, WebP, TIFF), of any size and colour
  mode; greyscale images decode to 1 channel, the others to RGB (see `gati.preprocess.image_pixels`);
- `tensor` uint8 H x W x C (or 1 x H x W x C), C = 1 or 3, any H x W: raw pixels, preprocessed here;
- `tensor` float32 C x H x W (or 1 x C x H x W) of exactly the model's input shape: already preprocessed.
Batch size is 1. The result is a numpy array: checking and preprocessing need no torch (the aggregator, which only
checks requests and forwards them, never imports it). An image's declared size is checked against `max_pixels`
before its pixels are decoded, so a small file that declares a huge image (a decompression bomb) costs nothing.
Anything else is `InvalidInput` with a message naming what is wrong.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from gati.errors import InvalidInput
from gati.preprocess import Preprocess, image_pixels
from gati.rpc.gen.gati_idl.ttypes import Request
from gati.rpc.tensors import from_tensor

# The formats decoded; others (e.g. EPS, which Pillow renders with Ghostscript) are refused unopened.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
# 4096 x 4096: 48 MiB of RGB pixels at most per request, far above any image a classifier of this size needs.
MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class InputSpec:
    preprocess: Preprocess        # the model's input and how pixels are brought to it
    max_bytes: int                # largest image payload accepted
    max_pixels: int = MAX_PIXELS  # largest image (H x W) accepted, encoded or raw

    @property
    def shape(self) -> tuple[int, int, int]:
        """C x H x W, the model's input."""
        return self.preprocess.input_shape

    def decode(self, request: Request) -> np.ndarray:
        """1 x C x H x W float32, ready for the first stage."""
        if (request.image is None) == (request.tensor is None):
            raise InvalidInput("a request carries exactly one of `image` (encoded bytes) or `tensor`")
        if request.image is not None:
            return self.preprocess.array(self._image(request.image))
        array = from_tensor(request.tensor, "request tensor")
        if array.size == 0:
            raise InvalidInput(f"request tensor is empty (shape {array.shape})")
        if array.dtype == np.uint8:
            return self.preprocess.array(self._pixels(array))
        if array.dtype == np.float32:
            x = self._batch_of_one(array, self.shape, "float32 C x H x W").copy()  # writable: the request's is not
            if not np.isfinite(x).all():
                raise InvalidInput("request tensor contains NaN or infinite values")
            return x
        raise InvalidInput(f"request tensor dtype must be uint8 (pixels) or float32 (normalised), got {array.dtype}")

    def _image(self, data: bytes) -> np.ndarray:
        """1 x H x W x C uint8 pixels of an encoded image, its declared size checked before decoding."""
        if not data:
            raise InvalidInput("request image is empty (0 bytes)")
        if len(data) > self.max_bytes:
            raise InvalidInput(f"request image of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes")
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
        except Image.DecompressionBombError as e:  # Pillow's own, far higher, limit
            raise InvalidInput(f"image declares too many pixels: {e}") from e
        except (UnidentifiedImageError, OSError) as e:
            raise InvalidInput(f"image bytes cannot be decoded (formats accepted: {', '.join(IMAGE_FORMATS)}): "
                               f"{e}") from e
        self._check_size(img.height, img.width, "image")
        try:
            pixels = image_pixels(img)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # truncated or corrupt data
            raise InvalidInput(f"image bytes cannot be decoded: {e}") from e
        return pixels[None]

    def _pixels(self, array: np.ndarray) -> np.ndarray:
        """1 x H x W x C of a uint8 H x W x C (or 1 x H x W x C) tensor."""
        if array.ndim == 4 and array.shape[0] != 1 and array.shape[3] in (1, 3):
            raise InvalidInput(f"batch size must be 1, got {array.shape[0]}: send one request per image")
        one = array[0] if array.ndim == 4 else array
        if one.ndim != 3 or one.shape[2] not in (1, 3):
            raise InvalidInput(f"request tensor must be uint8 H x W x C pixels with C = 1 or 3 (optionally with a "
                               f"leading 1), got {array.shape}")
        self._check_size(one.shape[0], one.shape[1], "pixel tensor")
        return one[None]

    def _check_size(self, height: int, width: int, what: str) -> None:
        if height * width > self.max_pixels:
            raise InvalidInput(f"{what} of {height}x{width} (HxW) pixels exceeds the limit of {self.max_pixels} "
                               "pixels")

    def _batch_of_one(self, array: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
        if array.shape == shape:
            return array[None]
        if array.shape == (1, *shape):
            return array
        if array.ndim == len(shape) + 1 and array.shape[1:] == shape:
            raise InvalidInput(f"batch size must be 1, got {array.shape[0]}: send one request per image")
        raise InvalidInput(f"request tensor must be {what} = {shape} (optionally with a leading 1), "
                           f"got {array.shape}")
