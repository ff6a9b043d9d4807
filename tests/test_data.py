"""Data sets and splits: the split rule on the shared CIFAR-10, image folders and archives built here, the cache."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gati.data import (
    Preprocess,
    class_balanced_subset,
    ids_hash,
    load_split,
    preprocess_for,
)
from gati.errors import DatasetError, InvalidInput

CLASSES = ["ant", "bee", "cow"]


def _write_folder(root: Path, per_class: dict[str, int], size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """A lossless (PNG) image folder with random pixels; returns {id: pixels} to compare against."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for split, n in per_class.items():
        for c in CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i:03d}.png")
                pixels[f"{split}/{c}/{i:03d}.png"] = img
    return pixels


def _tar(folder: Path, out: Path, top: str | None = "top") -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname=top or ".")
    return out


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("GATI_CACHE_DIR", str(path))
    return path


@pytest.fixture()
def folder(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "imgs"
    return root, _write_folder(root, {"train": 4, "test": 5})


# --- the split rule on the shared CIFAR-10 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar(shared_dir):
    data_dir = shared_dir / "data"
    return {split: load_split("cifar10", data_dir, split) for split in ("test", "test:calib", "test:eval")}


def test_calib_and_eval_partition_test(cifar):
    test, calib, ev = cifar["test"], cifar["test:calib"], cifar["test:eval"]
    assert (len(test), len(calib), len(ev)) == (10000, 5000, 5000)
    assert not set(calib.ids) & set(ev.ids)
    assert set(calib.ids) | set(ev.ids) == set(test.ids)
    assert np.bincount(calib.labels).tolist() == [500] * 10
    assert np.bincount(ev.labels).tolist() == [500] * 10
    assert test.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert test.images.shape == (10000, 32, 32, 3) and test.images.dtype == np.uint8
    assert test.labels.dtype == np.int64


def test_calib_is_even_positions_by_file_name(cifar):
    test = cifar["test"]
    for label, name in enumerate(test.classes):
        files = sorted(i for i, lab in zip(test.ids, test.labels) if lab == label)
        assert all(f.startswith(f"test/{name}/") for f in files)
        calib = [i for i, lab in zip(cifar["test:calib"].ids, cifar["test:calib"].labels) if lab == label]
        evals = [i for i, lab in zip(cifar["test:eval"].ids, cifar["test:eval"].labels) if lab == label]
        assert calib == files[0::2] and evals == files[1::2]


def test_split_rows_carry_their_own_pixels(cifar):
    row_of = {i: r for r, i in enumerate(cifar["test"].ids)}
    ev = cifar["test:eval"]
    rows = [row_of[i] for i in ev.ids]
    assert np.array_equal(cifar["test"].images[rows], ev.images)
    assert np.array_equal(cifar["test"].labels[rows], ev.labels)


def test_second_load_comes_from_the_cache_fast(shared_dir, cifar):
    start = time.perf_counter()
    again = load_split("cifar10", shared_dir / "data", "test")
    assert time.perf_counter() - start < 1.0
    assert np.array_equal(again.images, cifar["test"].images) and again.ids == cifar["test"].ids


def test_limit_is_balanced_and_inside_the_split(shared_dir, cifar):
    sub = load_split("cifar10", shared_dir / "data", "test:eval", limit=200, seed=3)
    assert np.bincount(sub.labels).tolist() == [20] * 10
    assert set(sub.ids) <= set(cifar["test:eval"].ids)
    assert load_split("cifar10", shared_dir / "data", "test:eval", limit=200, seed=3).ids == sub.ids


def test_tinyimagenet_readable_names_and_wnid_order(shared_dir):
    ds = load_split("tinyimagenet100", shared_dir / "data", "test:calib", limit=100)
    assert len(ds.classes) == 100 and ds.classes[0] == "goldfish"
    assert np.bincount(ds.labels, minlength=100).tolist() == [1] * 100
    wnids = [i.split("/")[1] for i in ds.ids]
    assert wnids == sorted(wnids) and wnids[0] == "n01443537"


# --- ids, subsets, preprocessing --------------------------------------------------------------------------------------


def test_ids_hash_is_order_free_and_content_bound():
    ids = ["test/b/1.jpg", "test/a/2.jpg", "test/a/1.jpg"]
    expected = hashlib.sha256("test/a/1.jpg\ntest/a/2.jpg\ntest/b/1.jpg".encode()).hexdigest()
    assert ids_hash(ids) == ids_hash(list(reversed(ids))) == expected
    assert ids_hash(ids[:2]) != expected


def test_class_balanced_subset():
    labels = np.repeat(np.arange(4), [50, 50, 50, 2])
    idx = class_balanced_subset(labels, 41, seed=1)
    counts = np.bincount(labels[idx], minlength=4)
    assert counts.sum() == 41 and counts[3] == 2  # the small class gives its share away...
    assert counts[:3].max() - counts[:3].min() <= 1  # ...and the rest stay as equal as possible
    assert np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, class_balanced_subset(labels, 41, seed=1))
    assert not np.array_equal(idx, class_balanced_subset(labels, 41, seed=2))
    assert np.array_equal(class_balanced_subset(labels, 500, seed=0), np.arange(len(labels)))
    with pytest.raises(InvalidInput):
        class_balanced_subset(labels, 0, seed=0)


def test_preprocess_matches_manual_normalisation():
    pre = Preprocess(mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4), size=(5, 4))
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    out = pre(images)
    manual = (images.astype(np.float64) / 255 - np.array(pre.mean)) / np.array(pre.std)
    assert out.shape == (2, 3, 5, 4) and str(out.dtype) == "torch.float32"
    np.testing.assert_allclose(out.numpy(), manual.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInput, match="uint8"):
        pre(images.astype(np.float32))
    with pytest.raises(InvalidInput):
        pre(images[0])


def test_cifar_statistics_are_the_checkpoints(tmp_path):
    assert preprocess_for("cifar10", tmp_path) == Preprocess((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


# --- image folders and archives ----------------------------------------------------------------------------------


def test_imagefolder_folder_pixels_labels_and_split(folder, cache):
    root, pixels = folder
    test = load_split("imagefolder", root, "test")
    assert test.classes == CLASSES and len(test) == 15
    assert test.ids[:5] == [f"test/ant/{i:03d}.png" for i in range(5)]
    assert test.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert all(np.array_equal(img, pixels[i]) for img, i in zip(test.images, test.ids))
    calib = load_split("imagefolder", root, "test:calib")
    assert [i for i in calib.ids if "/ant/" in i] == ["test/ant/000.png", "test/ant/002.png", "test/ant/004.png"]
    assert len(load_split("imagefolder", root, "test:eval")) == 6
    assert len(load_split("imagefolder", root, "train")) == 12


def test_imagefolder_archive_equals_folder(folder, tmp_path, cache):
    root, _ = folder
    for top in ("top", None):
        archive = _tar(root, tmp_path / f"imgs-{top}.tar.gz", top)
        from_tar = load_split("imagefolder", tmp_path, "test:eval", path=archive)
        from_dir = load_split("imagefolder", root, "test:eval")
        assert from_tar.ids == from_dir.ids and from_tar.classes == from_dir.classes
        assert np.array_equal(from_tar.images, from_dir.images)
        assert np.array_equal(from_tar.labels, from_dir.labels)


def test_named_dataset_found_as_unpacked_folder(tmp_path, cache):
    _write_folder(tmp_path / "tinyimagenet100", {"train": 1, "test": 2})
    ds = load_split("tinyimagenet100", tmp_path, "test:calib")
    assert ds.ids == ["test/ant/000.png", "test/bee/000.png", "test/cow/000.png"]


def test_wrong_layouts_raise_dataset_error(tmp_path, cache):
    flat = tmp_path / "flat"
    (flat / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(flat / "train" / "x.png")
    with pytest.raises(DatasetError, match=r"no images under train/<class>/.*x\.png.*expected train/<class>"):
        load_split("imagefolder", flat, "train")
    with pytest.raises(DatasetError, match="no images under test/"):
        load_split("imagefolder", flat, "test")
    with pytest.raises(DatasetError, match="flat.tar.gz"):
        load_split("imagefolder", tmp_path, "train", path=_tar(flat, tmp_path / "flat.tar.gz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither a train/ nor a test/"):
        load_split("imagefolder", tmp_path / "empty", "test")
    with pytest.raises(DatasetError, match="neither a folder nor"):
        load_split("imagefolder", tmp_path / "absent", "test")
    with pytest.raises(DatasetError, match="no tinyimagenet100 data found"):
        load_split("tinyimagenet100", tmp_path / "empty", "test")


def test_mixed_sizes_and_bad_arguments(tmp_path, cache):
    _write_folder(tmp_path / "big", {"test": 1}, size=64)
    assert load_split("imagefolder", tmp_path / "big", "test").images.shape == (3, 64, 64, 3)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "big" / "test" / "cow" / "001.png")
    with pytest.raises(DatasetError, match=r"test/cow/001.png .* is 48x64 \(HxW\) but test/ant/000.png is 64x64: "
                                           "the images of a split must share one size"):
        load_split("imagefolder", tmp_path / "big", "test")
    with pytest.raises(DatasetError, match="unknown split"):
        load_split("imagefolder", tmp_path / "big", "validation")
    with pytest.raises(DatasetError, match="unknown data set"):
        load_split("mnist", tmp_path, "test")
    with pytest.raises(InvalidInput):
        load_split("imagefolder", tmp_path / "big", "test", limit=0)


def test_cache_round_trip_and_invalidation(folder, tmp_path, cache):
    root, _ = folder
    archive = _tar(root, tmp_path / "a.tar.gz")
    first = load_split("imagefolder", tmp_path, "test", limit=7, seed=5, path=archive)
    files = list((cache / "splits").glob("*.npz"))
    assert len(files) == 1
    second = load_split("imagefolder", tmp_path, "test", limit=7, seed=5, path=archive)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    assert (first.ids, first.classes, second.split) == (second.ids, second.classes, "test")
    assert second.labels.dtype == np.int64 and second.images.dtype == np.uint8
    files[0].write_bytes(b"damaged")  # a damaged cache file is rebuilt, not trusted
    assert load_split("imagefolder", tmp_path, "test", limit=7, seed=5, path=archive).ids == first.ids
    # New content under the same path (new mtime and size) must not be served from the old cache.
    _write_folder(root, {"test": 5}, seed=9)
    _tar(root, archive)
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_split("imagefolder", tmp_path, "test", limit=7, seed=5, path=archive)
    assert third.ids == first.ids and not np.array_equal(third.images, first.images)


def test_imagefolder_statistics_from_train_pixels(folder, cache):
    root, pixels = folder
    train = np.stack([p for i, p in pixels.items() if i.startswith("train/")]).reshape(-1, 3) / 255.0
    pre = preprocess_for("imagefolder", root)
    np.testing.assert_allclose(pre.mean, train.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(pre.std, train.std(axis=0), rtol=1e-9)
    assert len(list((cache / "stats").glob("*.json"))) == 1
    assert preprocess_for("imagefolder", root) == pre


def test_greyscale_folder_of_any_size_loads_as_one_channel(tmp_path, cache):
    rng = np.random.default_rng(1)
    pixels = {}
    for split, c, i in [(s, c, i) for s in ("train", "test") for c in CLASSES for i in range(2)]:
        (tmp_path / split / c).mkdir(parents=True, exist_ok=True)
        pixels[f"{split}/{c}/{i}.png"] = img = rng.integers(0, 256, (20, 14), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / split / c / f"{i}.png")
    test = load_split("imagefolder", tmp_path, "test")
    assert test.images.shape == (6, 20, 14, 1)
    assert all(np.array_equal(img[..., 0], pixels[i]) for img, i in zip(test.images, test.ids))
    train = np.stack([p for i, p in pixels.items() if i.startswith("train/")]) / 255.0
    pre = preprocess_for("imagefolder", tmp_path)
    assert pre.input_shape == (1, 20, 14)
    np.testing.assert_allclose(pre.mean, [train.mean()], rtol=1e-9)
    np.testing.assert_allclose(pre.std, [train.std()], rtol=1e-9)
    # One colour image among greyscale ones: the split loads as RGB, the greyscale ones repeated as PIL would.
    colour = rng.integers(0, 256, (20, 14, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "test" / "cow" / "2.png")
    mixed = load_split("imagefolder", tmp_path, "test")
    assert mixed.images.shape == (7, 20, 14, 3)
    assert np.array_equal(mixed.images[0], np.repeat(pixels["test/ant/0.png"][..., None], 3, axis=2))
    assert np.array_equal(mixed.images[-1], colour)


@pytest.fixture(scope="module")
def speech(shared_dir):
    return load_split("speechcommands", shared_dir / "data", "test")


def test_speech_commands_archive(shared_dir, speech):
    """The shared spectrograms: 98 time frames x 40 frequency bins, one channel, the data set's own test split."""
    assert speech.images.shape == (5552, 98, 40, 1) and speech.images.dtype == np.uint8
    assert speech.classes == ["_silence_", "_unknown_", "down", "go", "left", "no", "off", "on", "right", "stop",
                              "up", "yes"]
    assert np.bincount(speech.labels).tolist() == [91, 1387, 406, 402, 412, 405, 402, 396, 396, 411, 425, 419]
    img = _member_image(shared_dir / "data" / "speechcommands-spectrogram-jpg.tar.gz", speech.ids[0])
    assert (img.size, img.mode) == ((40, 98), "L")
    assert np.array_equal(np.asarray(img), speech.images[0, ..., 0])
    calib = load_split("speechcommands", shared_dir / "data", "test:calib")
    evals = load_split("speechcommands", shared_dir / "data", "test:eval")
    for label in range(len(speech.classes)):
        files = sorted(i for i, lab in zip(speech.ids, speech.labels) if lab == label)
        assert [i for i, lab in zip(calib.ids, calib.labels) if lab == label] == files[0::2]
        assert [i for i, lab in zip(evals.ids, evals.labels) if lab == label] == files[1::2]
    assert preprocess_for("speechcommands", shared_dir / "data") == Preprocess((0.3325,), (0.1969,), (98, 40))


def _member_image(archive: Path, image_id: str) -> Image.Image:
    """One image of an archive, decoded by PIL alone (the first test image comes early in the shared archives)."""
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name.endswith(image_id):
                img = Image.open(tar.extractfile(member))
                img.load()
                return img
    raise AssertionError(f"{image_id} not in {archive}")


def test_cifar100_archive(shared_dir):
    ds = load_split("cifar100", shared_dir / "data", "test:eval", limit=100)
    assert ds.images.shape == (100, 32, 32, 3) and len(ds.classes) == 100
    assert ds.classes[:3] == ["apple", "aquarium_fish", "baby"] and ds.classes[-1] == "worm"
    assert np.bincount(ds.labels).tolist() == [1] * 100
    assert preprocess_for("cifar100", shared_dir / "data") == Preprocess(
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (32, 32))


TORCHVISION_FORMATS = {
    # dataset: (folder, train files, test file, meta file, names key, labels key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                b"label_names", b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_label_names", b"fine_labels", 100),
}


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.mark.parametrize("dataset", sorted(TORCHVISION_FORMATS))
def test_torchvision_format(dataset, tmp_path, cache):
    folder, train_files, test_file, meta, names_key, labels_key, k = TORCHVISION_FORMATS[dataset]
    base = tmp_path / folder
    base.mkdir()
    rng = np.random.default_rng(0)
    names = [f"class{i}".encode() for i in range(k)]
    _pickle(base / meta, {names_key: names})
    for name in train_files + [test_file]:
        data, labels = rng.integers(0, 256, (40, 3072), dtype=np.uint8), rng.integers(0, 4, 40).tolist()
        _pickle(base / name, {b"data": data, labels_key: labels})
    # Even positions within each class, in the original order, form test:calib.
    expected = [i for c in range(k) for i in [j for j in range(40) if labels[j] == c][0::2]]
    calib = load_split(dataset, tmp_path, "test:calib")
    assert calib.ids == [f"test/{i}" for i in expected]
    assert calib.labels.tolist() == [labels[i] for i in expected]
    assert calib.classes == [n.decode() for n in names]
    assert np.array_equal(calib.images, data[expected].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert len(load_split(dataset, tmp_path, "train")) == 40 * len(train_files)
