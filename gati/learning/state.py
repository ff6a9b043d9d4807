"""The learner's state directory: what survives a restart, every file written atomically.

    <state>/learner.json           the bundle it belongs to, the live bound's counts, the fallback state
    <state>/samples.npz            the most recent samples (bounded by the learner's capacity)
    <state>/tier.npz               the neighbour tier's slots
    <state>/versions/v0001/        one folder per deployed version: version.json (number, certificate, levels,
                                   hit rate, what it was fitted and certified on) and caches/NN-variant.pt
    <state>/reviews.jsonl          one line per re-certification, deployed or not (the ledger)

A file is written to a temporary sibling, flushed to disk and renamed over the old one; a version folder is
written as a temporary folder and renamed into place; so a crash (even SIGKILL) leaves either the old or the new
content, never a mix. Temporary leftovers are removed when the directory is opened. The ledger is appended to
(one flushed line per review); a line torn by a crash is skipped when read. A restarted learner resumes the
highest complete version folder: only certified versions that passed review are ever written there.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gati.bundle.layout import cache_file
from gati.bundle.manifest import Certificate
from gati.cache import Cache, load_cache
from gati.errors import GatiError
from gati.learning.atomic import (
    TEMP_PREFIX,
    atomic_npz,
    atomic_write,
    fsync_dir,
    load_npz,
    remove_leftovers,
    write_synced,
)
from gati.learning.samples import SampleSet
from gati.models import sha256_file

LEARNER, SAMPLES, TIER, REVIEWS, VERSIONS, VERSION = (
    "learner.json", "samples.npz", "tier.npz", "reviews.jsonl", "versions", "version.json")


@dataclass
class Window:
    """A span of the served stream, by request index: what a version was fitted or certified on."""

    first: int
    last: int
    samples: int


@dataclass
class VersionRecord:
    """A deployed version, as version.json holds it (its caches sit beside it)."""

    number: int
    created: str
    slots: list[tuple[int, str]]  # (cut, TIER or the cache's variant), in the order the levels list thresholds
    levels: list[list[float]]  # certified threshold vectors over the slots, conservative to chosen
    certificate: Certificate
    hit_rate: float  # on the samples that certified it, at the chosen vector
    expected_ms: float  # the latency model's mean on those samples, at the chosen vector
    fitted_on: Window  # empty (0, 0, 0) for a retuned version: its caches were not refitted
    certified_on: Window
    bundle_sha256: str
    made_by: str = ""  # the review's trial that made it: retune (the same caches) or refit (new ones)
    cache_variants: dict[int, str] = field(default_factory=dict)  # cut -> variant of the cache saved there

    def to_json(self) -> str:
        return json.dumps(_plain(asdict(self)), indent=1)

    @classmethod
    def from_json(cls, text: str, where: str) -> VersionRecord:
        try:
            raw = json.loads(text)
            raw["slots"] = [tuple(s) for s in raw["slots"]]
            raw["levels"] = [[float(t) for t in level] for level in raw["levels"]]
            raw["certificate"] = Certificate(**raw["certificate"])
            raw["fitted_on"], raw["certified_on"] = Window(**raw["fitted_on"]), Window(**raw["certified_on"])
            raw["cache_variants"] = {int(c): v for c, v in raw.get("cache_variants", {}).items()}
            return cls(**raw)
        except (KeyError, TypeError, ValueError) as e:
            raise GatiError(f"{where} is corrupt: {type(e).__name__}: {e}") from e


class StateDir:
    """The learner's files under one folder (created when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            (self.path / VERSIONS).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GatiError(f"cannot use {self.path} as a state directory: {e}") from e
        remove_leftovers(self.path, self.path / VERSIONS)

    # ---- the learner's progress ----------------------------------------------------------------------------

    def save_progress(self, progress: dict[str, Any]) -> None:
        atomic_write(self.path / LEARNER, json.dumps(_plain(progress), indent=1).encode())

    def load_progress(self) -> dict[str, Any] | None:
        file = self.path / LEARNER
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise GatiError(f"{file} is corrupt: {e}") from e

    # ---- samples and the tier ------------------------------------------------------------------------------

    def save_samples(self, samples: SampleSet) -> None:
        atomic_npz(self.path / SAMPLES, samples.to_arrays())

    def load_samples(self) -> SampleSet | None:
        arrays = load_npz(self.path / SAMPLES)
        return None if arrays is None else SampleSet.from_arrays(arrays)

    def save_tier(self, arrays: dict[str, np.ndarray]) -> None:
        atomic_npz(self.path / TIER, arrays)

    def load_tier(self) -> dict[str, np.ndarray] | None:
        return load_npz(self.path / TIER)

    # ---- versions and reviews ------------------------------------------------------------------------------

    def save_version(self, record: VersionRecord, caches: dict[int, Cache]) -> Path:
        """version.json and its caches into versions/vNNNN, atomically (a temporary folder renamed into place)."""
        out = self.path / VERSIONS / f"v{record.number:04d}"
        if out.exists():
            raise GatiError(f"{out} exists: version {record.number} was already written")
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.path / VERSIONS))
        try:
            (tmp / "caches").mkdir()
            digest = hashlib.sha256()
            for cut, cache in sorted(caches.items()):
                cache.save(tmp / cache_file(cut, cache.variant))
                digest.update(sha256_file(tmp / cache_file(cut, cache.variant)).encode())
            record.cache_variants = {cut: cache.variant for cut, cache in caches.items()}
            record.certificate = replace(record.certificate, caches_sha256=digest.hexdigest())
            write_synced(tmp / VERSION, record.to_json().encode())
            fsync_dir(tmp)
            os.rename(tmp, out)
            fsync_dir(out.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    def versions(self) -> list[int]:
        """The numbers of the complete version folders, ascending."""
        found = []
        for folder in (self.path / VERSIONS).glob("v[0-9]*"):
            if (folder / VERSION).is_file() and folder.name[1:].isdigit():
                found.append(int(folder.name[1:]))
        return sorted(found)

    def load_version(self, number: int) -> tuple[VersionRecord, dict[int, Cache]]:
        folder = self.path / VERSIONS / f"v{number:04d}"
        record = VersionRecord.from_json((folder / VERSION).read_text(), str(folder / VERSION))
        caches = {cut: load_cache(folder / cache_file(cut, variant)) for cut, variant in record.cache_variants.items()}
        return record, caches

    def append_review(self, review: dict[str, Any]) -> None:
        with open(self.path / REVIEWS, "a", encoding="utf-8") as f:
            f.write(json.dumps(_plain(review)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def reviews(self) -> list[dict[str, Any]]:
        """Every review in the ledger; a last line torn by a crash is skipped."""
        file = self.path / REVIEWS
        if not file.is_file():
            return []
        out = []
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays as Python values, tuples as lists, infinities as strings JSON can hold."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return value
