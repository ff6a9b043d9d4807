"""`gati build`: from a trained model and unseen data to a served bundle.

    1. extract   run the base model once over the training images (all by default; with `augment` shifted and
                 flipped copies of each image, if asked) and the calibration images, keeping each cut's activation
                 only in the reduced (pooled) forms the caches read; the training features in temporary files,
                 mapped into memory (TMPDIR: 10 GB for ResNet-18 on 50,000 images, 17 GB for ResNet-50)
    2. fit       every (cut, variant) cache learns the base model's logits (distillation); a cache that has a
                 cheaper draft (a conv head: narrower, or fitted briefly) is fitted as the draft first, and in full
                 only if the plan the optimizer makes from the drafts (on the select part of the calibration
                 images) exits there
    3. score     every cache answers the calibration images
    4. profile   stages and lookups timed on the serving device
    5. plan      the optimizer picks cuts and variants; calibration picks and certifies thresholds
    6. write     the bundle, atomically
"""
from __future__ import annotations

import functools
import logging
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from gati import __version__
from gati.bundle import import_factory, write_bundle
from gati.bundle.layout import CHECKPOINT, CacheKey
from gati.bundle.manifest import (
    FORMAT_VERSION,
    CacheRecord,
    CalibrationInfo,
    CheckpointRef,
    Manifest,
    Profile,
    TrainInfo,
)
from gati.cache import VARIANTS, Cache, make_cache
from gati.data import Dataset, ids_hash, load_split, preprocess_for
from gati.errors import GatiError
from gati.models import build_model, default_cuts, load_checkpoint, sha256_file
from gati.models.split import split_model
from gati.pipeline.augment import augmented
from gati.pipeline.certify import SELECT_CERTIFY_RULE, look_alpha
from gati.pipeline.extract import (
    activation_shapes,
    extract,
    extraction_batch,
    wanted_reducers,
)
from gati.pipeline.planner import CertifyContext, Planned, choose, make_plan
from gati.pipeline.profile import profile_model
from gati.pipeline.score import calibration_arrays
from gati.preprocess import Preprocess

log = logging.getLogger("gati.pipeline.build")


@dataclass
class BuildConfig:
    checkpoint: Path
    dataset: str
    data_dir: Path
    out: Path
    arch: str | None = None
    model_module: str | None = None   # "pkg.mod:factory" for a user's own model
    cuts: list[str] | None = None
    num_classes: int | None = None
    target: float = 0.97
    device: str = "cpu"
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    # every training image: 50,000 CIFAR images instead of 20,000 answered 14-42% more requests at ResNet-18's early
    # cuts at the same wrong answers, 26-41% at ResNet-50's (docs/results.md), for a build twice as long
    train_limit: int | None = None
    augment: int = 0  # augmented copies of each training image, distilled on beside it (gati/pipeline/augment.py)
    calib_split: str = "test:calib"
    calib_limit: int | None = None
    memory_mb: float = float("inf")
    batch_size: int | None = None  # None: extraction_batch(device)
    seed: int = 0
    force: bool = False
    cache_hparams: dict = field(default_factory=dict)  # variant -> hparams
    preprocess: Preprocess | None = None  # what the model was trained on; None: the data set's (preprocess_for)
    # fit cheaper drafts first (Cache.draft) and at full size only those the draft plan chose (fit_with_drafts)
    drafts: bool = True


def build(cfg: BuildConfig) -> Path:
    started = time.time()
    torch.manual_seed(cfg.seed)
    train = augmented(load_split(cfg.dataset, cfg.data_dir, "train", limit=cfg.train_limit, seed=cfg.seed),
                      cfg.augment, cfg.seed)
    calib = load_split(cfg.dataset, cfg.data_dir, cfg.calib_split, limit=cfg.calib_limit, seed=cfg.seed)
    num_classes = cfg.num_classes or len(train.classes)
    pre = cfg.preprocess or preprocess_for(cfg.dataset, cfg.data_dir)
    model, cuts = _base_model(cfg, num_classes, pre.channels)
    staged = split_model(model, cuts).to(cfg.device).eval()

    act_shapes = activation_shapes(staged, pre.input_shape)
    wanted = wanted_reducers(act_shapes, cfg.variants, num_classes)
    log.info("extracting %d reduced activations at %d cuts", sum(map(len, wanted.values())), len(cuts))
    batch = cfg.batch_size or extraction_batch(cfg.device)
    example = pre(calib.images[:1]).to(cfg.device)
    with tempfile.TemporaryDirectory(prefix="gati-features-") as spill:  # the training features, mapped from disk
        train_feats, train_logits = extract(staged, train, pre, wanted, cfg.device, batch, "train", Path(spill))
        calib_feats, calib_logits = extract(staged, calib, pre, wanted, cfg.device, batch, "calib")
        base_calib = calib_logits.argmax(1).numpy()

        def chosen(caches: dict[CacheKey, Cache]) -> list[CacheKey]:  # what the optimizer picks from these caches
            profile = profile_model(model, staged, caches, example, cfg.device)
            arrays = calibration_arrays(caches, calib_feats, base_calib, calib.labels)
            nbytes = {key: cache.nbytes() for key, cache in caches.items()}
            return choose(arrays, calib.ids, calib.labels, profile, nbytes, cfg.target, look_alpha(1),
                          cfg.memory_mb).choice.keys

        caches = new_caches(act_shapes, wanted, cfg, num_classes)
        fit = functools.partial(fit_caches, feats=train_feats, teacher=train_logits, seed=cfg.seed)
        caches = fit_with_drafts(caches, fit, chosen) if cfg.drafts else fit(caches)
        del train_feats
    calibration = calibration_arrays(caches, calib_feats, base_calib, calib.labels)
    del calib_feats

    profile = profile_model(model, staged, caches, example, cfg.device)
    nbytes = {key: cache.nbytes() for key, cache in caches.items()}
    context = CertifyContext("build", 1, cfg.dataset, cfg.calib_split, f"{cfg.device} float32", profile.device)
    planned = make_plan(calibration, calib.ids, calib.labels, profile, nbytes, cuts, cfg.target, context, cfg.memory_mb)
    manifest = _manifest(cfg, num_classes, cuts, act_shapes, train, calib, pre, caches, profile, planned,
                         time.time() - started)
    write_bundle(cfg.out, manifest, caches, calibration, calib.ids, cfg.checkpoint, overwrite=cfg.force)
    return cfg.out


def _base_model(cfg: BuildConfig, num_classes: int, in_channels: int) -> tuple[nn.Module, list[str]]:
    if cfg.model_module:
        if not cfg.cuts:
            raise GatiError("a model from --model-module needs --cuts (module names, in forward order)")
        model = import_factory(cfg.model_module)(num_classes)
    elif cfg.arch:
        model = build_model(cfg.arch, num_classes, in_channels)
    else:
        raise GatiError("give --arch (a built-in architecture) or --model-module pkg.mod:factory")
    load_checkpoint(model, cfg.checkpoint)
    return model.to(cfg.device).eval(), list(cfg.cuts or default_cuts(cfg.arch))


def new_caches(act_shapes, wanted: dict[int, dict[str, str]], cfg: BuildConfig,
               num_classes: int) -> dict[CacheKey, Cache]:
    """An unfitted cache for every (cut, variant) that the build considers, with the user's hyper-parameters."""
    return {(cut, variant): make_cache(variant, act_shapes[cut], num_classes, **cfg.cache_hparams.get(variant, {}))
            for cut, variants in wanted.items() for variant in variants}


def fit_caches(caches: dict[CacheKey, Cache], feats, teacher: torch.Tensor, seed: int) -> dict[CacheKey, Cache]:
    """Fit every cache on the training features of its cut and reducer (distillation from `teacher`)."""
    for (cut, variant), cache in tqdm(caches.items(), desc="fit caches", unit="cache", leave=False):
        report = cache.fit(feats[(cut, cache.reducer_key)].float(), teacher, seed=seed)
        log.info("cut %d %-6s train agreement %.3f (%.1fs)", cut, variant, report.train_agreement, report.seconds)
    return caches


def fit_with_drafts(caches: dict[CacheKey, Cache], fit: Callable[[dict[CacheKey, Cache]], dict[CacheKey, Cache]],
                    chosen: Callable[[dict[CacheKey, Cache]], list[CacheKey]]) -> dict[CacheKey, Cache]:
    """Fit a cheaper draft in place of each cache that has one, let the optimizer choose among them, then fit at
    full size only the drafted caches it chose. The others stay drafts: still candidates, but cheap to have fitted
    where no plan uses them. `fit` fits the caches it is given and returns them; `chosen` names the optimizer's
    picks among fitted caches (it must not read the certify part: the final plan's look is the build's only one)."""
    drafts = {key: draft for key, cache in caches.items() if (draft := cache.draft()) is not None}
    first = fit({**caches, **drafts})
    if not drafts:
        return first
    picks = chosen(first)
    upgrade = {key: caches[key] for key in picks if key in drafts}
    log.info("draft plan: %s; %d of its caches are drafts, refitted at full size", _names(picks), len(upgrade))
    return {**first, **fit(upgrade)}


def _names(keys) -> str:
    return ", ".join(f"{cut}:{variant}" for cut, variant in keys) or "no early exits"


def _manifest(cfg: BuildConfig, num_classes: int, cuts: list[str], act_shapes, train: Dataset, calib: Dataset,
              pre: Preprocess, caches: dict[CacheKey, Cache], profile: Profile, planned: Planned,
              seconds: float) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        arch=cfg.arch,
        model_module=cfg.model_module,
        num_classes=num_classes,
        checkpoint=CheckpointRef(CHECKPOINT, sha256_file(cfg.checkpoint), str(Path(cfg.checkpoint).resolve())),
        dataset=cfg.dataset,
        preprocess=pre,
        classes=list(train.classes),
        cuts=list(cuts),
        cut_shapes=[tuple(map(int, s)) for s in act_shapes],
        caches=[CacheRecord(cut, cuts[cut], variant, int(c.nbytes()), c.reducer_key)
                for (cut, variant), c in caches.items()],
        plan=planned.plan,
        target=float(cfg.target),
        memory_mb=None if cfg.memory_mb == float("inf") else float(cfg.memory_mb),
        certified=planned.certified,
        expected=planned.expected,
        calibration=CalibrationInfo(cfg.calib_split, len(calib), ids_hash(calib.ids), SELECT_CERTIFY_RULE),
        train=TrainInfo("train", cfg.train_limit, len(train), cfg.seed, cfg.augment),
        profile=profile,
        versions={"gati": __version__, "torch": torch.__version__, "numpy": np.__version__,
                  "faiss": _faiss_version(), "python": platform.python_version()},
        build_seconds=round(seconds, 1),
        looks=[planned.look],
    )


def _faiss_version() -> str | None:
    try:
        import faiss
    except ImportError:  # only the knn variant needs it
        return None
    return faiss.__version__
