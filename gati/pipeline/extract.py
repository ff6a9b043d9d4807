"""Extraction: one pass of the base model over a data split, keeping each cut's activation only in
the reduced (pooled) forms the caches read, plus the final logits (the caches' teacher)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gati.cache import make_cache, make_reducer, reduced_shape
from gati.data import Dataset
from gati.errors import GatiError
from gati.models.split import StagedModel
from gati.preprocess import Preprocess

log = logging.getLogger("gati.pipeline.extract")

FeatureKey = tuple[int, str]  # (cut, reducer key): one stored reduced activation, shared by every variant reading it

MAX_FEATURE_FLOATS = 16384  # larger reduced activations are not worth storing for tens of thousands of images


def extraction_batch(device: str) -> int:
    """Images per forward pass while extracting activations.

    On a CPU small batches were fastest (most likely because a small batch's activations stay in the
    processor's caches; the measurement is in README.md, "Where the design changed"). A GPU wants big batches.
    """
    return 256 if str(device).startswith("cuda") else 16


def activation_shapes(staged: StagedModel, input_shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Per-sample activation shape at each cut (C, H, W), for model inputs of `input_shape` (C, H, W)."""
    x = torch.zeros(1, *input_shape, device=next(staged.parameters()).device)
    shapes = []
    with torch.inference_mode():
        for stage in staged.stages[:-1]:
            x = stage(x)
            if x.dim() != 4:
                raise GatiError(f"cut activations must be N x C x H x W feature maps, got shape {tuple(x.shape)}")
            shapes.append(tuple(x.shape[1:]))
    return shapes


def wanted_reducers(act_shapes, variants: list[str], num_classes: int) -> dict[int, dict[str, str]]:
    """cut -> {variant: reducer key}, skipping variants whose input is too large to store."""
    wanted: dict[int, dict[str, str]] = {}
    for cut, shape in enumerate(act_shapes):
        for variant in variants:
            key = make_cache(variant, shape, num_classes).reducer_key
            if int(np.prod(reduced_shape(key, shape))) <= MAX_FEATURE_FLOATS:
                wanted.setdefault(cut, {})[variant] = key
            else:
                log.info("cut %d: skipping %s (reduced input %s too large)", cut, variant,
                         reduced_shape(key, shape))
    return wanted


def extract(staged: StagedModel, data: Dataset, pre: Preprocess, wanted: dict[int, dict[str, str]],
            device: str, batch_size: int, desc: str, spill: Path | None = None
            ) -> tuple[dict[FeatureKey, torch.Tensor], torch.Tensor]:
    """One pass of the base model: reduced activations per (cut, reducer key), and final logits.

    Reduced features of the training set are stored as float16 (halves memory; caches fit in
    float32); calibration features stay float32 because they must score exactly like serving.
    With `spill` (a folder) the features live in files there, mapped into memory: the operating system
    keeps what fits in memory and writes the rest out (ResNet-50's features of 50,000 training images
    for all five variants are 16.9 GB, more than a 24 GB machine can hold beside the fitting).
    """
    keys_at = {cut: sorted(set(vs.values())) for cut, vs in wanted.items()}  # distinct reducers per cut
    reducers = {key: make_reducer(key) for keys in keys_at.values() for key in keys}
    store = torch.float16 if desc == "train" else torch.float32
    # Filled in place: concatenating per-batch pieces at the end would briefly need twice the memory
    # (11.6 GB of ResNet-50 features for 50,000 training images).
    out: dict = {}  # (cut, reducer key) -> features, and "logits"
    with torch.inference_mode():
        for start in tqdm(range(0, len(data), batch_size), desc=f"extract {desc}", unit="batch",
                          leave=False):
            x = pre(data.images[start:start + batch_size]).to(device)
            rows = slice(start, start + len(x))
            for cut, stage in enumerate(staged.stages):
                x = stage(x)
                for key in keys_at.get(cut, ()):
                    _fill(out, (cut, key), rows, reducers[key](x), store, len(data), spill)
            _fill(out, "logits", rows, x, torch.float32, len(data), None)
    logits = out.pop("logits")
    return out, logits


def _fill(out: dict, key, rows: slice, value: torch.Tensor, dtype: torch.dtype, n: int,
          spill: Path | None) -> None:
    """Write `value` into rows of out[key], allocating all n rows on first use (in a file under `spill`)."""
    if key not in out:
        shape = (n, *value.shape[1:])
        if spill is None:
            out[key] = torch.empty(shape, dtype=dtype)
        else:
            cut, reducer = key
            numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype
            out[key] = torch.from_numpy(np.memmap(spill / f"{cut}-{reducer}.bin", numpy_dtype, "w+", shape=shape))
    out[key][rows] = value.to("cpu", dtype)


