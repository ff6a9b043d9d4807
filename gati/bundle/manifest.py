"""The manifest: what a bundle is, as typed records; the only code that reads or writes manifest.yaml.

A manifest says which model the caches belong to (architecture, checkpoint and its SHA-256), what
goes into it (preprocessing, input shape, classes), where it is cut, every fitted cache, the plan,
the promise (target and certificate), what the optimizer expected, which images calibrated it, the
profile it was planned with, and the software that built it.

Format 2 stores the checkpoint inside the bundle (`checkpoint.pt`, by a path relative to the
bundle), so a bundle folder can be copied anywhere. Format 1 bundles, which name their checkpoint
by an absolute path, still load where that path exists.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gati.bundle.layout import MANIFEST, cache_key
from gati.errors import BundleError, GatiError
from gati.preprocess import Preprocess
from gati.runtime.plan import Plan

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


@dataclass
class CheckpointRef:
    path: str      # relative to the bundle folder (format 2), or absolute (format 1)
    sha256: str
    source: str = ""   # where the build read it from (for the record)


@dataclass
class CacheRecord:
    """One fitted cache stored in the bundle (the plan uses some of them)."""
    cut: int
    cut_name: str
    variant: str
    nbytes: int
    reducer: str


@dataclass
class Certificate:
    """What calibration proved about the plan's thresholds, and under which assumptions
    (gati.pipeline.certify). `claim` holds with probability >= `confidence` for `population`."""
    claim: str               # e.g. "agreement with the base model >= 0.97"
    target: float
    confidence: float        # 1 - alpha
    alpha: float             # this look's share of the certify part's error budget
    look: int                # this certification's number among the looks at the certify part
    method: str
    population: str          # what the claim is about: the exchangeability assumption, spelled out
    scored_on: str           # device and dtype the calibration scores were computed with
    caches_sha256: str       # of the plan's cache files: the claim is about exactly these caches
    nominal_lower_bound: float  # Clopper-Pearson at the chosen vector, floored: an estimate, not the claim
    agreement: float         # measured on the certify part
    hit_rate: float          # measured on the certify part
    hit_rate_lower_bound: float  # one-sided lower bound at `confidence`: the speed part of the promise
    n: int                   # images in the certify part
    wrong_hits: int
    vectors_tested: int
    select_n: int
    select_margin: float


@dataclass
class Look:
    """One certification on the bundle's certify part: the ledger that splits the error budget."""
    command: str             # build, calibrate, plan, compact
    target: float
    alpha: float
    passed: bool             # a vector with early exits was certified (False: no early exits)
    created: str


@dataclass
class Expected:
    """What the optimizer's latency model predicts for the plan on the select part."""
    latency_ms: float
    base_ms: float
    hit_rate: float
    agreement: float


@dataclass
class CalibrationInfo:
    split: str
    n: int
    ids_sha256: str
    rule: str


@dataclass
class TrainInfo:
    split: str
    limit: int | None
    n: int           # images the caches were fitted on, augmented copies included
    seed: int
    augment: int = 0  # augmented copies of each training image among them (gati/pipeline/augment.py)


@dataclass
class Profile:
    """Measured latencies on the serving device (see gati.pipeline.profile)."""
    device: str
    device_name: str
    threads: int
    base_ms: float                       # the unsplit model
    stage_ms: list[float]                # one per stage (the last is the head)
    lookup_ms: dict[str, float] = field(default_factory=dict)   # cache key -> ms a lookup adds
    overlap_ms: dict[str, float] = field(default_factory=dict)  # cache key -> ms added beside the next stage
    torch_version: str = ""
    # what serving a request adds beyond its stages and lookups (the input check, the cascade loop, the head's
    # confidence); 0.0 where it was not measured (CUDA graphs, bundles profiled before it was)
    request_ms: float = 0.0

    def lookup(self, cut: int, variant: str) -> float:
        return self.lookup_ms[cache_key(cut, variant)]

    def overlap(self, cut: int, variant: str) -> float | None:
        """What the lookup adds to the next stage when run beside it; None if never measured."""
        return self.overlap_ms.get(cache_key(cut, variant))

    def times(self, cut: int, variant: str) -> bool:
        return cache_key(cut, variant) in self.lookup_ms


@dataclass
class Manifest:
    format_version: int
    created: str
    arch: str | None
    model_module: str | None
    num_classes: int
    checkpoint: CheckpointRef
    dataset: str
    preprocess: Preprocess               # channels, size, mean/std, resize: the model's input (C x H x W)
    classes: list[str]
    cuts: list[str]
    cut_shapes: list[tuple[int, int, int]]
    caches: list[CacheRecord]
    plan: Plan
    target: float
    memory_mb: float | None
    certified: Certificate
    expected: Expected
    calibration: CalibrationInfo
    train: TrainInfo
    profile: Profile
    versions: dict[str, str | None]
    build_seconds: float
    cache_dtype: str = "float32"
    looks: list[Look] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocess.input_shape

    @property
    def n_stages(self) -> int:
        return len(self.cuts) + 1

    def cache_record(self, cut: int, variant: str) -> CacheRecord:
        for c in self.caches:
            if (c.cut, c.variant) == (cut, variant):
                return c
        raise BundleError(f"the bundle has no {variant} cache at cut {cut}")

    def replace(self, **changes: Any) -> "Manifest":
        return dataclasses.replace(self, **changes)

    # ---- YAML ---------------------------------------------------------------------------------

    def to_yaml(self) -> str:
        data = dataclasses.asdict(self)
        data["plan"] = self.plan.to_dict()
        data["preprocess"] = self.preprocess.to_dict()
        return yaml.safe_dump(_plain(data), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, where: str) -> "Manifest":
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BundleError(f"{where} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise BundleError(f"{where} is not a manifest written by gati")
        version = raw.get("format_version")
        if version not in READABLE_FORMATS:
            raise BundleError(f"{where} has format {version!r}; this gati reads formats {READABLE_FORMATS}")
        try:
            return cls._parse(raw)
        except (KeyError, TypeError, ValueError, GatiError) as e:
            raise BundleError(f"{where} is corrupt or not written by gati: {type(e).__name__}: {e}") from e

    @classmethod
    def _parse(cls, raw: dict) -> "Manifest":
        return cls(
            format_version=int(raw["format_version"]), created=str(raw.get("created", "")),
            arch=raw.get("arch"), model_module=raw.get("model_module"), num_classes=int(raw["num_classes"]),
            checkpoint=_record(CheckpointRef, raw["checkpoint"]), dataset=str(raw["dataset"]),
            preprocess=Preprocess.from_dict(raw["preprocess"]), classes=list(raw["classes"]),
            cuts=list(raw["cuts"]), cut_shapes=[tuple(s) for s in raw.get("cut_shapes", [])],
            caches=[_record(CacheRecord, c) for c in raw["caches"]], plan=Plan.from_dict(raw["plan"]),
            target=float(raw["target"]), memory_mb=raw.get("memory_mb"),
            certified=_certificate(raw), expected=_record(Expected, raw["expected"]),
            calibration=_record(CalibrationInfo, raw["calibration"]), train=_record(TrainInfo, raw["train"]),
            profile=_record(Profile, raw["profile"]), versions=dict(raw.get("versions", {})),
            build_seconds=float(raw.get("build_seconds", 0.0)), cache_dtype=raw.get("cache_dtype", "float32"),
            looks=[_record(Look, look) for look in raw.get("looks", [])])


def read_manifest(bundle: str | Path) -> Manifest:
    file = Path(bundle) / MANIFEST
    if not file.is_file():
        raise BundleError(f"{bundle} is not a bundle: {MANIFEST} is missing")
    return Manifest.from_yaml(file.read_text(), str(file))


def _certificate(raw: dict) -> Certificate:
    """Format 2's certificate as written; format 1's (one look at alpha 0.05, its Clopper-Pearson value
    quoted as the bound) restated as what its test proved."""
    cert = raw["certified"]
    if raw["format_version"] >= 2:
        return _record(Certificate, cert)
    target, alpha = float(raw["target"]), 1.0 - float(cert["confidence"])
    return Certificate(
        claim=f"agreement with the base model >= {target}", target=target, confidence=1.0 - alpha, alpha=alpha,
        look=1, method=cert["method"], population=f"requests exchangeable with {raw['calibration']['split']} "
        "(written by an older gati: the certify half was the even/odd one its design choices were tuned on)",
        scored_on="cpu float32", caches_sha256="", nominal_lower_bound=math.floor(cert["lower_bound"] * 1e4) / 1e4,
        agreement=cert["agreement"], hit_rate=cert["hit_rate"], hit_rate_lower_bound=0.0, n=cert["n"],
        wrong_hits=cert["wrong_hits"], vectors_tested=cert["vectors_tested"], select_n=cert["select_n"],
        select_margin=cert["select_margin"])


def _record(cls: type, raw: Any) -> Any:
    """A dataclass from a manifest mapping; unknown or missing keys raise (TypeError, with their names)."""
    if not isinstance(raw, dict):
        raise TypeError(f"{cls.__name__} must be a mapping, got {type(raw).__name__}")
    return cls(**raw)


def _plain(value: Any) -> Any:
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
