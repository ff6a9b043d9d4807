"""The sweep's YAML file as typed rows.

The file (experiments/presets/sweep.yaml) names the models once and the presets that sweep them:

    models:
      resnet18-cifar10:
        title: ResNet-18 / CIFAR-10
        arch: resnet18                          # or model_module: pkg.mod:factory with cuts: [...]
        dataset: cifar10
        data: data/cifar10-jpg.tar.gz           # relative to the shared folder (or absolute)
        checkpoint: models/cifar10_resnet18.pt  # likewise; a missing one may be trained (train_if_missing)
        paper: {cpu: 1.72, cuda: 1.28}          # the paper's Table 6 (97% target); null where not recorded
        note: ""                                # said beside every result of this model
    presets:
      quick:
        description: ...
        requests: 1000                          # per row; 0 = the whole test:eval half
        learning: {sample_rate: 0.4, refit_every: 300}   # online rows' learner (optional; see Learning)
        build: {train_limit: 10000, variants: [linear, mlp, fc]}   # optional: `gati build` flags (see Build)
        sweeps:                                 # each a product; rows are the union, duplicates once
          - models: [resnet18-cifar10]
            devices: [cpu]
            targets: [0.97, 0.99]
            workloads: [iid, "bursty:mean_run=20"]
            deployments: [in-process, cluster]
            hop_delays_ms: [0]                  # cluster rows only
            online: [false]

A row is one measurement: (model, device, target, workload, deployment, hop delay, online learning).
Online learning runs in process (`gati eval --online`) and in the cluster (the retrainer's automatic refits, with
the aggregator's coin at the learner's sample rate); a cluster row learning online starts a cluster of its own.
Its key names it in the results file, so a finished row is found again and not recomputed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gati.errors import GatiError, WorkloadError
from gati.learning.online import OnlineConfig
from gati.measure.workloads import parse_workload

DEVICES = ("cpu", "cuda")
IN_PROCESS, CLUSTER = "in-process", "cluster"
DEPLOYMENTS = (IN_PROCESS, CLUSTER)
PAPER_TARGET = 0.97  # the accuracy target of the paper's Table 6
DEFAULT_FILE = Path(__file__).resolve().parents[1] / "presets" / "sweep.yaml"


class SweepError(GatiError):
    """A sweep file that does not say what the sweep needs, or a sweep that cannot go on."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    dataset: str
    data: str                          # the data set's archive or folder, relative to the shared folder
    checkpoint: str                    # relative to the shared folder; a trained one goes to the work folder
    arch: str | None = None
    model_module: str | None = None    # "pkg.mod:factory" for a model of one's own
    cuts: tuple[str, ...] = ()
    bundle: str | None = None          # an existing bundle to reuse instead of building one
    paper: dict[str, float] = field(default_factory=dict)   # device -> the paper's Table 6 gain (97% target)
    note: str = ""
    train_if_missing: bool = False     # no checkpoint: `gati train-base` makes it where a GPU is present


@dataclass(frozen=True, order=True)
class Row:
    model: str
    device: str
    target: float
    workload: str                      # the workload's canonical spec (n and seed included)
    deployment: str                    # in-process or cluster
    hop_delay_ms: float | None         # cluster rows: the delay injected per network hop
    online: bool                       # online learning while serving
    build: str = ""                    # the preset's `gati build` flags ("": the defaults)

    @property
    def key(self) -> str:
        where = self.deployment if self.hop_delay_ms is None else f"{self.deployment}@{self.hop_delay_ms:g}ms"
        parts = [self.model, self.device, f"{self.target:g}", self.workload, where, "online" if self.online else "frozen"]
        # a row measured on a bundle built otherwise is another row: its result must not be taken for this one's
        return "|".join(parts + ([f"build {self.build}"] if self.build else []))

    @property
    def workload_name(self) -> str:
        return self.workload.split(":", 1)[0]


@dataclass(frozen=True)
class Learning:
    """How online rows learn: the knobs of `gati.learning.online.OnlineConfig` a preset may set. The learner's
    coin is the preset's `sample_rate` unless set here; a review needs `refit_every` + `select_samples` +
    `certify_samples` coin samples, so at p = 0.05 the defaults need ~46,000 requests: a preset whose online
    rows are shorter must sample more or refit sooner, or its rows never learn."""
    sample_rate: float | None = None
    refit_every: int = OnlineConfig.refit_every          # unset: the learner's own defaults
    select_samples: int = OnlineConfig.select_samples
    certify_samples: int = OnlineConfig.certify_samples
    # in process: the learner works between requests, outside the timed path (`gati eval --online --deterministic`),
    # instead of beside them at a lower priority (gati.learning.background): a replay keeps the cores busy, so a
    # niced learner would barely learn within a row; what learning costs beside serving is measured apart
    # (experiments/learning_cost.py)
    between_requests: bool = False


BUILD_FLAGS = {"train_limit": "--train-limit", "variants": "--variants", "augment": "--augment",
               "calib_limit": "--calib-limit", "memory_mb": "--memory-mb", "batch_size": "--batch-size"}


@dataclass(frozen=True)
class Build:
    """`gati build` options a preset sets for its bundles (none: the command's defaults). A preset that sets any
    builds its bundles in folders of its own (`<model>-<device>-<preset>`), so that they never stand in for a
    default build, and every result names the flags in its build command."""
    args: tuple[str, ...] = ()        # the flags, as typed after `gati build`

    @property
    def defaults(self) -> bool:
        return not self.args


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    models: dict[str, ModelSpec]
    rows: tuple[Row, ...]
    requests: int                      # per row (0: the whole test:eval half)
    seed: int = 0
    sample_rate: float = 0.05          # the server's coin for the live lower bound
    window: int = 200                  # requests per rolling window in the time series
    build_target: float = 0.97         # the target bundles are built at; other targets are re-calibrated
    headline_target: float = 0.97      # the paper's Table 6 target: the headline table and figures 1, 4, 5
    learning: Learning = Learning()    # online rows' learner
    build: Build = Build()             # its bundles' `gati build` options (default: none)


def load_models(path: Path = DEFAULT_FILE) -> dict[str, ModelSpec]:
    """Every model the file defines, in its order."""
    raw = _mapping(_read_yaml(path), str(path))
    return {key: _model(key, value) for key, value in _mapping(raw.get("models"), "models").items()}


def load_preset(name_or_file: str, path: Path = DEFAULT_FILE) -> Preset:
    """A preset by name from `path`, or the only preset of another YAML file given by its path."""
    candidate = Path(name_or_file)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise SweepError(f"sweep file {candidate} not found")
        path, name = candidate, None
    else:
        name = name_or_file
    raw = _mapping(_read_yaml(path), str(path))
    models = load_models(path)
    presets = _mapping(raw.get("presets"), "presets")
    if name is None:
        if len(presets) != 1:
            raise SweepError(f"{path} holds {len(presets)} presets ({', '.join(presets)}); name one with --preset")
        name = next(iter(presets))
    if name not in presets:
        raise SweepError(f"no preset {name!r} in {path}; presets: {', '.join(presets)}")
    return _preset(name, _mapping(presets[name], f"presets.{name}"), models)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SweepError(f"cannot read sweep file {path}: {e}") from e


def _model(name: str, raw: Any) -> ModelSpec:
    raw = _mapping(raw, f"models.{name}")
    _known(raw, {"title", "arch", "model_module", "cuts", "dataset", "data", "checkpoint", "bundle", "paper",
                 "note", "train_if_missing"}, f"models.{name}")
    for key in ("dataset", "data", "checkpoint"):
        if not isinstance(raw.get(key), str):
            raise SweepError(f"models.{name}.{key} must be given (a string)")
    if bool(raw.get("arch")) == bool(raw.get("model_module")):
        raise SweepError(f"models.{name}: give arch (a built-in architecture) or model_module, not both")
    paper = {device: float(v) for device, v in _mapping(raw.get("paper") or {}, f"models.{name}.paper").items()
             if v is not None}
    if set(paper) - set(DEVICES):
        raise SweepError(f"models.{name}.paper: devices are {', '.join(DEVICES)}, got {', '.join(paper)}")
    return ModelSpec(name=name, title=str(raw.get("title", name)), dataset=raw["dataset"], data=raw["data"],
                     checkpoint=raw["checkpoint"], arch=raw.get("arch"), model_module=raw.get("model_module"),
                     cuts=tuple(raw.get("cuts") or ()), bundle=raw.get("bundle"), paper=paper,
                     note=str(raw.get("note") or ""), train_if_missing=bool(raw.get("train_if_missing", False)))


def _preset(name: str, raw: dict, models: dict[str, ModelSpec]) -> Preset:
    _known(raw, {"description", "requests", "seed", "sample_rate", "window", "build_target", "headline_target",
                 "learning", "build", "sweeps"}, f"presets.{name}")
    requests, seed = _int(raw.get("requests", 0), "requests", 0), _int(raw.get("seed", 0), "seed", 0)
    sweeps = raw.get("sweeps")
    if not isinstance(sweeps, list) or not sweeps:
        raise SweepError(f"presets.{name}.sweeps must be a non-empty list")
    build = _build(raw.get("build") or {}, f"presets.{name}.build")
    rows: dict[str, Row] = {}
    for i, sweep in enumerate(sweeps):
        for row in _rows(_mapping(sweep, f"presets.{name}.sweeps[{i}]"), models, requests, seed,
                         f"presets.{name}.sweeps[{i}]", " ".join(build.args)):
            rows.setdefault(row.key, row)
    used = {models[r.model].name: models[r.model] for r in rows.values()}
    return Preset(name=name, description=str(raw.get("description", "")), models=used,
                  rows=tuple(_ordered(rows.values())), requests=requests, seed=seed,
                  sample_rate=_fraction(raw.get("sample_rate", 0.05), "sample_rate"),
                  window=_int(raw.get("window", 200), "window", 1),
                  build_target=_fraction(raw.get("build_target", 0.97), "build_target"),
                  headline_target=_fraction(raw.get("headline_target", 0.97), "headline_target"),
                  learning=_learning(raw.get("learning") or {}, f"presets.{name}.learning"), build=build)


def _build(raw: Any, where: str) -> Build:
    raw = _mapping(raw, where)
    _known(raw, set(BUILD_FLAGS), where)
    args: list[str] = []
    for key, flag in BUILD_FLAGS.items():
        if key not in raw:
            continue
        value = raw[key]
        if key == "variants":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise SweepError(f"{where}.variants must be a non-empty list of cache variants")
            value = ",".join(value)
        elif key == "memory_mb":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise SweepError(f"{where}.memory_mb must be a positive number, got {value!r}")
        else:
            value = _int(value, f"{where}.{key}", 0 if key in ("train_limit", "augment") else 1)
        args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return Build(tuple(args))


def _learning(raw: Any, where: str) -> Learning:
    raw = _mapping(raw, where)
    _known(raw, {"sample_rate", "refit_every", "select_samples", "certify_samples", "between_requests"}, where)
    rate, between = raw.get("sample_rate"), raw.get("between_requests", False)
    if not isinstance(between, bool):
        raise SweepError(f"{where}.between_requests must be true or false, got {between!r}")
    return Learning(sample_rate=None if rate is None else _fraction(rate, f"{where}.sample_rate"),
                    between_requests=between,
                    **{key: _int(raw[key], f"{where}.{key}", 1)
                       for key in ("refit_every", "select_samples", "certify_samples") if key in raw})


def _rows(raw: dict, models: dict[str, ModelSpec], requests: int, seed: int, where: str, build: str) -> list[Row]:
    _known(raw, {"models", "devices", "targets", "workloads", "deployments", "hop_delays_ms", "online"}, where)
    names = _list(raw, "models", where)
    unknown = [m for m in names if m not in models]
    if unknown:
        raise SweepError(f"{where}: unknown models {', '.join(unknown)}; defined: {', '.join(models)}")
    devices = _list(raw, "devices", where, ["cpu"])
    if set(devices) - set(DEVICES):
        raise SweepError(f"{where}: devices are {', '.join(DEVICES)}, got {devices}")
    deployments = _list(raw, "deployments", where, [IN_PROCESS])
    if set(deployments) - set(DEPLOYMENTS):
        raise SweepError(f"{where}: deployments are {', '.join(DEPLOYMENTS)}, got {deployments}")
    targets = [_fraction(t, f"{where}.targets") for t in _list(raw, "targets", where)]
    workloads = [_workload(w, requests, seed, where) for w in _list(raw, "workloads", where, ["iid"])]
    delays = [float(d) for d in _list(raw, "hop_delays_ms", where, [0.0])]
    online = [bool(o) for o in _list(raw, "online", where, [False])]
    placements = [(d, None) for d in deployments if d == IN_PROCESS]
    placements += [(CLUSTER, delay) for delay in delays if CLUSTER in deployments]
    return [Row(model, device, target, workload, deployment, delay, learn, build)
            for model, device, target, workload, (deployment, delay), learn
            in itertools.product(names, devices, targets, workloads, placements, online)]


def _ordered(rows) -> list[Row]:
    """Rows that share a bundle (and a cluster) next to each other, in-process rows first, so that each bundle
    is loaded and each cluster started once."""
    return sorted(rows, key=lambda r: (r.model, r.device, r.target, r.deployment != IN_PROCESS,
                                       r.hop_delay_ms or 0.0, r.online, r.workload))


def _workload(text: Any, requests: int, seed: int, where: str) -> str:
    """The canonical spec, with the preset's request count and seed unless the entry sets its own."""
    if not isinstance(text, str):
        raise SweepError(f"{where}.workloads: expected strings such as 'bursty:mean_run=20', got {text!r}")
    name, _, params = text.partition(":")
    given = {p.split("=", 1)[0].strip() for p in params.split(",") if "=" in p}
    extra = [f"n={requests}"] * ("n" not in given) + [f"seed={seed}"] * ("seed" not in given)
    try:
        return parse_workload(f"{name}:" + ",".join(filter(None, [params, *extra]))).spec()
    except WorkloadError as e:
        raise SweepError(f"{where}.workloads: {e}") from e


def _mapping(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise SweepError(f"{where} must be a mapping, got {type(raw).__name__}")
    return raw


def _known(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SweepError(f"{where}: unknown keys {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _list(raw: dict, key: str, where: str, default: list | None = None) -> list:
    value = raw.get(key, default)
    if not isinstance(value, list) or not value:
        raise SweepError(f"{where}.{key} must be a non-empty list")
    return value


def _int(value: Any, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SweepError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def _fraction(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise SweepError(f"{key} must be in (0, 1), got {value!r}")
    return float(value)
