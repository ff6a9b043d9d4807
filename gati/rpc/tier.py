"""The online neighbour tier in the cluster, kept by the neighbour-index service.

In process the tier is `gati.learning.neighbours.NeighbourTier` inside the learner (gati/learning/online.py); in
the cluster the same object lives in the index service, and the cluster's parts play the learner's roles:

- the executor reduces the activation at the tier's cut to the tier's unit vector (the same `unit_vector`) and
  asks `judge` beside the cut's cache lookup (the tier first: its hit is the answer, else the cache's verdict);
  every request that ran to the end (a miss, or a sampled request's shadow run) is then `remember`ed with the
  full model's answer, as the learner stores it;
- a sampled request's shadow result carries the tier's verdict on it, as it stood before the request was stored:
  what the retrainer's reviews score the tier by (the tier cannot be replayed later, it changes with every
  request);
- the retrainer certifies the tier's threshold with the rest of the cascade (gati/rpc/autorefit.py) and deploys
  it here (`deploy_tier`), numbered like a cache version; until then the threshold is infinite and the tier
  answers nothing.

What survives a restart (with a state folder): the threshold and its version, written before `deploy_tier`
answers, and the stored vectors, snapshotted every `snapshot_s` seconds when they changed (and when the service
drains). A restarted retrainer that lost its own record adopts the index's (gati/rpc/retrainer.py); an index that
lost its record serves an infinite threshold until the retrainer pushes its own again.

Memory is the tier's bound (`capacity` vectors, least recently used replaced; gati/learning/neighbours.py says why).
"""
from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gati.errors import GatiError, InvalidInput
from gati.learning.atomic import atomic_npz, atomic_write, load_npz, remove_leftovers
from gati.learning.neighbours import NeighbourTier
from gati.learning.tier_config import TierConfig
from gati.rpc.gen.gati_idl.ttypes import Features, InvalidRequest, LookupReply, TierInfo, TierUpdate
from gati.rpc.metrics import IndexMetrics
from gati.rpc.tensors import from_tensor

log = logging.getLogger("gati.rpc.tier")
VECTORS, RECORD = "tier.npz", "tier.json"


@dataclass(frozen=True)
class TierRecord:
    """The tier's deployed threshold: what `deploy_tier` writes and a restart resumes."""
    version: int
    threshold: float          # inf: the tier answers nothing
    bundle_sha256: str

    def save(self, folder: Path) -> None:
        data = {**asdict(self), "threshold": None if math.isinf(self.threshold) else self.threshold}
        atomic_write(folder / RECORD, json.dumps(data, indent=1).encode())

    @classmethod
    def load(cls, folder: Path, bundle_sha256: str) -> TierRecord | None:
        """The record in `folder`; None when there is none, it is unreadable or it belongs to another bundle."""
        path = folder / RECORD
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            threshold = math.inf if raw["threshold"] is None else float(raw["threshold"])
            record = cls(int(raw["version"]), threshold, str(raw["bundle_sha256"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("%s is unreadable (%s); the tier starts at an infinite threshold", path, e)
            return None
        if record.bundle_sha256 != bundle_sha256:
            log.error("%s belongs to bundle %s, this is %s; the tier starts at an infinite threshold", path,
                      record.bundle_sha256[:12], bundle_sha256[:12])
            return None
        return record


def check_threshold(threshold: float) -> float:
    """A deployable threshold: a confidence >= 0, or infinity (never answers); InvalidInput otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold) \
            or threshold < 0:
        raise InvalidInput(f"a tier threshold is a confidence >= 0 (infinity: never answers), got {threshold!r}")
    return float(threshold)


class TierServer:
    """The index service's tier: judges, remembers, takes deployed thresholds; thread-safe."""

    def __init__(self, config: TierConfig, in_shape: tuple[int, int, int], num_classes: int, cut_name: str,
                 bundle_sha256: str, metrics: IndexMetrics, folder: Path | None = None):
        self.tier = NeighbourTier(config, in_shape, num_classes)
        self.cut_name, self.bundle_sha256 = cut_name, bundle_sha256
        self.metrics, self.folder = metrics, folder
        self.record = TierRecord(0, math.inf, bundle_sha256)
        self._deploy_lock = threading.Lock()
        self._snapshotted = 0
        if folder is not None:
            self._resume(folder)
        metrics.tier_size.set_function(lambda: self.tier.size)
        metrics.tier_bytes.set(self.tier.nbytes())
        self._show()

    # ---- the request path -----------------------------------------------------------------

    def judge(self, features: Features) -> LookupReply:
        record = self.record  # read once: a deploy in flight swaps it whole
        try:
            vector = self._vectors(features.features, "features")
            if len(vector) != 1:
                raise InvalidInput(f"judge takes one vector, got {len(vector)}")
            verdict = self.tier.judge(vector[0], record.threshold)
            hit = verdict.confidence >= record.threshold
            outcome, error = ("hit" if hit else "miss"), ""
        except InvalidInput as e:  # no verdict: the executor treats the cut as missing, never as a made-up miss
            verdict, hit, outcome, error = None, False, "error", str(e)
        self.metrics.tier_judged.labels(outcome).inc()
        return LookupReply(features.request_id, features.cut, verdict.label if verdict else -1,
                           verdict.confidence if verdict else 0.0, hit, record.version, "index", error)

    def remember(self, vectors, labels) -> None:
        """Store requests that ran to the end; a malformed message is dropped whole (oneway: nobody to tell)."""
        try:
            x = self._vectors(vectors, "vectors")
            y = from_tensor(labels, "labels")
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise InvalidInput(f"labels must be int64 [{len(x)}], got {y.dtype} {y.shape}")
            if len(y) and not 0 <= int(y.min()) <= int(y.max()) < self.tier.num_classes:
                raise InvalidInput(f"labels must be classes 0..{self.tier.num_classes - 1}")
        except InvalidInput as e:
            self.metrics.refused.labels("tier").inc()
            log.warning("dropped a tier message: %s", e)
            return
        for v, label in zip(x, y):
            self.tier.add(v, int(label))
        self.metrics.added.inc(len(y))

    def _vectors(self, t, what: str) -> np.ndarray:
        """float32 [M, dim] unit vectors (within rounding): anything else would corrupt similarities."""
        x = from_tensor(t, what)
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != self.tier.dim or not len(x):
            raise InvalidInput(f"tier {what} must be float32 [M, {self.tier.dim}], got {x.dtype} {x.shape}")
        norms = np.linalg.norm(x, axis=1)
        if not np.isfinite(norms).all() or np.abs(norms - 1.0).max() > 1e-3:
            raise InvalidInput(f"tier {what} must be finite unit vectors")
        return x

    # ---- management -----------------------------------------------------------------------

    def deploy(self, update: TierUpdate) -> None:
        with self._deploy_lock:
            if update.version <= self.record.version:
                raise InvalidRequest(f"the tier already serves version {self.record.version}; refusing version "
                                     f"{update.version}")
            try:
                threshold = check_threshold(update.threshold)
            except InvalidInput as e:
                raise InvalidRequest(str(e)) from e
            record = TierRecord(update.version, threshold, self.bundle_sha256)
            if self.folder is not None:  # on disk before it serves: a restart resumes what was acknowledged
                try:
                    record.save(self.folder)
                except (OSError, GatiError) as e:
                    raise InvalidRequest(f"cannot write tier version {update.version}: {e}") from e
            self.record = record
        self._show()
        log.info("tier at %s now answers at threshold %s (version %d)", self.cut_name, threshold, update.version)

    def info(self) -> TierInfo:
        r = self.record
        return TierInfo(r.version, r.threshold, self.tier.config.cut, self.tier.size, self.tier.config.capacity)

    def _show(self) -> None:
        self.metrics.tier_version.set(self.record.version)
        self.metrics.tier_threshold.set(self.record.threshold)

    # ---- the state folder -----------------------------------------------------------------

    def snapshot(self) -> None:
        """Write the stored vectors when they changed since the last snapshot."""
        inserted = self.tier.inserted
        if self.folder is None or inserted == self._snapshotted:
            return
        atomic_npz(self.folder / VECTORS, self.tier.export())
        self._snapshotted = inserted

    def _resume(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GatiError(f"cannot use {folder} as the tier's state folder: {e}") from e
        remove_leftovers(folder)
        record = TierRecord.load(folder, self.bundle_sha256)
        if record is not None:
            self.record = record
        try:
            saved = load_npz(folder / VECTORS)
            if saved is not None:
                self.tier.restore(saved)
        except (GatiError, KeyError, ValueError) as e:
            log.error("the tier's vectors in %s are unusable (%s); starting empty", folder, e)
        self._snapshotted = self.tier.inserted
        log.info("tier resumed version %d (threshold %s) and %d vectors from %s", self.record.version,
                 self.record.threshold, self.tier.size, folder)
