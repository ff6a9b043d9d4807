"""Bundles: self-contained folders holding everything needed to serve a model with its caches.

One way to open a bundle, at two depths:

- `read_bundle(path)`: the manifest and the bundle's identity, no model (what the aggregator,
  predictors, index and retrainer need; cheap);
- `load_bundle(path, device)`: that plus the base model (checkpoint hash checked), its stages and
  the plan's caches on `device` (the engine, the executor, eval, bench).

A bundle is written into a temporary sibling folder and renamed into place, so a crash never
leaves half a bundle behind; revising one (re-target, re-plan, compact) writes a new manifest the
same way. Its identity (`sha256`) is the hash of its manifest. The checkpoint lives inside the
bundle, so the folder can be copied or moved anywhere (layout: gati.bundle.layout).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gati.bundle.layout import (
    CALIBRATION,
    CALIBRATION_IDS,
    CHECKPOINT,
    MANIFEST,
    CacheKey,
    cache_file,
)
from gati.bundle.manifest import FORMAT_VERSION, Manifest, read_manifest
from gati.errors import BundleError, CheckpointError, GatiError
from gati.preprocess import Preprocess
from gati.runtime.plan import Plan

# The model, its stages and the caches are torch modules, imported where they are loaded or written: reading a
# bundle (`read_bundle`, what the aggregator needs) imports no torch.
if TYPE_CHECKING:
    from torch import nn

    from gati.cache import Cache
    from gati.models.split import StagedModel

__all__ = ["FORMAT_VERSION", "MANIFEST", "Bundle", "BundleInfo", "Manifest", "cache_file", "load_bundle",
           "read_bundle", "read_manifest", "revise_bundle", "write_bundle"]


@dataclass(frozen=True)
class BundleInfo:
    """A bundle's manifest and identity, without the model."""
    path: Path
    manifest: Manifest
    sha256: str

    @property
    def plan(self) -> Plan:
        return self.manifest.plan

    def checkpoint_path(self) -> Path:
        """Inside the bundle (format 2), or where a format-1 bundle's build found it."""
        ref = Path(self.manifest.checkpoint.path)
        path = ref if ref.is_absolute() else self.path / ref
        if not path.is_file():
            hint = ("this bundle was built by an older gati and names its checkpoint by an absolute path; "
                    f"copy the checkpoint to {self.path / CHECKPOINT} and set checkpoint.path: {CHECKPOINT} "
                    "in its manifest, or rebuild it") if ref.is_absolute() else "the bundle is incomplete"
            raise CheckpointError(f"checkpoint {path} not found: {hint}")
        return path

    def load_cache(self, cut: int, variant: str) -> Cache:
        from gati.cache import load_cache
        return load_cache(self.path / cache_file(cut, variant))

    def plan_caches(self, cut_names: Iterable[str] | None = None) -> dict[int, Cache]:
        """The plan's caches by cut index (only those at `cut_names`, when given)."""
        wanted = None if cut_names is None else set(cut_names)
        return {e.cut: self.load_cache(e.cut, e.variant) for e in self.plan.entries
                if wanted is None or e.cut_name in wanted}

    def calibration(self) -> tuple[dict[str, np.ndarray], list[str]]:
        """Every stored cache's scores on the calibration images, and those images' ids."""
        try:
            with np.load(self.path / CALIBRATION) as data:
                arrays = {k: data[k] for k in data.files}
            ids = (self.path / CALIBRATION_IDS).read_text().split()
        except (OSError, ValueError) as e:
            raise BundleError(f"{self.path}: calibration data is missing or corrupt ({e})") from e
        return arrays, ids


def read_bundle(path: str | Path) -> BundleInfo:
    path = Path(path)
    manifest = read_manifest(path)
    digest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    return BundleInfo(path, manifest, digest)


@dataclass
class Bundle:
    """A loaded bundle: the base model, its stages and the plan's caches, ready to serve."""
    path: Path
    manifest: Manifest
    model: nn.Module
    staged: StagedModel
    caches: dict[int, Cache]   # the plan's caches, by cut index
    plan: Plan
    sha256: str

    @property
    def info(self) -> BundleInfo:
        return BundleInfo(self.path, self.manifest, self.sha256)

    @property
    def preprocess(self) -> Preprocess:
        return self.manifest.preprocess

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.manifest.input_shape


def load_bundle(path: str | Path, device: str = "cpu", verify_checkpoint: bool = True) -> Bundle:
    from gati.models import load_checkpoint, sha256_file
    from gati.models.split import split_model
    info = read_bundle(path)
    m = info.manifest
    checkpoint = info.checkpoint_path()
    if verify_checkpoint:
        digest = sha256_file(checkpoint)
        if digest != m.checkpoint.sha256:
            raise CheckpointError(f"checkpoint {checkpoint} changed since the bundle was built "
                                  f"(sha256 {digest[:12]}..., manifest says {m.checkpoint.sha256[:12]}...): "
                                  "rebuild the bundle")
    model = make_model(m)
    load_checkpoint(model, checkpoint)
    model = model.to(device).eval()
    staged = split_model(model, m.cuts).to(device).eval()
    caches = {cut: cache.to(device) for cut, cache in info.plan_caches().items()}
    return Bundle(info.path, m, model, staged, caches, m.plan, info.sha256)


def make_model(manifest: Manifest) -> nn.Module:
    """The base architecture a manifest names: a built-in arch or a user's `pkg.mod:factory`."""
    from gati.models import build_model
    if manifest.model_module:
        return import_factory(manifest.model_module)(manifest.num_classes)
    return build_model(manifest.arch, manifest.num_classes, manifest.preprocess.channels)


def import_factory(spec: str) -> Callable[[int], nn.Module]:
    """`pkg.module:function`, called with num_classes, returning an nn.Module."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise GatiError(f"--model-module must look like 'package.module:factory', got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise GatiError(f"cannot import model factory {spec!r}: {e}") from e


# ---- writing ------------------------------------------------------------------------------------

def write_bundle(out: Path, manifest: Manifest, caches: dict[CacheKey, Cache], calibration: dict[str, np.ndarray],
                 calibration_ids: list[str], checkpoint: Path, overwrite: bool = False) -> Path:
    """Everything, checkpoint included, into a temporary sibling folder, then renamed into place."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"{out} already exists (pass --force to replace it)")
    with _staged(out) as tmp:
        (tmp / "caches").mkdir()
        for (cut, variant), cache in caches.items():
            cache.save(tmp / cache_file(cut, variant))
        np.savez_compressed(tmp / CALIBRATION, **calibration)
        (tmp / CALIBRATION_IDS).write_text("\n".join(calibration_ids) + "\n")
        _link_or_copy(Path(checkpoint), tmp / CHECKPOINT)
        (tmp / MANIFEST).write_text(_sealed(manifest, tmp).to_yaml())
    return out


def revise_bundle(path: Path, manifest: Manifest, out: Path | None = None,
                  caches: dict[CacheKey, Cache] | None = None,
                  calibration: dict[str, np.ndarray] | None = None) -> Path:
    """A copy of bundle `path` (or `path` itself) with a new manifest, and optionally new cache
    files and calibration scores, swapped in atomically. Cache files the new manifest does not list
    are left out; the checkpoint is hard-linked."""
    path, out = Path(path), Path(out or path)
    with _staged(out) as tmp:
        shutil.copytree(path, tmp, dirs_exist_ok=True, copy_function=_copy_bundle_file)
        listed = {cache_file(c.cut, c.variant) for c in manifest.caches}
        for stale in (tmp / "caches").glob("*.pt"):
            if f"caches/{stale.name}" not in listed:
                stale.unlink()
        for (cut, variant), cache in (caches or {}).items():
            cache.save(tmp / cache_file(cut, variant))
        if calibration is not None:
            (tmp / CALIBRATION).unlink(missing_ok=True)
            np.savez_compressed(tmp / CALIBRATION, **calibration)
        (tmp / MANIFEST).unlink(missing_ok=True)
        (tmp / MANIFEST).write_text(_sealed(manifest, tmp).to_yaml())
    return out


def _sealed(manifest: Manifest, folder: Path) -> Manifest:
    """The manifest with its certificate bound to the plan's cache files as written (their SHA-256,
    in plan order): the certificate is about exactly these caches."""
    from gati.models import sha256_file
    digest = hashlib.sha256()
    for e in manifest.plan.entries:
        digest.update(sha256_file(folder / cache_file(e.cut, e.variant)).encode())
    # Whatever format it was read in, it is written in this gati's format (a format-1 bundle's absolute
    # checkpoint path stays valid in format 2).
    return manifest.replace(format_version=FORMAT_VERSION,
                            certified=replace(manifest.certified, caches_sha256=digest.hexdigest()))


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link where the file system allows (nothing writes a checkpoint in place), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_bundle_file(src: str, dst: str) -> None:
    """The checkpoint (tens of MB) is linked, everything else copied, so editing a copy's cache
    file can never change the original's."""
    (_link_or_copy if Path(src).name == CHECKPOINT else shutil.copy2)(src, dst)


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
