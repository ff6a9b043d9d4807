"""`gati compact`: store a bundle's dense caches in bfloat16 and re-certify what they now answer.

Half the cache memory, and cheaper lookups on a CPU, where a lookup after a stage mostly waits for
its weights from DRAM. Rounding the weights changes some answers, so nothing from the float32
calibration is reused: the calibration images are scored again by the rounded caches, the bundle is
re-profiled on this CPU, re-planned and re-certified at its target. Needs the calibration images
(matched by id against the bundle), not the training set; written atomically like every bundle.

Profiling and planning run once, in a fresh process (`replan_for_device` through a spawned worker):
measured in the process that had just pushed 5,000 images through ResNet-50 in batches of 256, the
plain model and some stages took far longer than in a fresh process, which would have planned for a
machine that does not exist.
"""
from __future__ import annotations

import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from gati.bundle import load_bundle, revise_bundle
from gati.bundle.manifest import CacheRecord
from gati.data import load_split, select_ids
from gati.errors import BundleError
from gati.pipeline.extract import extract, extraction_batch
from gati.pipeline.retarget import replan_for_device
from gati.pipeline.score import calibration_arrays

MAX_BASE_CHANGES = 0.01  # more base answers than this changing means another model or other data


def compact(path: str | Path, data_dir: str | Path, out: str | Path | None = None) -> Path:
    path = Path(path)
    out = Path(out or path)
    bundle = load_bundle(path, "cpu")
    info, m = bundle.info, bundle.manifest
    stored, ids = info.calibration()
    calib = select_ids(load_split(m.dataset, data_dir, m.calibration.split), ids)

    caches = {}
    for c in m.caches:
        cache = info.load_cache(c.cut, c.variant)
        caches[(c.cut, c.variant)] = cache.with_params(bf16=1) if "bf16" in cache.config() else cache
    wanted: dict[int, dict[str, str]] = {}
    for (cut, variant), cache in caches.items():
        wanted.setdefault(cut, {})[variant] = cache.reducer_key

    feats, logits = extract(bundle.staged, calib, bundle.preprocess, wanted, "cpu", extraction_batch("cpu"),
                            "calib")
    base = logits.argmax(1).numpy()
    changed = float(np.mean(base != stored["base"]))
    if changed > MAX_BASE_CHANGES:
        raise BundleError(f"the base model answers {changed:.1%} of the calibration images differently "
                          "from when the bundle was built: another checkpoint or other images?")
    arrays = calibration_arrays(caches, feats, base, calib.labels)
    del feats

    records = [CacheRecord(c.cut, c.cut_name, c.variant, int(caches[(c.cut, c.variant)].nbytes()), c.reducer)
               for c in m.caches]
    rescored = m.replace(caches=records, cache_dtype="bfloat16",
                         certified=replace(m.certified, scored_on="cpu float32, bfloat16 caches"))
    # The rescored manifest still holds the float32 plan: it is never served, because the re-plan
    # below writes `out` from this private copy in one atomic step (and `path` stays intact if it fails).
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.compact-", dir=out.parent) as tmp:
        private = revise_bundle(path, rescored, Path(tmp) / "bundle", caches=caches, calibration=arrays)
        replan_in_fresh_process(private, "cpu", out)
    return out


def replan_in_fresh_process(path: Path, device: str, out: Path) -> None:
    """`replan_for_device` in a spawned interpreter, so the profile measures a quiet process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(replan_for_device, path, device, out, None, "compact").result()
