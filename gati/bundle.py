"""Bundles: self-contained folders holding everything needed to serve a model with its caches.

    <bundle>/manifest.yaml        architecture, checkpoint path + SHA-256, preprocessing, classes,
                                  cuts, plan, thresholds, target, certified bound, calibration ids
                                  hash, profile + device, versions
    <bundle>/caches/<cut>-<variant>.pt   every fitted cache (the plan uses some of them)
    <bundle>/calibration.npz      every cache's scores on the calibration images, so that
                                  `gati calibrate` and `gati plan` re-target without the data
    <bundle>/calibration_ids.txt  the calibration image ids (eval refuses overlapping splits)

A bundle is written into a temporary sibling folder and renamed into place, so a crash never
leaves half a bundle behind. Its identity (`Bundle.sha256`) is the hash of its manifest.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import yaml
from torch import nn

from gati.cache import Cache, load_cache
from gati.errors import BundleError, CheckpointError, GatiError
from gati.models import build_model, load_checkpoint, sha256_file
from gati.models.split import StagedModel, split_model
from gati.preprocess import Preprocess
from gati.runtime.plan import Plan

MANIFEST = "manifest.yaml"
FORMAT_VERSION = 1


@dataclass
class Bundle:
    path: Path
    manifest: dict
    model: nn.Module
    staged: StagedModel
    caches: dict[int, Cache]   # the plan's caches, by cut index
    plan: Plan
    preprocess: Preprocess
    classes: list[str]
    input_shape: tuple[int, int, int]
    sha256: str


def cache_file(cut: int, variant: str) -> str:
    return f"caches/{cut:02d}-{variant}.pt"


def make_model(manifest: dict) -> nn.Module:
    """The base architecture named in a manifest: a built-in arch or a user's `pkg.mod:factory`."""
    if manifest.get("model_module"):
        return import_factory(manifest["model_module"])(manifest["num_classes"])
    return build_model(manifest["arch"], manifest["num_classes"], Preprocess.from_dict(manifest["preprocess"]).channels)


def import_factory(spec: str) -> Callable[[int], nn.Module]:
    """`pkg.module:function`, called with num_classes, returning an nn.Module."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise GatiError(f"--model-module must look like 'package.module:factory', got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise GatiError(f"cannot import model factory {spec!r}: {e}") from e


def write_bundle(out: Path, manifest: dict, caches: dict[tuple[int, str], Cache],
                 calibration: dict[str, np.ndarray], calibration_ids: list[str],
                 overwrite: bool = False) -> Path:
    """Write everything to a temporary sibling folder, then rename it into place."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"{out} already exists (pass --force to replace it)")
    with _staged(out) as tmp:
        (tmp / "caches").mkdir()
        for (cut, variant), cache in caches.items():
            cache.save(tmp / cache_file(cut, variant))
        np.savez_compressed(tmp / "calibration.npz", **calibration)
        (tmp / "calibration_ids.txt").write_text("\n".join(calibration_ids) + "\n")
        (tmp / MANIFEST).write_text(_dump(manifest))
    return out


def update_manifest(path: Path, changes: dict, out: Path | None = None) -> Path:
    """Re-target or re-plan a bundle: copy it (or itself), change manifest keys, swap atomically."""
    path, out = Path(path), Path(out or path)
    manifest = read_manifest(path)
    manifest.update(changes)
    with _staged(out) as tmp:
        shutil.copytree(path, tmp, dirs_exist_ok=True)
        (tmp / MANIFEST).write_text(_dump(manifest))
    return out


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A temporary sibling folder that replaces `out` when the block succeeds, and vanishes if not."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _plain(value):
    """Manifest values as plain Python (numpy scalars and tuples do not serialise to safe YAML)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        return str(value)  # e.g. torch.__version__ is a str subclass
    return value


def _dump(manifest: dict) -> str:
    return yaml.safe_dump(_plain(manifest), sort_keys=False)


def read_manifest(path: Path) -> dict:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path} is not a bundle: {MANIFEST} is missing")
    try:
        manifest = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise BundleError(f"{file} is not valid YAML: {e}") from e
    required = ("format_version", "num_classes", "checkpoint", "cuts", "plan", "preprocess", "classes")
    missing = [k for k in required if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise BundleError(f"{file} lacks {missing}: corrupt or not written by gati")
    if manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(f"{file} has format {manifest['format_version']}, this gati reads {FORMAT_VERSION}")
    return manifest


def read_calibration(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    path = Path(path)
    try:
        with np.load(path / "calibration.npz") as data:
            arrays = {k: data[k] for k in data.files}
        ids = (path / "calibration_ids.txt").read_text().split()
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: calibration data is missing or corrupt ({e})") from e
    return arrays, ids


def load_bundle(path: str | Path, device: str = "cpu", verify_checkpoint: bool = True) -> Bundle:
    path = Path(path)
    manifest = read_manifest(path)
    model = make_model(manifest)
    checkpoint = Path(manifest["checkpoint"]["path"])
    if verify_checkpoint and checkpoint.is_file():
        digest = sha256_file(checkpoint)
        if digest != manifest["checkpoint"]["sha256"]:
            raise CheckpointError(f"checkpoint {checkpoint} changed since the bundle was built "
                                  f"(sha256 {digest[:12]}..., manifest says "
                                  f"{manifest['checkpoint']['sha256'][:12]}...): rebuild the bundle")
    load_checkpoint(model, checkpoint)
    model = model.to(device).eval()
    staged = split_model(model, manifest["cuts"]).to(device).eval()
    plan = Plan.from_dict(manifest["plan"])
    caches = {e.cut: load_cache(path / cache_file(e.cut, e.variant)) for e in plan.entries}
    for cache in caches.values():
        if hasattr(cache, "to"):
            cache.to(device)
    pre = Preprocess.from_dict(manifest["preprocess"])
    digest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    return Bundle(path, manifest, model, staged, caches, plan, pre, list(manifest["classes"]), pre.input_shape, digest)


def torch_device_ok(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GatiError(f"device {device!r} requested but CUDA is not available on this machine")
