"""Data sets and their splits: where the images are found, how a split is cut, and the preprocessing.

Splits (the project's contract; bundles record which split calibrated them):

- `train`: every image under `train/`.
- `test`: every image under `test/`.
- `test:calib` / `test:eval`: within each class, that class's test images sorted by file name; even positions
  (0, 2, 4, ...) go to `test:calib`, odd positions to `test:eval`. The halves are disjoint, their union is `test`,
  and the rule depends on nothing but the file names, so it never changes between runs or machines. For CIFAR data
  in torchvision's pickle format (no file names) the position is the image's index within its class in the
  original order, and ids are "train/<index>" / "test/<index>".
- `limit` then takes a class-balanced subset of the split (`class_balanced_subset`, seeded, deterministic).

Rows come in a fixed order: by label, then file name (torchvision format: by label, then original index).
Ids are the image's path in the archive or folder without any top folder, e.g. "test/cat/0001.jpg"; labels follow
the class folder names sorted (Tiny ImageNet: the sorted wnids; `classes` holds readable names from `classes.txt`).

Images are uint8 N x H x W x C arrays of any size: C = 1 when the images are greyscale (e.g. the Speech Commands
spectrograms, N x 98 x 40 x 1), else 3 (RGB; a split mixing greyscale and colour images loads as RGB). The images of
one split must share one size. Nothing is resized or converted here: the model's `Preprocess` (gati/preprocess.py)
brings any size and channel count to its input.

Where the data is found, for `load_split(dataset, data_dir, ...)`, first match wins:
1. `path`, when given (and for `imagefolder`, `path` or else `data_dir`): a `.tar.gz` archive or a folder.
2. The archive `<data_dir>/<dataset>-jpg.tar.gz` (tinyimagenet100: `tinyimagenet100-32-jpg.tar.gz`, speechcommands:
   `speechcommands-spectrogram-jpg.tar.gz`).
3. torchvision's files: `<data_dir>/cifar-10-batches-py/` (cifar10), `<data_dir>/cifar-100-python/` (cifar100).
4. An unpacked folder, `<data_dir>/<dataset>/` or `<data_dir>` itself, holding `train/<class>/*`, `test/<class>/*`.
5. cifar10 / cifar100 only: torchvision downloads the data into `data_dir`. This comes last because it is the only
   step that reaches the network and writes.

Archives are read front to back in one pass (random access into a gzip stream is quadratic), and only the images
of the requested split and subset are decoded. Decoded splits are cached as uncompressed .npz files under
`$GATI_CACHE_DIR` (default `~/.cache/gati/`), keyed by the source's path, size and modification time (a folder: its
file listing) and the request, so loading the same split again takes well under a second.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from gati.errors import DatasetError, GatiError, InvalidInput
from gati.preprocess import Preprocess, image_pixels, to_channels

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "speechcommands", "tinyimagenet100", "imagefolder")
SPLITS: tuple[str, ...] = ("train", "test", "test:calib", "test:eval")

LAYOUT = ("train/<class>/<image> and test/<class>/<image> (e.g. test/cat/0001.jpg), greyscale or RGB images of "
          "one size per split")
_ARCHIVES = {"cifar10": "cifar10-jpg.tar.gz", "cifar100": "cifar100-jpg.tar.gz",
             "speechcommands": "speechcommands-spectrogram-jpg.tar.gz",
             "tinyimagenet100": "tinyimagenet100-32-jpg.tar.gz"}
_TORCHVISION_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_SIZE = 32  # torchvision's pickles hold 32 x 32 RGB rows
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
# The data sets whose preprocessing is fixed (their models' input); the others' statistics are computed from the
# train split's pixels.
_FIXED_PREPROCESS = {
    # shared/README.md: the CIFAR-10 checkpoints' input
    "cifar10": Preprocess((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (32, 32)),
    "cifar100": Preprocess((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (32, 32)),
    # shared/README.md: 98 time frames x 40 frequency bins, statistics of the train split
    "speechcommands": Preprocess((0.3325,), (0.1969,), (98, 40)),
}
# Bump when the cached content or its order changes, so stale caches are never read.
_CACHE_VERSION = 2


@dataclass
class Dataset:
    """One split of a data set, decoded."""

    name: str
    split: str
    images: np.ndarray  # uint8 N x H x W x C, C = 1 (greyscale) or 3 (RGB)
    labels: np.ndarray  # int64 N
    ids: list[str]  # stable image ids, e.g. "test/cat/0001.jpg"
    classes: list[str]  # class names in label order

    def __len__(self) -> int:
        return len(self.labels)


def ids_hash(ids: Sequence[str]) -> str:
    """SHA-256 hex of the sorted ids joined by newlines: names a set of images independent of its order."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def class_balanced_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Increasing indices of `limit` rows, as equal per class as possible, chosen by a seeded shuffle.

    Classes with too few rows give their share to the others; when `limit` does not divide evenly, the seed picks
    which classes get one more. `limit` >= len(labels) returns every index.
    """
    if limit < 1:
        raise InvalidInput(f"limit must be at least 1, got {limit}")
    labels = np.asarray(labels)
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    takes = _water_fill(counts, limit, rng)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:take] for c, take in zip(classes, takes)]
    return np.sort(np.concatenate(chosen))


def _water_fill(counts: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """How many rows to take per class: equal shares, capped by each class's count, remainder to random classes."""
    takes = np.zeros(len(counts), dtype=np.int64)
    remaining = limit
    while remaining > 0:
        open_ = np.flatnonzero(takes < counts)
        share = remaining // len(open_)
        if share == 0:
            takes[rng.choice(open_, size=remaining, replace=False)] += 1
            break
        add = np.minimum(share, counts[open_] - takes[open_])
        takes[open_] += add
        remaining -= int(add.sum())
    return takes


# --- where the data is -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    kind: str  # "archive", "folder" or "torchvision"
    path: Path
    dataset: str

    def fingerprint(self) -> str | None:
        """Changes whenever the data may have changed; None where decoding is cheap enough not to cache."""
        if self.kind == "archive":
            st = self.path.stat()
            return f"archive:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if self.kind == "folder":
            stats = [(rel, p.stat()) for split in ("train", "test") for rel, p in _list_folder_split(self.path, split)]
            listing = "\n".join(f"{rel}:{st.st_size}:{st.st_mtime_ns}" for rel, st in stats)
            return f"folder:{self.path.resolve()}:{hashlib.sha256(listing.encode()).hexdigest()}"
        return None


def _is_archive(p: Path) -> bool:
    return p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar"))


def _has_split_folders(p: Path) -> bool:
    return (p / "train").is_dir() or (p / "test").is_dir()


def _find_source(dataset: str, data_dir: str | Path, path: str | Path | None) -> _Source:
    if dataset not in DATASETS:
        raise DatasetError(f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}")
    if path is not None or dataset == "imagefolder":
        return _explicit_source(dataset, Path(path if path is not None else data_dir))
    root = Path(data_dir)
    if _is_archive(root):
        return _Source("archive", root, dataset)
    if dataset in _ARCHIVES and (root / _ARCHIVES[dataset]).is_file():
        return _Source("archive", root / _ARCHIVES[dataset], dataset)
    if dataset in _TORCHVISION_DIRS and (root / _TORCHVISION_DIRS[dataset]).is_dir():
        return _Source("torchvision", root / _TORCHVISION_DIRS[dataset], dataset)
    for folder in (root / dataset, root):
        if _has_split_folders(folder):
            return _Source("folder", folder, dataset)
    if dataset in _TORCHVISION_DIRS:
        return _download(dataset, root)
    looked = [str(root / _ARCHIVES[dataset]), f"{root / dataset}/", f"{root}/"]
    raise DatasetError(f"no {dataset} data found in {root}: looked for {', '.join(looked)}; "
                       f"a folder or archive must hold {LAYOUT}")


def _explicit_source(dataset: str, p: Path) -> _Source:
    if _is_archive(p):
        return _Source("archive", p, dataset)
    if p.is_dir():
        if not _has_split_folders(p):
            raise DatasetError(f"{p} has neither a train/ nor a test/ folder; expected {LAYOUT}")
        return _Source("folder", p, dataset)
    raise DatasetError(f"{p} is neither a folder nor a .tar.gz archive; expected {LAYOUT}")


def _download(dataset: str, root: Path) -> _Source:
    import torchvision.datasets  # only here: the import is slow and most runs never download

    cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(root=str(root), train=True, download=True)
    except Exception as exc:  # network, disk and checksum failures all mean the same to the caller
        raise DatasetError(f"no {dataset} data in {root} (looked for {_ARCHIVES[dataset]}, "
                           f"{_TORCHVISION_DIRS[dataset]}/, {dataset}/ with {LAYOUT}) and downloading it "
                           f"failed: {exc}") from exc
    return _Source("torchvision", root / _TORCHVISION_DIRS[dataset], dataset)


# --- reading one physical split (train or test) ------------------------------------------------------------------


@dataclass
class _Raw:
    """A physical split in canonical order (label, then file name), not yet decoded."""

    ids: list[str]
    labels: np.ndarray
    classes: list[str]
    decode: Callable[[np.ndarray], np.ndarray]  # row indices -> uint8 images


def _image_member(name: str) -> tuple[str, str, str] | None:
    """(split, class, file) for `[top/]split/class/file.jpg`, else None."""
    parts = PurePosixPath(name).parts
    if len(parts) == 4:
        parts = parts[1:]
    if len(parts) != 3 or parts[0] not in ("train", "test") or parts[2].startswith("."):
        return None
    return (parts[0], parts[1], parts[2]) if PurePosixPath(parts[2]).suffix.lower() in _IMAGE_SUFFIXES else None


def _readable_names(wnids: list[str], classes_txt: str | None) -> list[str]:
    """Class names from a `classes.txt` ("wnid<TAB>name, synonyms"): the first synonym, unless two classes share it."""
    if not classes_txt:
        return wnids
    names = dict(line.split("\t", 1) for line in classes_txt.splitlines() if "\t" in line)
    first = [names[w].split(",")[0].strip() if w in names else w for w in wnids]
    return [f if first.count(f) == 1 else f"{f} ({w})" for f, w in zip(first, wnids)]


def _canonical(entries: list[tuple[str, str, object]], classes: list[str], split: str
               ) -> tuple[list[str], np.ndarray, list[object]]:
    """Sort (class, file, payload) entries by label then file name; return ids, labels, payloads."""
    index = {c: i for i, c in enumerate(classes)}
    entries = sorted(entries, key=lambda e: (index[e[0]], e[1]))
    ids = [f"{split}/{c}/{f}" for c, f, _ in entries]
    labels = np.array([index[c] for c, _, _ in entries], dtype=np.int64)
    return ids, labels, [p for _, _, p in entries]


def _decode_one(blob: bytes | Path, image_id: str, source: _Source) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(blob) if isinstance(blob, bytes) else blob) as img:
            return image_pixels(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot decode {image_id} in {source.path}: {exc}") from exc


def _decoder(payloads: list[object], ids: list[str], source: _Source) -> Callable[[np.ndarray], np.ndarray]:
    def decode(rows: np.ndarray) -> np.ndarray:
        """The rows' images in one array, sized by the first; one colour image among greyscale ones makes it RGB."""
        out = np.zeros((0, 0, 0, 3), dtype=np.uint8)
        for k, r in enumerate(rows):
            img = _decode_one(payloads[r], ids[r], source)
            if k == 0:
                out, first = np.empty((len(rows), *img.shape), dtype=np.uint8), ids[r]
            elif img.shape[:2] != out.shape[1:3]:
                raise DatasetError(f"{ids[r]} in {source.path} is {img.shape[0]}x{img.shape[1]} (HxW) but {first} "
                                   f"is {out.shape[1]}x{out.shape[2]}: the images of a split must share one size "
                                   "(resize them first; serving resizes each request to the model's input size)")
            elif img.shape[2] > out.shape[3]:
                out = to_channels(out, 3)
            out[k] = to_channels(img, out.shape[3])
        return out
    return decode


def _no_images(source: _Source, split: str, stray: str | None) -> DatasetError:
    seen = f"; found images elsewhere, e.g. {stray!r}" if stray else ""
    return DatasetError(f"no images under {split}/<class>/ in {source.path}{seen}; expected {LAYOUT}")


def _read_archive(source: _Source, split: str) -> _Raw:
    """One sequential pass: keep the bytes of `split`'s images, note every class folder and classes.txt."""
    entries: list[tuple[str, str, object]] = []
    class_dirs: set[str] = set()
    classes_txt, stray = None, None
    try:
        with tarfile.open(source.path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parsed = _image_member(member.name)
                if parsed is None:
                    if PurePosixPath(member.name).name == "classes.txt":
                        classes_txt = tar.extractfile(member).read().decode("utf-8")
                    elif PurePosixPath(member.name).suffix.lower() in _IMAGE_SUFFIXES:
                        stray = stray or member.name
                    continue
                class_dirs.add(parsed[1])
                if parsed[0] == split:
                    entries.append((parsed[1], parsed[2], tar.extractfile(member).read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"cannot read archive {source.path}: {exc}") from exc
    if not entries:
        raise _no_images(source, split, stray)
    wnids = sorted(class_dirs)
    ids, labels, blobs = _canonical(entries, wnids, split)
    return _Raw(ids, labels, _readable_names(wnids, classes_txt), _decoder(blobs, ids, source))


def _list_folder_split(root: Path, split: str) -> list[tuple[str, Path]]:
    """(id, path) of every image at `root/split/<class>/<file>`, sorted by id."""
    base = root / split
    if not base.is_dir():
        return []
    found = [(f"{split}/{c.name}/{f.name}", f) for c in base.iterdir() if c.is_dir()
             for f in c.iterdir() if _image_member(f"{split}/{c.name}/{f.name}") and f.is_file()]
    return sorted(found)


def _read_folder(source: _Source, split: str) -> _Raw:
    listed = _list_folder_split(source.path, split)
    if not listed:
        stray = next((str(p) for p in (source.path / split).glob("*")
                      if p.suffix.lower() in _IMAGE_SUFFIXES), None) if (source.path / split).is_dir() else None
        raise _no_images(source, split, stray)
    wnids = sorted({c.name for s in ("train", "test") if (source.path / s).is_dir()
                    for c in (source.path / s).iterdir() if c.is_dir()})
    entries = [(i.split("/")[1], i.split("/")[2], p) for i, p in listed]
    ids, labels, paths = _canonical(entries, wnids, split)
    txt = source.path / "classes.txt"
    names = _readable_names(wnids, txt.read_text(encoding="utf-8") if txt.is_file() else None)
    return _Raw(ids, labels, names, _decoder(paths, ids, source))


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")  # torchvision's own format; the user pointed us at it
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise DatasetError(f"cannot read {path} (torchvision CIFAR format): {exc}") from exc


def _read_torchvision(source: _Source, split: str) -> _Raw:
    """CIFAR pickles: rows sorted by label, then original index (a stable sort keeps the order within a class)."""
    if source.dataset == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta, names_key, labels_key = "batches.meta", b"label_names", b"labels"
    else:
        files, meta, names_key, labels_key = [split], "meta", b"fine_label_names", b"fine_labels"
    batches = [_unpickle(source.path / f) for f in files]
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, _CIFAR_SIZE, _CIFAR_SIZE)
    images = images.transpose(0, 2, 3, 1)
    labels = np.concatenate([np.asarray(b[labels_key], dtype=np.int64) for b in batches])
    order = np.argsort(labels, kind="stable")
    classes = [n.decode("utf-8") for n in _unpickle(source.path / meta)[names_key]]
    ids = [f"{split}/{i}" for i in order]
    return _Raw(ids, labels[order], classes, lambda rows: np.ascontiguousarray(images[order[rows]]))


_READERS = {"archive": _read_archive, "folder": _read_folder, "torchvision": _read_torchvision}


# --- splits, subsets and the on-disk cache -----------------------------------------------------------------------


def halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The project's one splitting rule: within each class, rows in canonical order (by label, then
    file name), even positions (0, 2, ...) form the first half and odd positions the second.

    It cuts `test` into `test:calib` and `test:eval`, and `test:calib` into the *select* and
    *certify* parts of calibration (gati.pipeline.certify). Returns increasing row indices.
    """
    labels = np.asarray(labels)
    position = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        position[members] = np.arange(len(members))
    rows = np.arange(len(labels))
    return rows[position % 2 == 0], rows[position % 2 == 1]


def _split_rows(labels: np.ndarray, split: str, limit: int | None, seed: int) -> np.ndarray:
    """Rows of the physical split (in canonical order) that make up `split`, then its `limit` subset."""
    rows = np.arange(len(labels))
    if split in ("test:calib", "test:eval"):
        rows = halves(labels)[0 if split == "test:calib" else 1]
    if limit is not None:
        rows = rows[class_balanced_subset(labels[rows], limit, seed)]
    return rows


def cache_dir() -> Path:
    """Where decoded splits and computed statistics are cached: $GATI_CACHE_DIR or ~/.cache/gati."""
    return Path(os.environ.get("GATI_CACHE_DIR") or Path.home() / ".cache" / "gati")


def _cache_path(kind: str, *key: object) -> Path:
    digest = hashlib.sha256(json.dumps([_CACHE_VERSION, *key]).encode()).hexdigest()[:32]
    return cache_dir() / kind / f"{digest}.{'npz' if kind == 'splits' else 'json'}"


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file.

    The cache is only a speed-up: a folder we cannot write to leaves it empty rather than failing the load.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as f:
            tmp = f.name
            write(f)
        os.chmod(tmp, 0o644)  # NamedTemporaryFile makes it private; a cache folder may be shared
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _save_cached(path: Path, ds: Dataset) -> None:
    _atomic_write(path, lambda f: np.savez(f, images=ds.images, labels=ds.labels,
                                           ids=np.array(ds.ids, dtype=str), classes=np.array(ds.classes, dtype=str)))


def _load_cached(path: Path, name: str, split: str) -> Dataset | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return Dataset(name, split, z["images"], z["labels"], z["ids"].tolist(), z["classes"].tolist())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # a damaged cache file is rebuilt, never trusted


def select_ids(ds: Dataset, ids: Sequence[str]) -> Dataset:
    """The images of `ds` named by `ids`, in that order (e.g. a bundle's calibration images)."""
    row_of = {image_id: row for row, image_id in enumerate(ds.ids)}
    missing = [i for i in ids if i not in row_of]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(ids)} images are not in {ds.name} {ds.split} "
                           f"(e.g. {missing[0]}): is this the data the bundle was built from?")
    return _subset(ds, ds.split, np.array([row_of[i] for i in ids], dtype=np.int64))


def _subset(ds: Dataset, split: str, rows: np.ndarray) -> Dataset:
    return Dataset(ds.name, split, ds.images[rows], ds.labels[rows], [ds.ids[r] for r in rows], ds.classes)


def load_split(dataset: str, data_dir: str | Path, split: str, limit: int | None = None,
               seed: int = 0, path: str | Path | None = None) -> Dataset:
    """Decode one split (see the module docstring for the split rule and where data is found)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise InvalidInput(f"limit must be at least 1, got {limit}")
    source = _find_source(dataset, data_dir, path)
    physical = split.split(":")[0]
    fingerprint = source.fingerprint()
    exact = _cache_path("splits", fingerprint, dataset, split, limit, seed)
    whole = _cache_path("splits", fingerprint, dataset, physical, None, 0)
    if fingerprint is not None:
        cached = _load_cached(exact, dataset, split)
        if cached is not None:
            return cached
        full = _load_cached(whole, dataset, physical)
        if full is not None:  # a subset of an already decoded split costs no decoding
            return _subset(full, split, _split_rows(full.labels, split, limit, seed))
    raw = _READERS[source.kind](source, physical)
    rows = _split_rows(raw.labels, split, limit, seed)
    ds = Dataset(dataset, split, raw.decode(rows), raw.labels[rows], [raw.ids[r] for r in rows], raw.classes)
    if fingerprint is not None:
        _save_cached(exact, ds)
    return ds


# --- preprocessing -----------------------------------------------------------------------------------------------


def _pixel_stats(images: np.ndarray, channels: int, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of pixel values / 255 in `channels` channels, in float64 chunks."""
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(images), chunk):
        x = to_channels(images[start:start + chunk], channels).reshape(-1, channels).astype(np.float64) / 255.0
        total += x.sum(axis=0)
        squares += np.square(x).sum(axis=0)
        count += len(x)
    if count == 0:
        raise DatasetError("cannot compute normalisation statistics from an empty train split")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def preprocess_for(dataset: str, data_dir: str | Path, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, size: tuple[int, int] | None = None,
                   channels: int | None = None) -> Preprocess:
    """The preprocessing a model of `dataset` expects: the data set's own, with what the caller gives in its place.

    The data set's own: cifar10, cifar100 and speechcommands have fixed statistics (their models' input);
    tinyimagenet100 and imagefolder compute them from the train split's pixels once (in `channels` channels, by
    default the images' own) and cache them, with the train images' size. A model trained with other statistics, on
    another size or channel count, gives `mean` and `std` (one per channel), `size` (H, W) and `channels`; the data
    set is not read when `mean`, `std` and `size` are all given.
    """
    if (mean is None) != (std is None):
        raise GatiError("give both the mean and the std (one value per channel), or neither")
    if mean is not None and channels is not None and len(mean) != channels:
        raise GatiError(f"{len(mean)} mean values given for {channels} channels")
    if mean is not None and size is not None:
        return Preprocess(tuple(mean), tuple(std), tuple(size))
    own = _dataset_preprocess(dataset, data_dir, channels if mean is None else None)
    return Preprocess(own.mean if mean is None else tuple(mean), own.std if std is None else tuple(std),
                      own.size if size is None else tuple(size))


def _dataset_preprocess(dataset: str, data_dir: str | Path, channels: int | None) -> Preprocess:
    """The data set's own preprocessing, its statistics in `channels` channels (None: the images' own)."""
    if dataset in _FIXED_PREPROCESS:
        pre = _FIXED_PREPROCESS[dataset]
        if channels not in (None, pre.channels):
            raise GatiError(f"the {dataset} statistics are for {pre.channels} channel(s); give the mean and std of "
                            f"the {channels}-channel input the model was trained on")
        return pre
    source = _find_source(dataset, data_dir, None)
    stats_path = _cache_path("stats", source.fingerprint(), dataset, channels)
    try:
        stats = json.loads(stats_path.read_text())
        return Preprocess(stats["mean"], stats["std"], stats["size"])
    except (OSError, ValueError, KeyError, TypeError, GatiError):
        pass  # not computed yet (or damaged): compute below
    images = load_split(dataset, data_dir, "train").images
    mean, std = _pixel_stats(images, channels or images.shape[3])
    size = images.shape[1:3]
    _atomic_write(stats_path, lambda f: f.write(json.dumps({"mean": mean, "std": std, "size": size}).encode()))
    return Preprocess(mean, std, size)
