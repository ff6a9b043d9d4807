"""From scored caches and a profile to a certified plan: shared by build, calibrate and plan.

The bundle keeps every fitted cache's answers on the calibration images (`calibration.npz`), so
re-targeting (`gati calibrate`) or re-planning for another device (`gati plan`) needs neither the
data nor a pass of the base model: only the stored scores and a (new) profile.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gati.bundle.layout import CacheKey
from gati.bundle.manifest import Certificate, Expected, Manifest, Profile
from gati.pipeline.certify import ALPHA, Costs, agreement_lower_bound, calibrate, split_select_certify
from gati.pipeline.optimizer import Problem, optimize
from gati.pipeline.score import scores_from
from gati.runtime.plan import MODES, Plan, PlanEntry


def certification_margin(target: float, n_certify: int) -> float:
    """How far above the target the select part must aim so that the certify part's lower bound
    can still clear the target (the gap Clopper-Pearson leaves at this sample size)."""
    for margin in np.arange(0.0, 1.0 - target + 1e-9, 0.0005):
        wrong = int((1.0 - target - margin) * n_certify)
        if agreement_lower_bound(n_certify, wrong) >= target:
            return float(margin)
    return float(1.0 - target)


@dataclass
class Planned:
    """A certified plan and what the latency model expects of it."""
    plan: Plan
    certified: Certificate
    expected: Expected


def make_plan(arrays: dict[str, np.ndarray], labels: np.ndarray, profile: Profile,
              nbytes: dict[CacheKey, int], cuts: list[str], target: float,
              memory_mb: float = float("inf"), modes: tuple[str, ...] = MODES) -> Planned:
    """Optimise the plan on the select part, then calibrate and certify its thresholds."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    select, cert = split_select_certify(np.asarray(labels))
    # only caches the profile could time on this device are candidates (kNN has no CUDA graph)
    scores = {k: s for k, s in scores_from(arrays).items() if profile.times(*k)}
    if profile.device.startswith("cuda"):
        modes = ("sync",)  # the CUDA engine runs graphs; it has no async mode
    costs = Costs(profile.stage_ms, {key: profile.lookup(*key) for key in scores},
                  {key: profile.overlap(*key) for key in scores if profile.overlap(*key) is not None})
    margin = certification_margin(target, len(cert))
    problem = Problem({k: s.subset(select) for k, s in scores.items()}, costs, nbytes,
                      min(target + margin, 1.0), memory_mb * 2**20)
    choice = optimize(problem, modes)
    entries = [scores[k] for k in choice.keys]
    thresholds, cert_result = calibrate(entries, costs, choice.mode, target, select, cert)
    plan = Plan([PlanEntry(k[0], cuts[k[0]], k[1], t) for k, t in zip(choice.keys, thresholds)
                 if np.isfinite(t)], choice.mode)
    certified = Certificate(lower_bound=round(cert_result.lower_bound, 6), confidence=1 - ALPHA,
                            method="fixed-sequence test, one-sided Clopper-Pearson",
                            agreement=round(cert_result.agreement, 6), hit_rate=round(cert_result.hit_rate, 6),
                            n=cert_result.n, wrong_hits=cert_result.wrong_hits, vectors_tested=cert_result.tested,
                            select_n=int(len(select)), select_margin=round(margin, 4))
    expected = Expected(choice.latency_ms, profile.base_ms, choice.hit_rate, choice.agreement)
    return Planned(plan, certified, expected)


def plan_report(manifest: Manifest) -> str:
    """What `gati build`, `calibrate`, `plan` and `compact` print: the plan, its expected latency, its promise."""
    e, c = manifest.expected, manifest.certified
    gain = e.base_ms / e.latency_ms if e.latency_ms > 0 else float("nan")
    return (f"{manifest.plan.describe()}\n"
            f"expected {e.latency_ms:.3f} ms vs base {e.base_ms:.3f} ms ({gain:.2f}x), hit rate {e.hit_rate:.1%}, "
            f"simulated agreement {e.agreement:.2%} ({manifest.plan.mode})\n"
            f"certified agreement >= {c.lower_bound:.4f} ({c.confidence:.0%} confidence, "
            f"{c.n} held-out calibration images, hit rate {c.hit_rate:.1%})")
