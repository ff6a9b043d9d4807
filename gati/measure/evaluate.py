"""`gati eval`: replay a split one request at a time through the base model and the engine.

Side by side in one process: for every request (in a shuffled order fixed by the seed) the base
model and the engine answer the same preprocessed tensor, alternating which goes first so that
neither always runs on a warmer cache. Each request is timed from its input tensor to its label.
Nothing is updated during the run. Agreement is the fraction of requests whose answer equals the
base model's own answer; it is only meaningful on images that neither fitted nor calibrated the
caches, so a split overlapping the bundle's calibration images is refused.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from gati.bundle import Bundle
from gati.data import Dataset
from gati.errors import GatiError
from gati.runtime.engine import Engine

WARMUP = 20


@dataclass
class EvalResult:
    requests: int
    base_acc: float
    gati_acc: float
    agreement: float
    hit_rate: float
    hits_per_layer: dict[str, int]
    mean_ms_base: float
    mean_ms_gati: float
    p50_ms_base: float
    p50_ms_gati: float
    p99_ms_base: float
    p99_ms_gati: float
    speedup_mean: float
    speedup_p50: float
    mean_stages_run: float
    target: float
    certified: str                 # the bundle's claim, e.g. "agreement with the base model >= 0.97"
    confidence: float              # at which the claim was proven
    nominal_lower_bound: float     # Clopper-Pearson on the certify part (an estimate, not the claim)
    mode: str
    device: str
    threads: int
    split: str
    seed: int
    bundle: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_disjoint(bundle: Bundle, data: Dataset) -> None:
    _, calib_ids = bundle.info.calibration()
    overlap = set(calib_ids) & set(data.ids)
    if overlap:
        raise GatiError(f"split {data.split!r} shares {len(overlap)} images with the bundle's calibration "
                        f"set (e.g. {sorted(overlap)[0]}): results on it would overstate agreement; "
                        "evaluate on test:eval")


def evaluate(bundle: Bundle, data: Dataset, seed: int = 0, mode: str | None = None,
             progress: bool = True) -> EvalResult:
    check_disjoint(bundle, data)
    engine = Engine(bundle, mode)
    order = np.random.default_rng(seed).permutation(len(data))
    device = str(next(bundle.model.parameters()).device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    inputs = [bundle.preprocess(data.images[i:i + 1]).to(device) for i in order]
    for x in inputs[:WARMUP]:
        engine.predict_base(x), engine.predict(x)
    base_ms, gati_ms, base_lbl, gati_lbl, exits, stages = [], [], [], [], [], []
    for n, x in enumerate(tqdm(inputs, desc="eval", unit="req", disable=not progress)):
        runs = [("base", engine.predict_base), ("gati", engine.predict)]
        for name, fn in (runs if n % 2 == 0 else runs[::-1]):
            sync()
            start = time.perf_counter()
            out = fn(x)
            elapsed = (time.perf_counter() - start) * 1e3
            if name == "base":
                base_ms.append(elapsed)
                base_lbl.append(out)
            else:
                gati_ms.append(elapsed)
                gati_lbl.append(out.label)
                exits.append(out.exit_name)
                stages.append(out.stages_run)
    engine.close()
    return _summarise(bundle, data, order, seed, engine.mode, device, base_ms, gati_ms,
                      np.array(base_lbl), np.array(gati_lbl), exits, stages)


def _summarise(bundle, data, order, seed, mode, device, base_ms, gati_ms, base_lbl, gati_lbl, exits,
               stages) -> EvalResult:
    truth = data.labels[order]
    hits = {e.cut_name: 0 for e in bundle.plan.entries}
    for name in exits:
        if name != "final":
            hits[name] += 1
    mb, mg = statistics.fmean(base_ms), statistics.fmean(gati_ms)
    pb, pg = _pct(base_ms, 50), _pct(gati_ms, 50)
    return EvalResult(
        requests=len(order), base_acc=float((base_lbl == truth).mean()), gati_acc=float((gati_lbl == truth).mean()),
        agreement=float((gati_lbl == base_lbl).mean()), hit_rate=sum(hits.values()) / len(order),
        hits_per_layer=hits, mean_ms_base=mb, mean_ms_gati=mg, p50_ms_base=pb, p50_ms_gati=pg,
        p99_ms_base=_pct(base_ms, 99), p99_ms_gati=_pct(gati_ms, 99), speedup_mean=mb / mg,
        speedup_p50=pb / pg, mean_stages_run=statistics.fmean(stages), target=float(bundle.manifest.target),
        certified=bundle.manifest.certified.claim, confidence=bundle.manifest.certified.confidence,
        nominal_lower_bound=bundle.manifest.certified.nominal_lower_bound, mode=mode, device=device,
        threads=torch.get_num_threads(), split=data.split, seed=seed, bundle=str(bundle.path))


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def format_table(r: EvalResult) -> str:
    lines = [
        f"{r.requests} requests from {r.split} (seed {r.seed}), device {r.device}, {r.threads} threads, mode {r.mode}",
        f"{'':14}{'base':>10}{'gati':>10}{'speedup':>10}",
        f"{'mean ms':14}{r.mean_ms_base:>10.3f}{r.mean_ms_gati:>10.3f}{r.speedup_mean:>9.2f}x",
        f"{'p50 ms':14}{r.p50_ms_base:>10.3f}{r.p50_ms_gati:>10.3f}{r.speedup_p50:>9.2f}x",
        f"{'p99 ms':14}{r.p99_ms_base:>10.3f}{r.p99_ms_gati:>10.3f}",
        f"{'accuracy':14}{r.base_acc:>10.4f}{r.gati_acc:>10.4f}",
        f"agreement with base {r.agreement:.4f} (target {r.target}; certified: {r.certified} at "
        f"{r.confidence:.2%}), hit rate {r.hit_rate:.1%}, mean stages run {r.mean_stages_run:.2f}",
        "hits per cut: " + ", ".join(f"{k}={v}" for k, v in r.hits_per_layer.items()),
    ]
    return "\n".join(lines)
