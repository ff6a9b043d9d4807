"""From scored caches and a profile to a certified plan: shared by build, calibrate and plan.

The bundle keeps every fitted cache's answers on the calibration images (`calibration.npz`), so
re-targeting (`gati calibrate`) or re-planning for another device (`gati plan`) needs neither the
data nor a pass of the base model: only the stored scores and a (new) profile.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from gati.bundle.layout import CacheKey
from gati.bundle.manifest import Certificate, Expected, Look, Manifest, Profile
from gati.pipeline.certify import (
    Certified,
    Costs,
    Scores,
    agreement_lower_bound,
    calibrate,
    look_alpha,
    split_select_certify,
)
from gati.pipeline.optimizer import Choice, Problem, optimize
from gati.pipeline.score import scores_from
from gati.runtime.plan import MODES, Plan, PlanEntry

LEVELS = 8  # certified vectors a plan keeps to fall back to (gati.runtime.plan), beside "no early exits"


def certification_margin(target: float, n_certify: int, alpha: float) -> float:
    """How far above the target the select part must aim so that the certify part's lower bound
    can still clear the target (the gap Clopper-Pearson leaves at this sample size and level)."""
    for margin in np.arange(0.0, 1.0 - target + 1e-9, 0.0005):
        wrong = int((1.0 - target - margin) * n_certify)
        if agreement_lower_bound(n_certify, wrong, alpha) >= target:
            return float(margin)
    return float(1.0 - target)


@dataclass(frozen=True)
class CertifyContext:
    """What a certification needs to know beyond the scores: where it stands in the ledger of looks
    at this certify part, and what the claim is about."""
    command: str            # build, calibrate, plan, compact
    look: int               # 1 for the build's own look
    dataset: str
    split: str              # the calibration split
    scored_on: str          # e.g. "cpu float32"
    served_on: str          # the profile's device


@dataclass
class Planned:
    """A certified plan, what the latency model expects of it, and the look it cost."""
    plan: Plan
    certified: Certificate
    expected: Expected
    look: Look
    # how it was reached: the optimizer's caches in cut order (the plan drops those no certified vector uses) and
    # the certification over their threshold sequence, for experiments that take the procedure apart
    keys: list[CacheKey]
    calibration: Certified


@dataclass
class Chosen:
    """The optimizer's choice on the select part, and what calibrating it needs."""
    choice: Choice
    scores: dict[CacheKey, Scores]
    costs: Costs
    select: np.ndarray
    certify: np.ndarray
    margin: float


def choose(arrays: dict[str, np.ndarray], ids: list[str], labels: np.ndarray, profile: Profile,
           nbytes: dict[CacheKey, int], target: float, alpha: float, memory_mb: float = float("inf"),
           modes: tuple[str, ...] = MODES, halves: tuple[np.ndarray, np.ndarray] | None = None) -> Chosen:
    """The optimizer's plan on the select part. It reads no certify image's scores (only how many there are, for
    the margin), so choosing spends no look: the build's draft pass uses it to decide what to fit at full size."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    select, cert = halves if halves is not None else split_select_certify(np.asarray(labels), ids)
    # only caches the profile could time on this device are candidates (kNN has no CUDA graph)
    scores = {k: s for k, s in scores_from(arrays).items() if profile.times(*k)}
    if profile.device.startswith("cuda"):
        modes = ("sync",)  # the CUDA engine runs graphs; it has no async mode
    costs = Costs.of(profile, scores)
    margin = certification_margin(target, len(cert), alpha)
    problem = Problem({k: s.subset(select) for k, s in scores.items()}, costs, nbytes,
                      min(target + margin, 1.0), memory_mb * 2**20)
    return Chosen(optimize(problem, modes), scores, costs, select, cert, margin)


def make_plan(arrays: dict[str, np.ndarray], ids: list[str], labels: np.ndarray, profile: Profile,
              nbytes: dict[CacheKey, int], cuts: list[str], target: float, context: CertifyContext,
              memory_mb: float = float("inf"), modes: tuple[str, ...] = MODES,
              halves: tuple[np.ndarray, np.ndarray] | None = None) -> Planned:
    """Optimise the plan on the select part, then calibrate and certify its thresholds.

    `halves`: (select, certify) indices to use instead of the salted split of `ids` (which every bundle's
    certificate rests on); experiments/plan_resplits.py draws random ones to see how typical that split is."""
    alpha = look_alpha(context.look)
    chosen = choose(arrays, ids, labels, profile, nbytes, target, alpha, memory_mb, modes, halves)
    choice = chosen.choice
    entries = [chosen.scores[k] for k in choice.keys]
    thresholds, result = calibrate(entries, chosen.costs, choice.mode, target, chosen.select, chosen.certify, alpha)
    kept = [j for j, t in enumerate(thresholds) if np.isfinite(t)]
    plan = Plan([PlanEntry(choice.keys[j][0], cuts[choice.keys[j][0]], choice.keys[j][1], thresholds[j]) for j in kept],
                choice.mode, [[float(v[j]) for j in kept] for v in spread_levels(result.passed)])
    certified = _certificate(result, plan, target, context, len(chosen.select), chosen.margin)
    expected = Expected(choice.latency_ms, profile.base_ms, choice.hit_rate, choice.agreement)
    look = Look(context.command, float(target), alpha, bool(plan.entries),
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return Planned(plan, certified, expected, look, list(choice.keys), result)


def spread_levels(passed: list[np.ndarray], levels: int = LEVELS) -> list[np.ndarray]:
    """Up to `levels` of the certified vectors, evenly along the sequence, the most conservative and the chosen
    (last) one always among them. The path is nested, so a cut whose chosen threshold is infinite is infinite in
    every earlier vector too: dropping it from the plan drops nothing a level would use."""
    if len(passed) <= levels:
        return list(passed)
    return [passed[i] for i in np.unique(np.linspace(0, len(passed) - 1, levels).round().astype(int))]


def _certificate(result: Certified, plan: Plan, target: float, context: CertifyContext, select_n: int,
                 margin: float) -> Certificate:
    claim = (f"agreement with the base model >= {target}" if plan.entries
             else "no early exits: every answer is the base model's (agreement 1 by construction)")
    population = (f"requests exchangeable with the images of {context.dataset} {context.split} (their class mix; "
                  f"{result.n} certify images chosen by a salted hash), answered on {context.served_on} by this "
                  "plan's caches (caches_sha256)")
    if context.served_on.startswith("cuda"):
        population += "; CUDA numerics pinned to float32 (TF32 off) to match the scores"
    return Certificate(
        claim=claim, target=float(target), confidence=1 - result.alpha, alpha=result.alpha, look=context.look,
        method="fixed-sequence test over a greedy threshold path (Learn-then-Test), one-sided Clopper-Pearson",
        population=population, scored_on=context.scored_on, caches_sha256="",
        nominal_lower_bound=floored(result.lower_bound), agreement=floored(result.agreement),
        hit_rate=floored(result.hit_rate), hit_rate_lower_bound=floored(result.hit_rate_lower_bound),
        n=result.n, wrong_hits=result.wrong_hits, vectors_tested=result.tested, select_n=select_n,
        select_margin=round(margin, 4))


def floored(x: float, digits: int = 4) -> float:
    """Rounded down, never up: a printed estimate must not claim more than was measured."""
    return math.floor(x * 10 ** digits) / 10 ** digits


def plan_report(manifest: Manifest) -> str:
    """What `gati build`, `calibrate`, `plan` and `compact` print: the plan, its expected latency, its promise."""
    e, c = manifest.expected, manifest.certified
    gain = e.base_ms / e.latency_ms if e.latency_ms > 0 else float("nan")
    return (f"{manifest.plan.describe()}\n"
            f"expected {e.latency_ms:.3f} ms vs base {e.base_ms:.3f} ms ({gain:.2f}x), hit rate {e.hit_rate:.1%}, "
            f"simulated agreement {e.agreement:.2%} ({manifest.plan.mode})\n"
            f"certified: {c.claim} with {c.confidence:.2%} confidence (look {c.look} at {c.n} certify images; "
            f"nominal Clopper-Pearson {c.nominal_lower_bound:.4f}; hit rate {c.hit_rate:.1%}, "
            f">= {c.hit_rate_lower_bound:.1%} certified)")
