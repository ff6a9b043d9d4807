"""Re-targeting (`gati calibrate`) and re-planning for another device (`gati plan`).

Both reuse the caches and the calibration scores stored in the bundle; only the plan, the
thresholds, the certificate (and for `plan`, the profile) change, written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gati.bundle import (
    cache_file,
    load_bundle,
    read_calibration,
    read_manifest,
    update_manifest,
)
from gati.cache import load_cache
from gati.pipeline.planner import make_plan
from gati.pipeline.profile import Profile, profile_model


def _budget(manifest: dict, memory_mb: float | None) -> float:
    if memory_mb is not None:
        return memory_mb
    return manifest.get("memory_mb") or float("inf")


def _replan(path: Path, manifest: dict, profile: Profile, target: float, memory_mb: float) -> dict:
    arrays, ids = read_calibration(path)
    nbytes = {(c["cut"], c["variant"]): c["nbytes"] for c in manifest["caches"]}
    plan, certified, choice = make_plan(arrays, ids, arrays["labels"], profile, nbytes, manifest["cuts"],
                                        target, memory_mb)
    return {"plan": plan.to_dict(), "target": float(target), "certified": certified,
            "memory_mb": None if memory_mb == float("inf") else float(memory_mb),
            "expected": {"latency_ms": choice.latency_ms, "base_ms": profile.base_ms,
                         "hit_rate": choice.hit_rate, "agreement": choice.agreement},
            "profile": profile.to_dict()}


def retarget(path: Path, target: float, out: Path | None = None, memory_mb: float | None = None) -> dict:
    manifest = read_manifest(path)
    profile = Profile.from_dict(manifest["profile"])
    changes = _replan(path, manifest, profile, target, _budget(manifest, memory_mb))
    return read_manifest(update_manifest(path, changes, out))


def replan_for_device(path: Path, device: str, out: Path | None = None, memory_mb: float | None = None) -> dict:
    """Re-measure stages and every stored cache on `device`, then re-plan at the bundle's target."""
    bundle = load_bundle(path, device)
    manifest = bundle.manifest
    caches = {(c["cut"], c["variant"]): load_cache(Path(path) / cache_file(c["cut"], c["variant"])).to(device)
              for c in manifest["caches"]}
    shape = tuple(bundle.input_shape)
    example = bundle.preprocess(np.zeros((1, shape[1], shape[2], shape[0]), dtype=np.uint8)).to(device)
    profile = profile_model(bundle.model, bundle.staged, caches, example, device)
    changes = _replan(Path(path), manifest, profile, manifest["target"], _budget(manifest, memory_mb))
    return read_manifest(update_manifest(path, changes, out))
