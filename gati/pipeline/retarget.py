"""Revising a bundle's plan from its stored scores: re-targeting (`gati calibrate`) and re-planning
for another device (`gati plan`).

Both reuse the caches and the calibration scores stored in the bundle; only the plan, the
thresholds, the certificate (and for `plan`, the profile) change, written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gati.bundle import BundleInfo, load_bundle, read_bundle, revise_bundle
from gati.bundle.manifest import Manifest, Profile
from gati.pipeline.planner import CertifyContext, make_plan
from gati.pipeline.profile import profile_model


def retarget(path: Path, target: float, out: Path | None = None, memory_mb: float | None = None) -> Manifest:
    """A new promise (`target`, and optionally a memory budget) on the bundle's own profile."""
    info = read_bundle(path)
    return _replan(info, info.manifest.profile, target, memory_mb, out, "calibrate")


def replan_for_device(path: Path, device: str, out: Path | None = None, memory_mb: float | None = None,
                      command: str = "plan") -> Manifest:
    """Re-measure stages and every stored cache on `device`, then re-plan at the bundle's target."""
    bundle = load_bundle(path, device)
    info = bundle.info
    caches = {(c.cut, c.variant): info.load_cache(c.cut, c.variant).to(device) for c in info.manifest.caches}
    c, h, w = bundle.input_shape
    example = bundle.preprocess(np.zeros((1, h, w, c), dtype=np.uint8)).to(device)
    profile = profile_model(bundle.model, bundle.staged, caches, example, device)
    return _replan(info, profile, info.manifest.target, memory_mb, out, command)


def _replan(info: BundleInfo, profile: Profile, target: float, memory_mb: float | None, out: Path | None,
            command: str) -> Manifest:
    """Every re-plan is another look at the same certify part: it spends the next share of alpha."""
    m = info.manifest
    budget = memory_mb if memory_mb is not None else (m.memory_mb or float("inf"))
    arrays, ids = info.calibration()
    nbytes = {(c.cut, c.variant): c.nbytes for c in m.caches}
    context = CertifyContext(command, len(m.looks) + 1, m.dataset, m.calibration.split, m.certified.scored_on,
                             profile.device)
    planned = make_plan(arrays, ids, arrays["labels"], profile, nbytes, m.cuts, target, context, budget)
    revised = m.replace(plan=planned.plan, target=float(target), certified=planned.certified,
                        expected=planned.expected, profile=profile, looks=[*m.looks, planned.look],
                        memory_mb=None if budget == float("inf") else float(budget))
    revise_bundle(info.path, revised, out)
    return revised
