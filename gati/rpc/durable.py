"""A cluster service's state directory: deployed cache versions and the retrainer's samples survive restarts.

The cluster config's `state_dir` holds one folder per service (its process name); without it every service
keeps its state in memory only, as before.

    <state_dir>/<service>/versions/<cut name>/v0003.pt     a deployed version's cache file (Cache.save's bytes)
    <state_dir>/<service>/versions/<cut name>/v0003.json   its record: number, variant, the file's sha256, the
                                                           bundle it belongs to, the retrainer gate's scores
    <state_dir>/retrainer/samples/<cut name>.npz           the retrainer's samples at its last snapshot

Every file is written by gati/learning/atomic.py's atomic writes (a temporary sibling, flushed to disk, renamed
over the old file), so a crash, SIGKILL included, leaves the old or the new file, never a mix; temporary
leftovers, and cache files whose record a crash never wrote, are deleted when the folder is opened. A version counts once its record is written (after its cache
file) and the file's sha256 matches the record: a version whose record a crash never wrote is ignored. The last
`KEEP` versions of each cut are kept, older ones deleted.

A predictor writes each version it accepts before it answers `deploy`; the retrainer writes a version after the
predictor accepted it, and snapshots its samples every `snapshot_s` seconds when they changed (and when it
drains): a SIGKILL loses at most the samples accepted during the last `snapshot_s` seconds and the one snapshot
being written. On start each resumes, per cut, the highest recorded version that fits the bundle's cut (same
bundle, variant, input shape and class count; otherwise it says why in the log and serves the bundle's).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gati.cache import Cache
from gati.errors import GatiError
from gati.learning.atomic import atomic_npz, atomic_write, load_npz, remove_leftovers
from gati.rpc.cachefile import cache_from_bytes, mismatch
from gati.rpc.samples import SampleArrays

log = logging.getLogger("gati.rpc.durable")
KEEP = 2  # versions kept per cut: the one serving and the one before it


@dataclass
class VersionRecord:
    """What a version's .json holds."""
    cut: int
    cut_name: str
    version: int
    variant: str
    sha256: str           # of the cache file beside it
    bundle_sha256: str    # the bundle whose cut it was deployed to
    saved_unix: float
    certificate: dict[str, float] = field(default_factory=dict)  # the retrainer gate's scores ({}: not known here)
    threshold: float | None = None  # the confidence it answers at (None: the plan's)


@dataclass
class Resumed:
    version: int
    cache: Cache
    blob: bytes
    record: VersionRecord


class VersionStore:
    """A service's deployed versions, by cut name, under `folder` (created when missing)."""

    def __init__(self, folder: Path, bundle_sha256: str, keep: int = KEEP):
        self.folder, self.bundle_sha256, self.keep = Path(folder), bundle_sha256, keep
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GatiError(f"cannot use {self.folder} as a state directory: {e}") from e
        for folder in self.folder.iterdir():  # what a crash left: temporary files, cache files without a record
            if folder.is_dir():
                remove_leftovers(folder)
                for orphan in folder.glob("v[0-9]*.pt"):
                    if not orphan.with_suffix(".json").exists():
                        orphan.unlink(missing_ok=True)

    def _cut(self, cut_name: str) -> Path:
        folder = self.folder / cut_name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def save(self, cut: int, cut_name: str, version: int, variant: str, blob: bytes,
             certificate: dict[str, float] | None = None, threshold: float | None = None) -> None:
        """The cache file, then its record (which makes the version count), then older versions pruned."""
        folder = self._cut(cut_name)
        record = VersionRecord(cut, cut_name, version, variant, hashlib.sha256(blob).hexdigest(),
                               self.bundle_sha256, time.time(), dict(certificate or {}), threshold)
        atomic_write(folder / f"v{version:04d}.pt", blob)
        atomic_write(folder / f"v{version:04d}.json", json.dumps(asdict(record), indent=1).encode())
        for old in self.versions(cut_name)[:-self.keep]:
            for suffix in (".json", ".pt"):  # the record first: a crash in between leaves no half version
                (folder / f"v{old:04d}{suffix}").unlink(missing_ok=True)

    def versions(self, cut_name: str) -> list[int]:
        """Numbers that have a record, ascending."""
        folder = self.folder / cut_name
        return sorted(int(p.stem[1:]) for p in folder.glob("v[0-9]*.json") if p.stem[1:].isdigit())

    def latest(self, cut_name: str, served: Cache) -> Resumed | None:
        """The highest recorded version that may replace `served` (the bundle's cache of the cut); None when
        there is none, or when the highest readable one belongs to another bundle or another kind of cache."""
        folder = self._cut(cut_name)
        for version in reversed(self.versions(cut_name)):
            try:
                record = VersionRecord(**json.loads((folder / f"v{version:04d}.json").read_text()))
                blob = (folder / f"v{version:04d}.pt").read_bytes()
                if hashlib.sha256(blob).hexdigest() != record.sha256:
                    raise GatiError("the cache file does not match its record's sha256")
                cache = cache_from_bytes(blob)
            except (OSError, ValueError, TypeError, GatiError) as e:
                log.warning("%s: version %d of cut %s is unreadable (%s); trying the one before", folder, version,
                            cut_name, e)
                continue
            wrong = mismatch(cache, served) or (
                None if record.bundle_sha256 == self.bundle_sha256 else
                f"it was deployed for bundle {record.bundle_sha256[:12]}, this is {self.bundle_sha256[:12]}")
            if wrong:
                log.error("%s: not resuming version %d of cut %s: %s; serving the bundle's version 0", folder,
                          version, cut_name, wrong)
                return None
            return Resumed(version, cache, blob, record)
        return None


# ---- the retrainer's samples ------------------------------------------------------------------------------------

def save_samples(path: Path, samples: SampleArrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_npz(path, {"features": samples.features, "labels": samples.labels, "logits": samples.logits,
                      "has_logits": samples.has_logits, "requests": samples.requests})


def load_samples(path: Path, feat_shape: tuple[int, ...], num_classes: int) -> SampleArrays:
    """The snapshot's samples; none (and a log line) when there is none or it does not fit the cut."""
    none = SampleArrays.empty(feat_shape, num_classes)
    if path.parent.is_dir():
        remove_leftovers(path.parent)
    try:
        arrays = load_npz(path)
    except GatiError as e:
        log.error("%s; starting without samples", e)
        return none
    if arrays is None:
        return none
    feats, labels, logits, has = (arrays.get(k) for k in ("features", "labels", "logits", "has_logits"))
    if feats is None or labels is None or logits is None or has is None or feats.shape[1:] != tuple(feat_shape) \
            or logits.shape[1:] != (num_classes,) or not len(feats) == len(labels) == len(logits) == len(has) \
            or (len(labels) and not 0 <= labels.min() <= labels.max() < num_classes) \
            or not np.isfinite(feats).all():
        log.error("%s does not hold samples of features %s and %d classes; starting without samples", path,
                  tuple(feat_shape), num_classes)
        return none
    requests = arrays.get("requests")  # absent in snapshots from before joint samples: none is joint
    if requests is None or len(requests) != len(labels):
        requests = np.full(len(labels), -1, np.int64)
    return SampleArrays(feats.astype(np.float32), labels.astype(np.int64), logits.astype(np.float32),
                        has.astype(bool), requests.astype(np.int64))
