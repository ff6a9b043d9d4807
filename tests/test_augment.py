"""Augmented distillation images (gati/pipeline/augment.py): deterministic, the split first, every copy a shifted
(and for photos possibly flipped) window of its reflection-padded original, spectrograms shifted in time only."""
from __future__ import annotations

import numpy as np
import pytest

from gati.data import Dataset
from gati.errors import InvalidInput
from gati.pipeline.augment import PHOTO, Recipe, augmented, recipe_for


def split(name: str, shape: tuple[int, int, int], n: int = 40) -> Dataset:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return Dataset(name, "train", images, rng.integers(0, 3, n), [f"train/{i}.jpg" for i in range(n)], ["a", "b", "c"])


def windows(image: np.ndarray, recipe: Recipe) -> list[np.ndarray]:
    """Every crop (and flip) the recipe can make of one image."""
    pr, pc = recipe.pad_rows, recipe.pad_cols
    padded = np.pad(image, ((pr, pr), (pc, pc), (0, 0)), mode="reflect")
    h, w = image.shape[:2]
    crops = [padded[y:y + h, x:x + w] for y in range(2 * pr + 1) for x in range(2 * pc + 1)]
    return crops + ([c[:, ::-1] for c in crops] if recipe.flip else [])


def test_the_split_comes_first_then_each_copy_with_its_labels_and_marked_ids():
    train = split("cifar10", (32, 32, 3))
    out = augmented(train, 2, seed=0)
    assert len(out) == 3 * len(train) and np.array_equal(out.images[:40], train.images)
    assert list(out.labels) == list(train.labels) * 3
    assert out.ids[:40] == train.ids and out.ids[40] == "train/0.jpg#aug1" and out.ids[80] == "train/0.jpg#aug2"
    assert augmented(train, 0, seed=0) is train


def test_copies_are_deterministic_and_windows_of_the_padded_original():
    train = split("cifar10", (32, 32, 3))
    a, b = augmented(train, 1, seed=3), augmented(train, 1, seed=3)
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, augmented(train, 1, seed=4).images)
    moved = 0
    for i in range(len(train)):
        copy = a.images[40 + i]
        assert any(np.array_equal(copy, w) for w in windows(train.images[i], PHOTO))
        moved += not np.array_equal(copy, train.images[i])
    assert moved > 30  # the unshifted, unflipped window is 1 of 162


def test_spectrograms_shift_in_time_only_and_never_flip():
    train = split("speechcommands", (98, 40, 1))
    recipe = recipe_for("speechcommands")
    assert recipe.pad_cols == 0 and not recipe.flip
    out = augmented(train, 1, seed=0)
    for i in range(len(train)):
        assert any(np.array_equal(out.images[40 + i], w) for w in windows(train.images[i], recipe))


def test_a_shift_larger_than_the_image_is_refused():
    with pytest.raises(InvalidInput, match="does not fit"):
        augmented(split("cifar10", (4, 4, 3)), 1, seed=0)
    with pytest.raises(InvalidInput, match=">= 0"):
        augmented(split("cifar10", (32, 32, 3)), -1, seed=0)


def test_a_build_with_augmented_copies_fits_on_them_and_says_so(tiny_data, tmp_path):
    from gati.bundle import read_manifest
    from gati.pipeline.build import BuildConfig, build
    from tests.tinynet import CUTS
    data, checkpoint = tiny_data
    build(BuildConfig(checkpoint=checkpoint, dataset="imagefolder", data_dir=data, out=tmp_path / "b",
                      model_module="tests.tinynet:factory", cuts=CUTS, target=0.9, variants=["linear"],
                      train_limit=80, augment=2, calib_limit=120))
    train = read_manifest(tmp_path / "b").train
    assert (train.limit, train.augment, train.n) == (80, 2, 240)
