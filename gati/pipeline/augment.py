"""Augmented distillation images: more inputs for the caches to learn the base model's answers on.

A cache learns what the base model answers, not the true label, so any input is a training example: its
teacher is the base model's logits on it. The cheapest new inputs are the training images moved the way the base
models were trained to ignore (../shared/README.md): a random crop of the image padded by reflection (a shift
of up to `pad` pixels per axis) and, for photos, a horizontal flip with probability 1/2. A spectrogram is shifted
in time only (its rows) and never flipped: its columns are frequencies.

`augmented(train, copies, seed)` is the split followed by `copies` augmented copies of every image, each copy
drawn afresh from one seeded generator (same arguments, same images); ids get a `#aug<k>` suffix, so that no
augmented image is mistaken for one the split holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gati.data import Dataset
from gati.errors import InvalidInput


@dataclass(frozen=True)
class Recipe:
    pad_rows: int  # largest shift along the image's height, in pixels
    pad_cols: int  # along its width
    flip: bool     # a horizontal flip with probability 1/2


PHOTO = Recipe(4, 4, True)          # the CIFAR models' training crop and flip
RECIPES = {"speechcommands": Recipe(8, 0, False)}  # the speech model's time shift of up to 8 frames


def recipe_for(dataset: str) -> Recipe:
    return RECIPES.get(dataset, PHOTO)


def shifted_and_flipped(images: np.ndarray, recipe: Recipe, rng: np.random.Generator) -> np.ndarray:
    """Each uint8 N x H x W x C image cropped from its reflection-padded self at a random offset (and flipped)."""
    n, h, w, _ = images.shape
    pr, pc = recipe.pad_rows, recipe.pad_cols
    if pr >= h or pc >= w:
        raise InvalidInput(f"a shift of {pr}x{pc} pixels does not fit {h}x{w} images")
    padded = np.pad(images, ((0, 0), (pr, pr), (pc, pc), (0, 0)), mode="reflect")
    dy, dx = rng.integers(0, 2 * pr + 1, n), rng.integers(0, 2 * pc + 1, n)
    out = np.empty_like(images)
    for oy in range(2 * pr + 1):  # one slice per offset: (2 pad + 1)^2 vectorised copies, not N
        for ox in range(2 * pc + 1):
            rows = np.flatnonzero((dy == oy) & (dx == ox))
            out[rows] = padded[rows, oy:oy + h, ox:ox + w]
    if recipe.flip:
        rows = np.flatnonzero(rng.random(n) < 0.5)
        out[rows] = out[rows, :, ::-1]
    return out


def augmented(train: Dataset, copies: int, seed: int, recipe: Recipe | None = None) -> Dataset:
    """`train` and `copies` augmented copies of it (see the module docstring); copies=0 returns `train` itself."""
    if copies < 0:
        raise InvalidInput(f"augmented copies must be >= 0, got {copies}")
    if copies == 0:
        return train
    recipe = recipe or recipe_for(train.name)
    rng = np.random.default_rng([seed, 0xA06])
    images = [train.images] + [shifted_and_flipped(train.images, recipe, rng) for _ in range(copies)]
    ids = list(train.ids) + [f"{i}#aug{k}" for k in range(1, copies + 1) for i in train.ids]
    return Dataset(train.name, train.split, np.concatenate(images), np.tile(train.labels, copies + 1), ids,
                   train.classes)
