"""The Python API: a bundle loaded for prediction in this process (`gati.load`).

The answers are the in-process engine's, which the cluster answers too (tested): the same
decoding and preprocessing as the aggregator (gati.rpc.inputs), then the cascade.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from gati.bundle import Bundle, load_bundle
from gati.rpc.gen.gati_idl.ttypes import Request
from gati.rpc.inputs import InputSpec
from gati.rpc.tensors import to_tensor
from gati.runtime.engine import Engine

MAX_IMAGE_BYTES = 64 * 1024 * 1024

# A path to an image file, its encoded bytes, a PIL image, uint8 H x W x 3 pixels (or float32
# C x H x W, normalised), or a preprocessed float tensor.
ImageLike = Union[str, Path, bytes, Image.Image, np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class Prediction:
    label: int
    class_name: str
    confidence: float
    exit_name: str          # the cut whose cache answered, or "final" (the full model)
    exit_cut: int | None    # that cut's index; None for the full model
    stages_run: int


class Model:
    def __init__(self, bundle: Bundle, mode: str | None = None):
        self.bundle = bundle
        self.engine = Engine(bundle, mode)
        self._inputs = InputSpec(bundle.preprocess, MAX_IMAGE_BYTES)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", mode: str | None = None) -> "Model":
        return cls(load_bundle(path, device), mode)

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    def predict(self, image: ImageLike) -> Prediction:
        a = self.engine.predict(self._tensor(image))
        name = self.classes[a.label] if 0 <= a.label < len(self.classes) else str(a.label)
        return Prediction(a.label, name, a.confidence, a.exit_name, a.exit_cut, a.stages_run)

    def _tensor(self, image: ImageLike) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image  # preprocessed: the engine checks shape, dtype and values
        if isinstance(image, (str, Path)):
            image = Path(image).read_bytes()
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        request = Request(image=image) if isinstance(image, bytes) else Request(tensor=to_tensor(image))
        return torch.from_numpy(self._inputs.decode(request))

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
