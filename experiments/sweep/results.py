"""What one row leaves behind: one JSON line with the row, its bundle, its environment, its summary and every request.

The per-request series are kept as columns (`Records`), so CDFs and time series can be drawn without re-running;
exits are stored as indexes into `exit_names`. A results file holds one line per finished (or skipped, or failed)
row, appended as rows finish; the latest line of a key is the row's state, so a run can resume where it stopped.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from experiments.sweep.spec import Row
from gati.bundle.layout import cache_key
from gati.bundle.manifest import Manifest
from gati.errors import GatiError

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
UNKNOWN = -1                         # a label the data does not give (a trace), a count nobody measured
MS_DECIMALS = 4


@dataclass
class Records:
    """One row's requests, in the order they were sent: equal-length columns (numpy arrays)."""

    index: np.ndarray                # position in the stream
    source: np.ndarray               # the stream's source image (index into the split)
    phase: np.ndarray                # the drift phase (0 elsewhere)
    label: np.ndarray                # the true label (UNKNOWN for a trace)
    base_label: np.ndarray           # the unsplit model's answer
    answer: np.ndarray               # GATI's answer
    exit_name: np.ndarray            # str: the cut that answered, or "final"
    stages_run: np.ndarray           # UNKNOWN where the deployment does not report it
    ms_base: np.ndarray              # the unsplit model, same input, side by side
    ms_gati: np.ndarray
    hit: np.ndarray                  # bool: a cache answered
    sampled: np.ndarray              # bool: the server's coin sent this hit to the full model too
    live_lower_bound: np.ndarray     # the anytime-valid lower bound on agreement of all requests so far
    fallback_level: np.ndarray       # online: the certified level served (0: no early exits); UNKNOWN: frozen
    version: np.ndarray              # the cache version that served it (0: the bundle's; online rows deploy more)

    def __len__(self) -> int:
        return len(self.index)

    def to_json(self) -> dict:
        exits = sorted(set(self.exit_name.tolist()))
        columns = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "exit_name"}
        out: dict = {name: _column(name, values) for name, values in columns.items()}
        out["exit_names"] = exits
        out["exit"] = [exits.index(e) for e in self.exit_name.tolist()]
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Records":
        exits = np.array(d["exit_names"], dtype=object)
        n = len(d["exit"])
        values = {f.name: np.asarray(d[f.name]) if f.name in d else np.asarray(_ABSENT[f.name](n))
                  for f in fields(cls) if f.name != "exit_name"}
        return cls(exit_name=exits[np.asarray(d["exit"], dtype=int)] if len(d["exit"]) else exits[:0], **values)


# Columns added after results were first written, and what they held in the rows written before them.
_ABSENT = {"version": lambda n: np.zeros(n, dtype=int)}  # only frozen rows were measured: the bundle's caches


def _column(name: str, values: np.ndarray) -> list:
    if name.startswith("ms_") or name == "live_lower_bound":
        return np.round(np.asarray(values, dtype=float), MS_DECIMALS if name.startswith("ms_") else 6).tolist()
    if values.dtype == bool:
        return values.astype(int).tolist()
    return np.asarray(values).astype(int).tolist()


@dataclass(frozen=True)
class CacheFacts:
    cut: int
    cut_name: str
    variant: str
    nbytes: int
    lookup_ms: float | None          # what a lookup adds on the profiled device
    planned: bool


@dataclass(frozen=True)
class BundleFacts:
    """What a row's bundle promised and how it was profiled: enough for the figures without the bundle."""

    path: str
    target: float
    certified: str
    confidence: float
    nominal_lower_bound: float
    hit_rate_lower_bound: float
    looks: int
    mode: str
    plan: list[str]                  # "cut_name variant threshold"
    expected_ms: float
    expected_base_ms: float
    profile_device: str
    base_ms: float
    stage_ms: list[float]
    cuts: list[str]
    caches: list[CacheFacts]
    train_images: int
    build_seconds: float

    @classmethod
    def of(cls, path: Path, m: Manifest) -> "BundleFacts":
        planned = {(e.cut, e.variant) for e in m.plan.entries}
        caches = [CacheFacts(c.cut, c.cut_name, c.variant, c.nbytes, m.profile.lookup_ms.get(cache_key(c.cut, c.variant)),
                             (c.cut, c.variant) in planned) for c in m.caches]
        return cls(path=str(path), target=m.target, certified=m.certified.claim, confidence=m.certified.confidence,
                   nominal_lower_bound=m.certified.nominal_lower_bound,
                   hit_rate_lower_bound=m.certified.hit_rate_lower_bound, looks=len(m.looks), mode=m.plan.mode,
                   plan=[f"{e.cut_name} {e.variant} {e.threshold:.4f}" for e in m.plan.entries],
                   expected_ms=m.expected.latency_ms, expected_base_ms=m.expected.base_ms,
                   profile_device=m.profile.device, base_ms=m.profile.base_ms, stage_ms=list(m.profile.stage_ms),
                   cuts=list(m.cuts), caches=caches, train_images=m.train.n, build_seconds=m.build_seconds)

    @classmethod
    def from_json(cls, d: dict) -> "BundleFacts":
        return cls(**{**d, "caches": [CacheFacts(**c) for c in d["caches"]]})


@dataclass(frozen=True)
class Summary:
    requests: int
    agreement: float                 # answers equal to the unsplit model's
    hit_rate: float
    speedup_mean: float              # ratio of mean latencies, base over GATI
    speedup_p50: float
    mean_ms_base: float
    mean_ms_gati: float
    p50_ms_base: float
    p50_ms_gati: float
    p99_ms_base: float
    p99_ms_gati: float
    base_acc: float | None           # None where true labels are unknown
    gati_acc: float | None
    mean_stages_run: float | None
    live_lower_bound: float          # at the last request
    worst_window_agreement: float    # the lowest agreement over any `window` consecutive requests
    exits: dict[str, int]            # requests answered at each cut (and "final")

    @classmethod
    def of(cls, r: Records, window: int) -> "Summary":
        known = r.label != UNKNOWN
        stages = r.stages_run[r.stages_run != UNKNOWN]
        agree = (r.answer == r.base_label).astype(float)
        w = min(window, len(r))
        windows = np.convolve(agree, np.ones(w) / w, mode="valid")
        p50b, p50g = _pct(r.ms_base, 50), _pct(r.ms_gati, 50)
        names, counts = np.unique(r.exit_name.astype(str), return_counts=True)
        return cls(requests=len(r), agreement=float(agree.mean()), hit_rate=float(r.hit.mean()),
                   speedup_mean=float(r.ms_base.mean() / r.ms_gati.mean()), speedup_p50=p50b / p50g,
                   mean_ms_base=float(r.ms_base.mean()), mean_ms_gati=float(r.ms_gati.mean()),
                   p50_ms_base=p50b, p50_ms_gati=p50g, p99_ms_base=_pct(r.ms_base, 99),
                   p99_ms_gati=_pct(r.ms_gati, 99),
                   base_acc=float((r.base_label == r.label)[known].mean()) if known.any() else None,
                   gati_acc=float((r.answer == r.label)[known].mean()) if known.any() else None,
                   mean_stages_run=float(stages.mean()) if len(stages) else None,
                   live_lower_bound=float(r.live_lower_bound[-1]), worst_window_agreement=float(windows.min()),
                   exits={str(n): int(c) for n, c in zip(names, counts)})


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q))


@dataclass
class RowResult:
    """One line of a results file."""

    key: str
    preset: str
    row: Row
    status: str                      # done, skipped or failed
    model_title: str = ""
    note: str = ""                   # said beside every result of the model (e.g. a re-made split)
    reason: str | None = None        # skipped or failed: why
    command: str | None = None       # skipped: what would make it possible
    commands: list[str] = field(default_factory=list)   # how its bundle was made
    workload: str = ""               # the stream's one-line description
    bundle: BundleFacts | None = None
    summary: Summary | None = None
    records: Records | None = None
    records_file: str = ""           # where `records` lie, under the results file's records folder (outside git)
    environment: dict = field(default_factory=dict)
    learned: dict = field(default_factory=dict)  # an online row: its learner's (or cluster retrainer's) counters
    seconds: float = 0.0
    finished: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["row"] = asdict(self.row)
        d["bundle"] = asdict(self.bundle) if self.bundle else None
        d["summary"] = asdict(self.summary) if self.summary else None
        d["records"] = self.records.to_json() if self.records is not None else None
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "RowResult":
        d = json.loads(line)
        d["row"] = Row(**d["row"])
        d["bundle"] = BundleFacts.from_json(d["bundle"]) if d.get("bundle") else None
        d["summary"] = Summary(**d["summary"]) if d.get("summary") else None
        d["records"] = Records.from_json(d["records"]) if d.get("records") else None
        return cls(**d)


class ResultsFile:
    """The JSON lines of one preset: appended row by row; the latest line of a key wins.

    Every request's record is data (megabytes per preset), so it does not go into the lines, which are kept in git:
    with a `records` folder (the sweep's work folder, outside git) each line's records go to a gzipped JSON file
    there, named in the line's `records_file`, and are read back from it. A line whose file is not here (a fresh
    clone) reads with `records` None: its summary stands, the figures drawn from records are not drawn."""

    def __init__(self, path: Path, records: Path | None = None):
        self.path, self.records = path, records

    def latest(self) -> dict[str, RowResult]:
        if not self.path.is_file():
            return {}
        rows: dict[str, RowResult] = {}
        for line in self.path.read_text().splitlines():
            if line.strip():
                result = RowResult.from_json(line)
                rows[result.key] = result
        return {key: self._with_records(r) for key, r in rows.items()}

    def append(self, result: RowResult) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if result.records is not None and self.records is not None:
            name = f"{self.path.stem}/{hashlib.sha256((result.key + result.finished).encode()).hexdigest()[:20]}.json.gz"
            target = self.records / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(gzip.compress(json.dumps(result.records.to_json(), separators=(",", ":")).encode()))
            result = replace(result, records=None, records_file=name)
        with open(self.path, "a") as out:
            out.write(result.to_json() + "\n")

    def _with_records(self, result: RowResult) -> RowResult:
        if result.records is not None or not result.records_file or self.records is None:
            return result
        source = self.records / result.records_file
        if not source.is_file():
            return result
        return replace(result, records=Records.from_json(json.loads(gzip.decompress(source.read_bytes()))))


def records_folder(work: Path) -> Path:
    """Where a sweep with this work folder keeps its rows' per-request records."""
    return work / "records"


def finished_with_records(results: Path, work: Path) -> list[RowResult]:
    """The finished rows of a results file, each with its per-request records from the sweep's work folder;
    GatiError when some are not there (a fresh clone: the preset has not run there)."""
    rows = done(ResultsFile(results, records_folder(work)).latest().values())
    missing = sum(r.records is None for r in rows)
    if missing:
        raise GatiError(f"the per-request records of {missing} rows of {results} are not under {work}: run the "
                        "sweep's preset there first")
    return rows


def done(results: Iterable[RowResult]) -> list[RowResult]:
    return [r for r in results if r.status == DONE]
