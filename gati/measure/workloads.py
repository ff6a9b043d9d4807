"""Workloads: deterministic request streams over a data split, for `gati eval` and `gati bench`.

A workload is a named recipe with typed parameters. `parse_workload("bursty:mean_run=20,seed=3")` makes one
(or construct the class, e.g. `Bursty(mean_run=20, seed=3)`), and `workload.generate(data)` gives its `Stream`:
the requests as uint8 images and, per request, the source image, its true label and metadata. The same
workload (name, parameters, seed) over the same data gives a byte-identical stream (`Stream.fingerprint`).
A stream is as long as asked (`n`, drawn with replacement where the split is shorter) and knows nothing of the
model: whoever replays it compares every answer with the base model's answer on the same input, so agreement
stays measured, never assumed. `Stream.locality(base_labels)` then summarises in one line how much locality a
learning cache could exploit (`locality_summary`).

Every workload takes `n` (requests; 0 = the split's size, for `trace` the file's entries) and `seed`.

- `iid`: the split in a shuffled order, reshuffled each time it runs out. With n=0 this is exactly
  `np.random.default_rng(seed).permutation(len(data))`, the order `gati eval` replays today.
- `zipf`: `s` (skew >= 0, default 1.0; 0 is uniform), `over` (`class` or `image`, default `class`). Classes
  (or images) are ranked in a seeded random order and the r-th is drawn with probability proportional to
  r^-s; with `over=class` an image of the drawn class is then drawn uniformly.
- `bursty`: `mean_run` (>= 1, default 20). Runs of one class, as a camera watching one scene sees, with
  geometric lengths of that mean; each run's class differs from the previous run's, and a run's images are
  distinct while its class has enough of them.
- `repeat`: `working_set` (>= 1, default 32), `churn` (0-1, default 0.01), `jitter` (0-4, default 1.0), `flip`
  (0-1, default 0.05). Each request re-requests one member of a working set of images, uniformly, as a
  near-duplicate with the differences consecutive video frames have (`gati.measure.perturb.frame_jitter`: small
  shifts, brightness and contrast, sensor noise, JPEG re-encoding, all scaled by `jitter`; a horizontal flip
  with probability `flip`). Before each request, with probability `churn`, one member is replaced by a fresh
  image of the split. jitter=0 and flip=0 give exact repeats.
- `drift`: `phases` (>= 1, default 6), `severity` (0-5, default 5), `concentration` (> 0, default 1.0),
  `corruptions` (`+`-separated, default `noise+blur+brightness+contrast`). The stream is cut into equal phases;
  each phase draws its own class mix from a Dirichlet distribution with that concentration (small: a few classes
  dominate) and corrupts every image with one of the corruptions, drawn per request, at a severity rising
  linearly from 0 in the first phase to `severity` in the last, in the manner of CIFAR-10-C
  (`gati.measure.perturb.corrupt`). What was learned in one phase goes stale in the next.
- `trace`: `path` (required), `fit` (`crop` or `stretch`, default `crop`). The order given by a text file with
  one image path per line (relative to the file's folder, or absolute; blank lines and lines starting with `#`
  are skipped), e.g. the frames of a video. Images of any size and format are converted to the model's channels
  and resized to its input (`input_shape`: channels, height, width, as the bundle's manifest says); `crop` first
  cuts the centre to the input's aspect ratio. True labels are unknown (`UNKNOWN_LABEL`): a trace is answered
  against the base model's own labels. A larger n replays the file from its start; `seed` is unused.

Values in a spec cannot contain `,` (construct the class in Python for such a path).
"""
from __future__ import annotations

import functools
import hashlib
import math
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from PIL import Image

from gati.errors import WorkloadError
from gati.measure.perturb import CORRUPTIONS, MAX_SEVERITY, corrupt, frame_jitter

if TYPE_CHECKING:  # only a type here; importing gati.data would import torch
    from gati.data import Dataset

UNKNOWN_LABEL = -1
CHANNELS = (1, 3)  # "L" and "RGB" images
InputShape = tuple[int, int, int]  # channels, height, width: the model's input, as in the bundle's manifest


# --- what a workload produces ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Locality:
    """How much locality a stream has, seen through the base model's answers."""

    requests: int
    k: int
    recent_share: float  # requests whose base answer equals one of the previous k answers
    repeat_share: float | None  # requests made from a source image requested before (None: sources unknown)
    mean_run: float  # mean length of runs of equal consecutive base answers

    def describe(self) -> str:
        repeats = "" if self.repeat_share is None else f", {self.repeat_share:.1%} repeat an earlier image"
        return (f"locality: {self.recent_share:.1%} of base answers among the last {self.k}{repeats}, "
                f"mean run {self.mean_run:.2f}")


def locality_summary(base_labels: np.ndarray, k: int = 8, sources: np.ndarray | None = None) -> Locality:
    """Locality of a stream from its base answers (and, to count repeats, the source image of every request)."""
    labels = np.asarray(base_labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise WorkloadError(f"base_labels must be a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    if not isinstance(k, int) or k < 1:
        raise WorkloadError(f"k must be an integer >= 1, got {k!r}")
    recent = np.zeros(len(labels), dtype=bool)
    for lag in range(1, min(k, len(labels) - 1) + 1):
        recent[lag:] |= labels[lag:] == labels[:-lag]
    runs = 1 + int(np.count_nonzero(labels[1:] != labels[:-1]))
    repeat_share = None
    if sources is not None:
        sources = np.asarray(sources)
        if sources.shape != labels.shape:
            raise WorkloadError(f"sources has shape {sources.shape}, base_labels {labels.shape}")
        repeat_share = float(_repeated(sources).mean())
    return Locality(len(labels), k, float(recent.mean()), repeat_share, len(labels) / runs)


def _repeated(sources: np.ndarray) -> np.ndarray:
    """Per request: was its source requested before?"""
    repeated = np.ones(len(sources), dtype=bool)
    repeated[np.unique(sources, return_index=True)[1]] = False
    return repeated


@dataclass(eq=False)
class Stream:
    """The requests of one workload, in the order they are sent."""

    workload: str  # the canonical spec that made it, e.g. "bursty:n=5000,seed=3,mean_run=20.0"
    description: str  # the workload's describe()
    images: np.ndarray  # uint8 n x H x W x C: what is sent
    sources: np.ndarray  # int64 n: index into source_ids of the image each request was made from
    source_ids: list[str]  # the source images (a split's ids; a trace's resolved paths)
    labels: np.ndarray  # int64 n: the source's true label; UNKNOWN_LABEL for a trace
    phases: np.ndarray  # int64 n: the drift phase; 0 for the other workloads
    perturbed: np.ndarray  # bool n: the image differs from its source (frame jitter, corruption)

    def __len__(self) -> int:
        return len(self.sources)

    def repeats(self) -> np.ndarray:
        """Per request: was its source image (exactly or perturbed) requested before?"""
        return _repeated(self.sources)

    def locality(self, base_labels: np.ndarray, k: int = 8) -> Locality:
        """`locality_summary` of this stream, given the base model's answer to every request."""
        return locality_summary(base_labels, k, self.sources)

    def fingerprint(self) -> str:
        """SHA-256 over the spec and every array: equal fingerprints, byte-identical streams."""
        h = hashlib.sha256(self.workload.encode())
        for array in (self.images, self.sources, self.labels, self.phases, self.perturbed):
            h.update(str(array.shape).encode())
            h.update(np.ascontiguousarray(array).tobytes())
        h.update("\n".join(self.source_ids).encode())
        return h.hexdigest()


# --- the workloads -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload(ABC):
    """A recipe for a request stream; subclasses add their parameters as fields (all with defaults)."""

    name: ClassVar[str]
    n: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            self._check_type(f.name, _field_types(type(self))[f.name])
        self._require("n", self.n >= 0, ">= 0 (0 = the split's size)")
        self._check()

    def _check(self) -> None:
        """Range checks of the workload's own parameters (`_require` each)."""

    def _check_type(self, param: str, expected: type) -> None:
        value = getattr(self, param)
        if isinstance(value, bool) or not isinstance(value, (int, float) if expected is float else expected):
            raise WorkloadError(f"{self.name}: {param} must be {_TYPE_WORDS[expected]}, got {value!r}")
        if expected is float:
            if not math.isfinite(value):
                raise WorkloadError(f"{self.name}: {param} must be finite, got {value!r}")
            object.__setattr__(self, param, float(value))  # 20 and 20.0 make the same workload

    def _require(self, param: str, ok: bool, must: str) -> None:
        if not ok:
            raise WorkloadError(f"{self.name}: {param} must be {must}, got {getattr(self, param)!r}")

    def spec(self) -> str:
        """The canonical spec: `parse_workload(w.spec()) == w`."""
        return f"{self.name}:" + ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    @abstractmethod
    def describe(self) -> str:
        """One line saying what the stream is, with its parameters."""

    @abstractmethod
    def generate(self, data: Dataset | None = None, input_shape: InputShape | None = None) -> Stream:
        """The stream. Split workloads need `data`; `trace` needs `input_shape` (or takes it from `data`)."""


class _SplitWorkload(Workload):
    """A workload that draws its requests from a data split."""

    def generate(self, data: Dataset | None = None, input_shape: InputShape | None = None) -> Stream:
        data = _usable_split(self.name, data, input_shape)
        return self._stream(data, self.n or len(data), np.random.default_rng(self.seed))

    @abstractmethod
    def _stream(self, data: Dataset, n: int, rng: np.random.Generator) -> Stream:
        """`n` requests drawn from `data` with `rng`."""

    def _from_sources(self, data: Dataset, sources: np.ndarray, images: np.ndarray | None = None,
                      phases: np.ndarray | None = None) -> Stream:
        """The stream of requests made from `data`'s rows `sources` (unchanged images unless `images` is given)."""
        sources = np.asarray(sources, dtype=np.int64)
        originals = data.images[sources]
        images = originals if images is None else images
        perturbed = (images != originals).reshape(len(sources), -1).any(axis=1)
        return Stream(self.spec(), self.describe(), images, sources, data.ids, data.labels[sources].astype(np.int64),
                      np.zeros(len(sources), np.int64) if phases is None else phases, perturbed)


@dataclass(frozen=True)
class Iid(_SplitWorkload):
    """The split in a shuffled order, reshuffled each time it runs out."""

    name: ClassVar[str] = "iid"

    def describe(self) -> str:
        return f"iid: the split shuffled (n={self.n or 'split size'}, seed={self.seed})"

    def _stream(self, data: Dataset, n: int, rng: np.random.Generator) -> Stream:
        rounds = -(-n // len(data))
        return self._from_sources(data, np.concatenate([rng.permutation(len(data)) for _ in range(rounds)])[:n])


@dataclass(frozen=True)
class Zipf(_SplitWorkload):
    """Classes (or images) drawn with Zipf skew s, ranked in a seeded random order."""

    name: ClassVar[str] = "zipf"
    s: float = 1.0
    over: str = "class"

    def _check(self) -> None:
        self._require("s", 0.0 <= self.s <= 10.0, "in [0, 10]")
        self._require("over", self.over in ("class", "image"), "'class' or 'image'")

    def describe(self) -> str:
        return f"zipf: {self.over}es drawn with skew s={self.s:g} (n={self.n or 'split size'}, seed={self.seed})"

    def _stream(self, data: Dataset, n: int, rng: np.random.Generator) -> Stream:
        if self.over == "image":
            return self._from_sources(data, rng.choice(len(data), size=n, p=_zipf_weights(len(data), self.s, rng)))
        classes = np.unique(data.labels)
        wanted = classes[rng.choice(len(classes), size=n, p=_zipf_weights(len(classes), self.s, rng))]
        return self._from_sources(data, _draw_within(data.labels, wanted, rng))


@dataclass(frozen=True)
class Bursty(_SplitWorkload):
    """Runs of one class with geometric lengths of mean `mean_run`, as a camera watching one scene sees."""

    name: ClassVar[str] = "bursty"
    mean_run: float = 20.0

    def _check(self) -> None:
        self._require("mean_run", 1.0 <= self.mean_run <= 1e6, "in [1, 1e6]")

    def describe(self) -> str:
        return (f"bursty: runs of one class, mean length {self.mean_run:g} "
                f"(n={self.n or 'split size'}, seed={self.seed})")

    def _stream(self, data: Dataset, n: int, rng: np.random.Generator) -> Stream:
        classes = np.unique(data.labels)
        members = {c: np.flatnonzero(data.labels == c) for c in classes}
        runs, total, current = [], 0, None
        while total < n:
            length = min(int(rng.geometric(1.0 / self.mean_run)), n - total)
            others = classes if current is None or len(classes) == 1 else classes[classes != current]
            current = others[rng.integers(len(others))]
            pool = members[current]
            runs.append(rng.choice(pool, size=length, replace=length > len(pool)))
            total += length
        return self._from_sources(data, np.concatenate(runs))


@dataclass(frozen=True)
class Repeat(_SplitWorkload):
    """A working set of images re-requested as near-duplicates, as consecutive video frames; members churn."""

    name: ClassVar[str] = "repeat"
    working_set: int = 32
    churn: float = 0.01
    jitter: float = 1.0
    flip: float = 0.05

    def _check(self) -> None:
        self._require("working_set", self.working_set >= 1, ">= 1")
        self._require("churn", 0.0 <= self.churn <= 1.0, "in [0, 1]")
        self._require("jitter", 0.0 <= self.jitter <= 4.0, "in [0, 4]")
        self._require("flip", 0.0 <= self.flip <= 1.0, "in [0, 1]")

    def describe(self) -> str:
        return (f"repeat: a working set of {self.working_set} images re-requested as video-frame near-duplicates, "
                f"churn {self.churn:g} per request, jitter {self.jitter:g}, flip {self.flip:g} "
                f"(n={self.n or 'split size'}, seed={self.seed})")

    def _stream(self, data: Dataset, n: int, rng: np.random.Generator) -> Stream:
        pool = rng.choice(len(data), size=self.working_set, replace=self.working_set > len(data))
        sources = np.empty(n, dtype=np.int64)
        images = np.empty((n, *data.images.shape[1:]), dtype=np.uint8)
        for t in range(n):
            if rng.random() < self.churn:
                pool[rng.integers(self.working_set)] = rng.integers(len(data))
            sources[t] = pool[rng.integers(self.working_set)]
            images[t] = frame_jitter(data.images[sources[t]], rng, self.jitter, self.flip)
        return self._from_sources(data, sources, images)


@dataclass(frozen=True)
class Drift(_SplitWorkload):
    """Phases with their own class mix and corruptions of rising severity, in the manner of CIFAR-10-C."""

    name: ClassVar[str] = "drift"
    phases: int = 6
    severity: int = MAX_SEVERITY
    concentration: float = 1.0
    corruptions: str = "+".join(CORRUPTIONS)

    def _check(self) -> None:
        self._require("phases", self.phases >= 1, ">= 1")
        self._require("severity", 0 <= self.severity <= MAX_SEVERITY, f"in 0..{MAX_SEVERITY}")
        self._require("concentration", 0.01 <= self.concentration <= 1e4, "in [0.01, 1e4]")
        kinds = self.corruptions.split("+")
        self._require("corruptions", all(k in CORRUPTIONS for k in kinds) and len(set(kinds)) == len(kinds),
                      f"distinct names from {'+'.join(CORRUPTIONS)} joined by '+'")

    def phase_severity(self, phase: int) -> int:
        """0 in the first phase, rising linearly to `severity` in the last."""
        return 0 if self.phases == 1 else round(self.severity * phase / (self.phases - 1))

    def describe(self) -> str:
        levels = ",".join(str(self.phase_severity(k)) for k in range(self.phases))
        return (f"drift: {self.phases} phases, class mix Dirichlet({self.concentration:g}), {self.corruptions} "
                f"at severities {levels} (n={self.n or 'split size'}, seed={self.seed})")

    def _stream(self, data: Dataset, n: int, rng: np.random.Generator) -> Stream:
        classes = np.unique(data.labels)
        kinds = self.corruptions.split("+")
        sources = np.empty(n, dtype=np.int64)
        phases = np.empty(n, dtype=np.int64)
        images = np.empty((n, *data.images.shape[1:]), dtype=np.uint8)
        for phase, rows in enumerate(np.array_split(np.arange(n), self.phases)):
            mix = rng.dirichlet(np.full(len(classes), self.concentration))
            wanted = classes[rng.choice(len(classes), size=len(rows), p=mix / mix.sum())]
            sources[rows] = _draw_within(data.labels, wanted, rng)
            phases[rows] = phase
            for t in rows:
                kind = kinds[rng.integers(len(kinds))]
                images[t] = corrupt(data.images[sources[t]], kind, self.phase_severity(phase), rng)
        return self._from_sources(data, sources, images, phases)


@dataclass(frozen=True)
class Trace(Workload):
    """The order given by a file listing image paths, resized to the model's input; answered against base labels."""

    name: ClassVar[str] = "trace"
    path: str = ""
    fit: str = "crop"

    def _check(self) -> None:
        self._require("path", bool(self.path), "a file listing one image path per line")
        self._require("fit", self.fit in ("crop", "stretch"), "'crop' or 'stretch'")

    def describe(self) -> str:
        return f"trace: the images listed in {self.path}, in order, {self.fit} to the input (n={self.n or 'file'})"

    def generate(self, data: Dataset | None = None, input_shape: InputShape | None = None) -> Stream:
        shape = _trace_shape(input_shape, data)
        entries = _read_trace(Path(self.path))
        first_line: dict[Path, int] = {}
        for lineno, path in entries:
            first_line.setdefault(path, lineno)
        unique = list(first_line)
        index = {path: i for i, path in enumerate(unique)}
        pictures = np.stack([_load_picture(p, first_line[p], self.path, shape, self.fit) for p in unique])
        sources = np.resize(np.array([index[p] for _, p in entries], dtype=np.int64), self.n or len(entries))
        n = len(sources)
        return Stream(self.spec(), self.describe(), pictures[sources], sources, [str(p) for p in unique],
                      np.full(n, UNKNOWN_LABEL, np.int64), np.zeros(n, np.int64), np.zeros(n, bool))


WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (Iid, Zipf, Bursty, Repeat, Drift, Trace)}


# --- parsing specs -----------------------------------------------------------------------------------------------


def parse_workload(text: str) -> Workload:
    """`NAME` or `NAME:KEY=VALUE,KEY=VALUE` (e.g. `bursty:mean_run=20,seed=3`) -> that workload, range-checked."""
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if name not in WORKLOADS:
        raise WorkloadError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    cls = WORKLOADS[name]
    types = _field_types(cls)
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, raw = (s.strip() for s in item.partition("="))
        if not eq or not key or not raw:
            raise WorkloadError(f"{name}: expected KEY=VALUE, got {item!r}")
        if key not in types:
            raise WorkloadError(f"{name} has no parameter {key!r}; its parameters: {', '.join(types)}")
        if key in values:
            raise WorkloadError(f"{name}: {key} given twice")
        values[key] = _convert(name, key, raw, types[key])
    return cls(**values)


def workload_help() -> str:
    """Every workload with its one-line summary and its parameters' defaults (for `--workload help`)."""
    lines = []
    for name, cls in WORKLOADS.items():
        params = ", ".join(f"{f.name}={f.default}" for f in fields(cls))
        lines.append(f"{name}: {cls.__doc__.strip().splitlines()[0]}\n    {params}")
    return "\n".join(lines)


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string"}


@functools.cache
def _field_types(cls: type[Workload]) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _convert(workload: str, key: str, raw: str, expected: type) -> object:
    try:
        return expected(raw)
    except ValueError:
        raise WorkloadError(f"{workload}: {key} must be {_TYPE_WORDS[expected]}, got {raw!r}") from None


# --- drawing -----------------------------------------------------------------------------------------------------


def _zipf_weights(count: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities proportional to rank^-s, the ranks in a seeded random order."""
    weights = (rng.permutation(count) + 1.0) ** -s
    return weights / weights.sum()


def _draw_within(labels: np.ndarray, wanted: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per entry of `wanted` (a class), a row of that class drawn uniformly."""
    rows = np.empty(len(wanted), dtype=np.int64)
    for c in np.unique(wanted):
        at = np.flatnonzero(wanted == c)
        members = np.flatnonzero(labels == c)
        rows[at] = members[rng.integers(len(members), size=len(at))]
    return rows


def _usable_split(workload: str, data: Dataset | None, input_shape: InputShape | None) -> Dataset:
    if data is None:
        raise WorkloadError(f"{workload} draws its requests from a data split: pass one")
    images = data.images
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in CHANNELS or len(images) == 0:
        raise WorkloadError(f"{workload}: expected N >= 1 uint8 images N x H x W x C with C in {CHANNELS}, "
                            f"got {images.dtype} {images.shape}")
    own = (images.shape[3], images.shape[1], images.shape[2])
    if input_shape is not None and tuple(input_shape) != own:
        raise WorkloadError(f"{workload}: the split's images are {own} (channels, height, width) but the model "
                            f"takes {tuple(input_shape)}")
    return data


# --- traces ------------------------------------------------------------------------------------------------------


def _trace_shape(input_shape: InputShape | None, data: Dataset | None) -> InputShape:
    if input_shape is None and data is not None:
        input_shape = (data.images.shape[3], data.images.shape[1], data.images.shape[2])
    if input_shape is None:
        raise WorkloadError("trace: pass input_shape (channels, height, width), the model's input")
    if len(input_shape) != 3 or input_shape[0] not in CHANNELS or min(input_shape[1:]) < 1:
        raise WorkloadError(f"trace: input_shape must be (channels in {CHANNELS}, height >= 1, width >= 1), "
                            f"got {tuple(input_shape)}")
    return tuple(int(v) for v in input_shape)


def _read_trace(listing: Path) -> list[tuple[int, Path]]:
    """(line number, resolved image path) of every entry; blank lines and `#` comments skipped."""
    try:
        text = listing.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"trace: cannot read {listing}: {exc}") from exc
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append((lineno, (listing.parent / line).resolve()))  # an absolute line stays absolute
    if not entries:
        raise WorkloadError(f"trace: {listing} lists no images (one path per line)")
    return entries


def _load_picture(path: Path, lineno: int, listing: str, shape: InputShape, fit: str) -> np.ndarray:
    channels, height, width = shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise WorkloadError(f"trace: {listing}:{lineno}: cannot read image {path}: {exc}") from exc
    if fit == "crop":
        img = img.crop(_centre_box(img.size, width / height))
    img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(height, width, channels)


def _centre_box(size: tuple[int, int], aspect: float) -> tuple[int, int, int, int]:
    """The largest centred box of `size` (width, height) with width / height = `aspect`."""
    w, h = size
    crop_w, crop_h = min(w, max(1, round(h * aspect))), min(h, max(1, round(w / aspect)))
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    return left, top, left + crop_w, top + crop_h
