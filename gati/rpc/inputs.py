"""A client's Request -> the model's input: decode, check, preprocess with the bundle's mean/std.

A request carries exactly one of:
- `image`: PNG/JPEG (any format Pillow reads) bytes of one H x W RGB image (greyscale is converted);
- `tensor` uint8 H x W x 3 (or 1 x H x W x 3): raw pixels, preprocessed here;
- `tensor` float32 3 x H x W (or 1 x 3 x H x W): already normalised.
Batch size is 1. Anything else is `InvalidInput` with a message naming what is wrong.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gati.data import Preprocess
from gati.errors import InvalidInput
from gati.rpc.gen.gati_idl.ttypes import Request
from gati.rpc.tensors import from_tensor


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, int, int]   # C x H x W, the model's input
    preprocess: Preprocess
    max_bytes: int                # largest image payload accepted

    def decode(self, request: Request) -> torch.Tensor:
        """1 x C x H x W float32, ready for the first stage."""
        if (request.image is None) == (request.tensor is None):
            raise InvalidInput("a request carries exactly one of `image` (encoded bytes) or `tensor`")
        if request.image is not None:
            return self._pixels(self._image(request.image))
        array = from_tensor(request.tensor, "request tensor")
        if array.size == 0:
            raise InvalidInput(f"request tensor is empty (shape {array.shape})")
        if array.dtype == np.uint8:
            return self._pixels(self._batch_of_one(array, (*self.shape[1:], self.shape[0]), "uint8 H x W x C"))
        if array.dtype == np.float32:
            x = torch.from_numpy(self._batch_of_one(array, self.shape, "float32 C x H x W").copy())
            if not torch.isfinite(x).all():
                raise InvalidInput("request tensor contains NaN or infinite values")
            return x
        raise InvalidInput(f"request tensor dtype must be uint8 (pixels) or float32 (normalised), got {array.dtype}")

    def _image(self, data: bytes) -> np.ndarray:
        if not data:
            raise InvalidInput("request image is empty (0 bytes)")
        if len(data) > self.max_bytes:
            raise InvalidInput(f"request image of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes")
        try:
            img = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError) as e:
            raise InvalidInput(f"image bytes cannot be decoded: {e}") from e
        # Check the size before decoding: a small file may declare a huge image.
        want = (self.shape[2], self.shape[1])
        if img.size != want:
            raise InvalidInput(f"image is {img.size[0]}x{img.size[1]} pixels, the model takes {want[0]}x{want[1]}")
        try:
            pixels = np.asarray(img.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt pixel data
            raise InvalidInput(f"image bytes cannot be decoded: {e}") from e
        return pixels[None]

    def _batch_of_one(self, array: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
        if array.shape == shape:
            return array[None]
        if array.shape == (1, *shape):
            return array
        if array.ndim == len(shape) + 1 and array.shape[1:] == shape:
            raise InvalidInput(f"batch size must be 1, got {array.shape[0]}: send one request per image")
        raise InvalidInput(f"request tensor must be {what} = {shape} (optionally with a leading 1), "
                           f"got {array.shape}")

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        return self.preprocess(images)
