"""The loop over a preset's rows: find or make each bundle, replay the row's stream, append its JSON line.

Resumable: a row whose latest line says `done` is not measured again unless `force`. A row that cannot run
(no GPU, no checkpoint, no data) gets a `skipped` line with the reason and the command that would make it
possible; a row whose bundle or replay failed gets a `failed` line with the error, and the sweep goes on. Both
are tried again on the next run. Rows sharing a bundle are measured one after another, so each bundle is loaded
once and each cluster (bundle, device, hop delay) is started once.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from experiments.sweep.bundles import Bundles, Ready
from experiments.sweep.cluster import Refits, local_cluster
from experiments.sweep.replay import replay_cluster, replay_in_process
from experiments.sweep.results import (
    DONE,
    FAILED,
    SKIPPED,
    BundleFacts,
    ResultsFile,
    records_folder,
    RowResult,
    Summary,
)
from experiments.sweep.spec import IN_PROCESS, Preset, Row
from gati.bundle import Bundle, load_bundle
from gati.data import Dataset, load_split
from gati.errors import GatiError
from gati.measure.environment import environment
from gati.measure.workloads import Stream, parse_workload


@dataclass
class SweepRun:
    preset: Preset
    shared: Path                     # the shared data and checkpoints
    work: Path                       # bundles, trained checkpoints, build logs
    results: Path                    # the preset's JSON lines
    command: str                     # the sweep's own command line, for the docs and for skipped GPU rows
    force: bool = False
    progress: bool = True


def run_sweep(cfg: SweepRun) -> list[RowResult]:
    """Measure every row that is not done yet; the latest result of every row of the preset."""
    store = ResultsFile(cfg.results, records_folder(cfg.work))
    latest = store.latest()
    bar = tqdm(cfg.preset.rows, desc=f"sweep {cfg.preset.name}", unit="row", disable=not cfg.progress)
    with _Measurer(cfg) as measurer:
        for row in bar:
            previous = latest.get(row.key)
            if previous is not None and previous.status == DONE and not cfg.force:
                continue
            bar.set_postfix_str(row.key, refresh=True)
            result = measurer.measure(row)
            if result.status != DONE:
                tqdm.write(f"{result.status}: {row.key}: {result.reason}"
                           + (f"\n  to run it: {result.command}" if result.command else ""))
            if not _same_outcome(previous, result):
                store.append(result)
            latest[row.key] = result
    return [latest[r.key] for r in cfg.preset.rows]


class _Measurer:
    """Measures one row at a time; keeps the current cluster running while consecutive rows share it."""

    def __init__(self, cfg: SweepRun):
        self.cfg = cfg
        self.bundles = Bundles(cfg.shared, cfg.work, cfg.preset.build_target, torch.cuda.is_available(), cfg.command,
                               cfg.preset.build, cfg.preset.name)
        self.inputs = _Inputs(cfg.preset, self.bundles.shared_path)
        self._clusters = ExitStack()
        self._cluster: tuple[tuple[Path, str, float | None], str] | None = None

    def __enter__(self) -> "_Measurer":
        return self

    def __exit__(self, *exc) -> None:
        self._clusters.close()

    def measure(self, row: Row) -> RowResult:
        started = time.monotonic()
        spec = self.cfg.preset.models[row.model]
        result = RowResult(key=row.key, preset=self.cfg.preset.name, row=row, status=FAILED, model_title=spec.title,
                           note=spec.note)
        try:
            got = self.bundles.get(spec, row.device, row.target)
            if isinstance(got, Ready):
                result.commands = list(got.commands)
                self._replay(row, got.path, result)
            else:
                result.status, result.reason, result.command = SKIPPED, got.reason, got.command
        except (GatiError, OSError, ValueError) as e:
            result.status, result.reason = FAILED, f"{type(e).__name__}: {e}"
        result.environment, result.seconds = environment(), round(time.monotonic() - started, 1)
        return result

    def _replay(self, row: Row, path: Path, result: RowResult) -> None:
        p = self.cfg.preset
        bundle = self.inputs.bundle(path, row.device)
        stream = self.inputs.stream(row, bundle)
        if row.deployment == IN_PROCESS:
            self._stop_cluster()  # idle service processes must not share the cores with an in-process measurement
            records, result.learned = replay_in_process(bundle, self.inputs.split(row), stream, row.online,
                                                        p.sample_rate, p.seed, self.cfg.progress, learning=p.learning)
        elif row.online:  # a cluster of its own: what one row learned must not serve the next
            self._stop_cluster()
            rate = p.learning.sample_rate or p.sample_rate
            refits = Refits(rate, p.learning.refit_every, p.learning.select_samples, p.learning.certify_samples)
            with local_cluster(path, row.device, row.hop_delay_ms or 0.0, refits) as cluster:
                records = replay_cluster(bundle, cluster.endpoint, stream, rate, p.seed, progress=self.cfg.progress)
                result.learned = cluster.learning_counters()
        else:
            endpoint = self._endpoint((path, row.device, row.hop_delay_ms))
            records = replay_cluster(bundle, endpoint, stream, p.sample_rate, p.seed, progress=self.cfg.progress)
        result.status, result.records, result.workload = DONE, records, stream.description
        result.summary = Summary.of(records, p.window)
        result.bundle = BundleFacts.of(path, bundle.manifest)

    def _endpoint(self, wanted: tuple[Path, str, float | None]) -> str:
        """The running cluster's endpoint when it serves `wanted`; else the old one stopped and a new one started."""
        if self._cluster is None or self._cluster[0] != wanted:
            self._stop_cluster()
            bundle, device, delay = wanted
            self._cluster = (wanted, self._clusters.enter_context(local_cluster(bundle, device, delay or 0.0)).endpoint)
        return self._cluster[1]

    def _stop_cluster(self) -> None:
        self._clusters.close()
        self._cluster = None


def _same_outcome(previous: RowResult | None, result: RowResult) -> bool:
    """A row skipped again for the same reason adds no line (the file would grow on every run)."""
    return (previous is not None and result.status == SKIPPED and previous.status == SKIPPED
            and (previous.reason, previous.command) == (result.reason, result.command))


class _Inputs:
    """The loaded bundle (the last one: rows sharing it come together), decoded splits and generated streams."""

    def __init__(self, preset: Preset, data_path: Callable[[str], Path]):
        self.preset, self.data_path = preset, data_path
        self._bundle: tuple[tuple[Path, str], Bundle] | None = None
        self._splits: dict[str, Dataset] = {}
        self._streams: dict[tuple[str, str], Stream] = {}

    def bundle(self, path: Path, device: str) -> Bundle:
        if self._bundle is None or self._bundle[0] != (path, device):
            self._bundle = ((path, device), load_bundle(path, device))
        return self._bundle[1]

    def split(self, row: Row) -> Dataset:
        """The row's `test:eval` half: images that neither fitted nor calibrated the caches."""
        spec = self.preset.models[row.model]
        if spec.dataset not in self._splits:
            self._splits[spec.dataset] = load_split(spec.dataset, self.data_path(spec.data), "test:eval")
        return self._splits[spec.dataset]

    def stream(self, row: Row, bundle: Bundle) -> Stream:
        key = (self.preset.models[row.model].dataset, row.workload)
        if key not in self._streams:
            self._streams[key] = parse_workload(row.workload).generate(self.split(row), bundle.input_shape)
        return self._streams[key]
