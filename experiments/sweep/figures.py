"""The seven figures, drawn from a preset's results alone (the JSON lines) and the paper's numbers in the YAML.

Each function takes the finished rows and returns a matplotlib Figure, or None where the rows hold nothing to
draw (e.g. no cluster rows). Figures are built with the object API (no pyplot, no display): a test can inspect
titles, axis labels and series, and `write_figures` saves them as PNG.

    1 gain_vs_paper   latency gain per model and device at the paper's target, beside the paper's Table 6
    2 tradeoff        agreement vs latency gain as the target varies, with the certified bound (the target)
    3 exits           share of requests answered at each cut, per model and target
    4 latency_cdf     latency CDFs: the unsplit model, GATI in process, GATI through the cluster
    5 over_time       rolling speed-up and agreement over the locality workloads, with the live lower bound
    6 caches          lookup cost and memory per cache variant and cut, the plan's caches marked
    7 hop_delay       the cluster's median latency as the per-hop network delay grows
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from experiments.sweep.results import RowResult
from experiments.sweep.spec import CLUSTER, IN_PROCESS, PAPER_TARGET, ModelSpec

DEVICE_NAMES = {"cpu": "CPU", "cuda": "GPU"}
SPEEDUP = "speed-up over the unsplit model (x)"
AGREEMENT = "agreement with the unsplit model"


@dataclass(frozen=True)
class Drawn:
    name: str                        # file stem, e.g. "fig1-gain-vs-paper"
    caption: str
    figure: Figure | None            # None: nothing to draw from these rows
    missing: str = ""                # why it is None
    # The rows to draw it from are finished, but their per-request records are not here (a fresh clone: records stay
    # in the sweep's work folder, out of git): the figure committed by the run that had them stays.
    kept: bool = False


RECORDS_ABSENT = "its rows' per-request records are not in this checkout"


def pick(rows: list[RowResult], **where) -> list[RowResult]:
    """The finished rows whose row fields (and `workload_name`) equal the given values."""
    def matches(r: RowResult) -> bool:
        return all(getattr(r.row, key) == value for key, value in where.items())
    return [r for r in rows if r.summary is not None and matches(r)]


def with_records(rows: list[RowResult]) -> list[RowResult]:
    """The rows whose per-request records are here (they live outside git, under the sweep's work folder)."""
    return [r for r in rows if r.records is not None]


def baseline(rows: list[RowResult], **where) -> list[RowResult]:
    """Rows measured as `gati eval` measures: i.i.d. traffic, in process, frozen caches."""
    return pick(rows, workload_name="iid", deployment=IN_PROCESS, online=False, **where)


def draw_all(rows: list[RowResult], models: dict[str, ModelSpec], target: float, window: int) -> list[Drawn]:
    specs: list[tuple[str, str, Callable[[], Figure | None], str]] = [
        ("fig1-gain-vs-paper", f"Latency gain at target {target:g} per model and device, beside the paper's Table 6",
         lambda: gain_vs_paper(rows, models, target), "no i.i.d. in-process rows at the headline target"),
        ("fig2-tradeoff", "Agreement vs latency gain as the target varies, with the certified bound",
         lambda: tradeoff(rows, models), "no i.i.d. in-process rows"),
        ("fig3-exits", "Where requests exit: share answered at each cut, per model and target",
         lambda: exits(rows, models), "no i.i.d. in-process rows"),
        ("fig4-latency-cdf", f"Latency CDFs at target {target:g}: unsplit model, GATI in process and in the cluster",
         lambda: latency_cdf(rows, models, target), "no i.i.d. rows at the headline target with their per-request records here"),
        ("fig5-over-time", "Rolling speed-up and agreement over time on the locality workloads, with the live "
                           "lower bound", lambda: over_time(rows, models, target, window),
         "no locality-workload rows at the headline target with their per-request records here"),
        ("fig6-caches", "Lookup cost and memory per cache variant and cut", lambda: caches(rows, models),
         "no rows with a bundle"),
        ("fig7-hop-delay", "Cluster placement: median latency as the per-hop network delay grows",
         lambda: hop_delay(rows, models), "no cluster rows"),
    ]
    # figures drawn from per-request records: the rows they would be drawn from, records or not
    from_records = {"fig4-latency-cdf": lambda: cdf_rows(rows, target),
                    "fig5-over-time": lambda: locality_rows(rows, target)}
    out = []
    for name, caption, draw, why in specs:
        figure = draw()
        if figure is None and name in from_records and from_records[name]():
            out.append(Drawn(name, caption, None, RECORDS_ABSENT, kept=True))
        else:
            out.append(Drawn(name, caption, figure, "" if figure is not None else why))
    return out


def write_figures(drawn: list[Drawn], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for d in drawn:
        path = folder / f"{d.name}.png"
        if d.figure is not None:
            d.figure.savefig(path, dpi=110)
        elif path.exists() and not d.kept:
            path.unlink()  # a figure these rows cannot draw must not survive from another run


# --- 1 ------------------------------------------------------------------------------------------------------------

def gain_vs_paper(rows: list[RowResult], models: dict[str, ModelSpec], target: float) -> Figure | None:
    chosen = baseline(rows, target=target)
    if not chosen:
        return None
    names = [m for m in models if models[m].paper or any(r.row.model == m for r in chosen)]
    fig = Figure(figsize=(2.2 * len(names) + 6, 4.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(names))
    width = 0.2
    for k, device in enumerate(("cpu", "cuda")):
        measured = [_one(baseline(chosen, model=m, device=device)) for m in names]
        paper = [models[m].paper.get(device, np.nan) for m in names]
        gains = [r.summary.speedup_mean if r else np.nan for r in measured]
        ours = ax.bar(x + (2 * k - 1.5) * width, gains, width, label=f"measured, {DEVICE_NAMES[device]}",
                      color=f"C{2 * k}")
        theirs = ax.bar(x + (2 * k - 0.5) * width, paper, width, label=f"paper, {DEVICE_NAMES[device]} (Table 6)",
                        color=f"C{2 * k}", alpha=0.35, hatch="//", edgecolor=f"C{2 * k}")
        for bars, values in ((ours, gains), (theirs, paper)):
            ax.bar_label(bars, [f"{v:.2f}x" if np.isfinite(v) else "" for v in values], fontsize=8)
        for xi, r in zip(x + (2 * k - 1.5) * width, measured):
            if r is None:
                ax.text(xi, 0.05, "not measured", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
    ax.axhline(1.0, color="0.3", linewidth=0.8, linestyle=":", label="no gain")
    ax.set_xticks(x, [models[m].title for m in names])
    ax.set_title(f"Latency gain at target {target:g} beside the paper's Table 6\n(i.i.d. requests, in process, "
                 "ratio of mean latencies)")
    ax.set_xlabel("model / data set")
    ax.set_ylabel(SPEEDUP)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# --- 2 ------------------------------------------------------------------------------------------------------------

def tradeoff(rows: list[RowResult], models: dict[str, ModelSpec]) -> Figure | None:
    chosen = baseline(rows)
    devices = [d for d in ("cpu", "cuda") if pick(chosen, device=d)]
    if not devices:
        return None
    fig = Figure(figsize=(7 * len(devices), 5), layout="constrained")
    for ax, device in zip(fig.subplots(1, len(devices), squeeze=False)[0], devices):
        for i, model in enumerate(m for m in models if pick(chosen, device=device, model=m)):
            points = sorted(pick(chosen, device=device, model=model), key=lambda r: r.row.target)
            gain = [r.summary.speedup_mean for r in points]
            title = models[model].title
            ax.plot(gain, [r.summary.agreement for r in points], "o-", color=f"C{i}", label=f"{title}: measured")
            ax.plot(gain, [r.row.target for r in points], "v--", color=f"C{i}", alpha=0.6,
                    label=f"{title}: certified bound (>= target)")
            for r, g in zip(points, gain):
                ax.annotate(f"{r.row.target:g}", (g, r.summary.agreement), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
            if device in models[model].paper:
                ax.plot([models[model].paper[device]], [PAPER_TARGET], "*", markersize=13, color=f"C{i}",
                        markeredgecolor="black", label=f"{title}: paper (Table 6, {PAPER_TARGET:.0%})")
        ax.set_title(f"Agreement vs latency gain as the target varies ({DEVICE_NAMES[device]})")
        ax.set_xlabel(SPEEDUP)
        ax.set_ylabel(AGREEMENT)
        ax.legend(fontsize=7)
    return fig


# --- 3 ------------------------------------------------------------------------------------------------------------

def exits(rows: list[RowResult], models: dict[str, ModelSpec]) -> Figure | None:
    chosen = baseline(rows, device="cpu") or baseline(rows)
    names = [m for m in models if pick(chosen, model=m)]
    if not names:
        return None
    fig = Figure(figsize=(11, 3.6 * len(names)), layout="constrained")
    for ax, model in zip(fig.subplots(len(names), 1, squeeze=False)[:, 0], names):
        points = sorted(pick(chosen, model=model), key=lambda r: r.row.target)
        used = [*points[0].bundle.cuts, "final"]  # every cut, so the depth at which requests leave shows
        x = np.arange(len(used))
        width = 0.8 / len(points)
        for k, r in enumerate(points):
            share = [r.summary.exits.get(e, 0) / r.summary.requests for e in used]
            ax.bar(x + (k - (len(points) - 1) / 2) * width, share, width, label=f"target {r.row.target:g}")
        ax.set_xticks(x, used, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"Where requests exit: {models[model].title} (i.i.d., in process, {points[0].row.device})")
        ax.set_xlabel("exit (the cut whose cache answered, or the full model)")
        ax.set_ylabel("share of requests")
        ax.legend(fontsize=8)
    return fig


# --- 4 ------------------------------------------------------------------------------------------------------------

def cdf_rows(rows: list[RowResult], target: float) -> list[RowResult]:
    """The rows figure 4 draws from: i.i.d., frozen, at the target, on the CPU where there are such rows."""
    return pick(rows, workload_name="iid", online=False, target=target, device="cpu") \
        or pick(rows, workload_name="iid", online=False, target=target)


def latency_cdf(rows: list[RowResult], models: dict[str, ModelSpec], target: float) -> Figure | None:
    chosen = cdf_rows(with_records(rows), target)
    names = [m for m in models if pick(chosen, model=m)]
    if not names:
        return None
    fig = Figure(figsize=(6 * len(names), 4.5), layout="constrained")
    for ax, model in zip(fig.subplots(1, len(names), squeeze=False)[0], names):
        mine = pick(chosen, model=model)
        local = pick(mine, deployment=IN_PROCESS)
        first = (local or mine)[0]
        _cdf(ax, first.records.ms_base, "unsplit model", "0.3")
        if local:
            _cdf(ax, local[0].records.ms_gati, "GATI in process", "C0")
        for i, r in enumerate(sorted(pick(mine, deployment=CLUSTER), key=lambda r: r.row.hop_delay_ms)):
            _cdf(ax, r.records.ms_gati, f"GATI through the cluster ({r.row.hop_delay_ms:g} ms per hop)", f"C{i + 1}")
        ax.set_xscale("log")
        ax.set_title(f"Latency CDF: {models[model].title}, target {target:g}, i.i.d.")
        ax.set_xlabel("latency per request (ms, log scale)")
        ax.set_ylabel("share of requests at or below")
        ax.legend(fontsize=8)
    return fig


def _cdf(ax: Axes, ms: np.ndarray, label: str, color: str) -> None:
    values = np.sort(np.asarray(ms, dtype=float))
    ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=label, color=color)


# --- 5 ------------------------------------------------------------------------------------------------------------

def locality_rows(rows: list[RowResult], target: float) -> list[RowResult]:
    """The rows figure 5 draws from: the locality workloads in process at the target (on the CPU where there are
    such rows)."""
    chosen = [r for r in pick(rows, deployment=IN_PROCESS, target=target) if r.row.workload_name != "iid"]
    return pick(chosen, device="cpu") or chosen


def over_time(rows: list[RowResult], models: dict[str, ModelSpec], target: float, window: int) -> Figure | None:
    chosen = locality_rows(with_records(rows), target)
    workloads = sorted({r.row.workload_name for r in chosen})
    if not workloads:
        return None
    fig = Figure(figsize=(14, 3.8 * len(workloads)), layout="constrained")
    grid = fig.subplots(len(workloads), 2, squeeze=False)
    for (speed_ax, agree_ax), workload in zip(grid, workloads):
        series = sorted(pick(chosen, workload_name=workload), key=lambda r: (r.row.model, r.row.online))
        for i, r in enumerate(series):
            label = f"{models[r.row.model].title}, learning {'on' if r.row.online else 'off'}"
            rec, w = r.records, min(window, len(r.records))
            t = np.arange(w, len(rec) + 1)
            speed_ax.plot(t, _rolling(rec.ms_base, w) / _rolling(rec.ms_gati, w), color=f"C{i}", label=label)
            agree = (rec.answer == rec.base_label).astype(float)
            agree_ax.plot(t, _rolling(agree, w) / w, color=f"C{i}", label=f"{label}: rolling agreement")
            agree_ax.plot(np.arange(1, len(rec) + 1), rec.live_lower_bound, color=f"C{i}", linestyle="--",
                          label=f"{label}: live lower bound (all requests so far)")
        speed_ax.axhline(1.0, color="0.3", linewidth=0.8, linestyle=":", label="no gain")
        agree_ax.axhline(target, color="black", linewidth=0.8, linestyle=":", label=f"target {target:g}")
        agree_ax.set_ylim(max(0.0, target - 0.15), 1.005)
        speed_ax.set_title(f"{workload}: rolling speed-up ({window} requests)")
        agree_ax.set_title(f"{workload}: rolling agreement and the live lower bound")
        for ax in (speed_ax, agree_ax):
            ax.set_xlabel("request number")
            ax.legend(fontsize=7)
        speed_ax.set_ylabel(f"{SPEEDUP[:-1]}, window sums)")
        agree_ax.set_ylabel(AGREEMENT)
    return fig


def _rolling(values: np.ndarray, w: int) -> np.ndarray:
    """Sums of every w consecutive values."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=float))])
    return c[w:] - c[:-w]


# --- 6 ------------------------------------------------------------------------------------------------------------

def caches(rows: list[RowResult], models: dict[str, ModelSpec]) -> Figure | None:
    chosen = [r for r in rows if r.bundle is not None]
    names = [m for m in models if pick(chosen, model=m)]
    if not names:
        return None
    fig = Figure(figsize=(14, 3.8 * len(names)), layout="constrained")
    for (cost_ax, size_ax), model in zip(fig.subplots(len(names), 2, squeeze=False), names):
        mine = pick(chosen, model=model)
        r = (pick(mine, device="cpu") or mine)[0]
        facts = r.bundle
        for i, variant in enumerate(sorted({c.variant for c in facts.caches})):
            mine_v = sorted((c for c in facts.caches if c.variant == variant), key=lambda c: c.cut)
            cuts = [c.cut for c in mine_v]
            cost_ax.plot(cuts, [c.lookup_ms if c.lookup_ms is not None else np.nan for c in mine_v], "o-",
                         color=f"C{i}", label=variant)
            size_ax.plot(cuts, [c.nbytes / 2**20 for c in mine_v], "o-", color=f"C{i}", label=variant)
        planned = [c for c in facts.caches if c.planned]
        label = f"in the plan at target {facts.target:g}"
        cost_ax.plot([c.cut for c in planned], [c.lookup_ms or np.nan for c in planned], "o", markersize=13,
                     markerfacecolor="none", markeredgecolor="black", label=label)
        size_ax.plot([c.cut for c in planned], [c.nbytes / 2**20 for c in planned], "o", markersize=13,
                     markerfacecolor="none", markeredgecolor="black", label=label)
        size_ax.set_yscale("log")
        title = models[model].title
        cost_ax.set_title(f"{title}: lookup cost per cut (profiled on {facts.profile_device})")
        size_ax.set_title(f"{title}: memory per cache")
        cost_ax.set_ylabel("lookup cost (ms added to the request)")
        size_ax.set_ylabel("cache size (MB, log scale)")
        for ax in (cost_ax, size_ax):
            ax.set_xticks(range(len(facts.cuts)), facts.cuts, rotation=45, ha="right", fontsize=7)
            ax.set_xlabel("cut")
            ax.legend(fontsize=7)
    return fig


# --- 7 ------------------------------------------------------------------------------------------------------------

def hop_delay(rows: list[RowResult], models: dict[str, ModelSpec]) -> Figure | None:
    clustered = pick(rows, deployment=CLUSTER, workload_name="iid", online=False)
    # one line per bundle: a results file keeps rows of earlier builds beside the preset's own
    groups = sorted({(r.row.model, r.row.device, r.row.target, r.row.build) for r in clustered})
    if not groups:
        return None
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for i, (model, device, target, build) in enumerate(groups):
        points = sorted(pick(clustered, model=model, device=device, target=target, build=build),
                        key=lambda r: r.row.hop_delay_ms)
        title = f"{models[model].title} at {target:g} ({device}{', ' + build if build else ''})"
        ax.plot([r.row.hop_delay_ms for r in points], [r.summary.p50_ms_gati for r in points], "o-", color=f"C{i}",
                label=f"{title}: cluster")
        local = _one(baseline(rows, model=model, device=device, target=target, build=build))
        if local is not None:
            ax.axhline(local.summary.p50_ms_gati, color=f"C{i}", linestyle="--", label=f"{title}: in process")
            ax.axhline(local.summary.p50_ms_base, color=f"C{i}", linestyle=":", label=f"{title}: unsplit model")
    ax.set_title("Cluster placement: median latency as the per-hop network delay grows")
    ax.set_xlabel("injected delay per network hop (ms)")
    ax.set_ylabel("median latency per request (ms)")
    ax.legend(fontsize=8)
    return fig


def _one(rows: list[RowResult]) -> RowResult | None:
    """The row measured on the most requests (then the latest), or None."""
    return max(rows, key=lambda r: (r.summary.requests, r.finished), default=None)
