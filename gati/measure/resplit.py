"""Does the certificate hold? Re-run the threshold calibration on many random re-splits of scored images.

A bundle's certificate claims "agreement with the base model >= target" at confidence 1 - alpha for
requests exchangeable with the calibration images. One build is one draw of that experiment, so it
cannot show the claim holds. With every planned cache's answers stored for all of a test split (the
calibration half the bundle keeps, plus the evaluation half scored once), the draw is cheap to repeat:

    for each of `n_splits` seeded re-splits of the scored images, class by class:
        half of them calibrate: select thresholds on one part, certify them on the other
        (exactly `gati.pipeline.certify.calibrate`, at the bundle's alpha, mode and costs)
        the other half plays the future traffic: measure agreement and hit rate there

What is tested is what the certificate proves. Within one re-split the certify part is a random sample,
drawn without replacement, of the scored images the select part did not take (the certify part and the
unseen half together): that finite set is the population the one-sided Clopper-Pearson test speaks of (it is
conservative for sampling without replacement). A *violation* is a re-split whose thresholds agree with the
base model on less than the target of that population; the certificate holds if violations stay below alpha.
Agreement on the unseen half alone is reported beside it, as what the next requests see: it adds that half's own
sampling error (near 0.99 on 5,000 images its standard deviation, about 0.0014, is as wide as the margin the
test leaves), so it falls below the target more often than alpha even when every certificate is true.
Likewise for the certified lower bound on the hit rate. The plan's caches are held fixed (the optimizer's
choice is not re-run per re-split: it is the thresholds the certificate is about). Worst-class agreement says how
unevenly the promise falls across classes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from gati.bundle import Bundle
from gati.data import Dataset, halves
from gati.pipeline.certify import Costs, Scores, agreement_lower_bound, calibrate, exit_index
from gati.pipeline.extract import extract, extraction_batch
from gati.pipeline.score import calibration_arrays, scores_from


@dataclass
class SplitOutcome:
    """One re-split: what calibration certified on one half and what the other half saw."""
    agreement: float              # on the unseen half
    hit_rate: float               # on the unseen half
    population_agreement: float   # on every image the select part did not take: what the certificate is about
    population_hit_rate: float
    hit_rate_lower_bound: float   # certified on the calibration half
    worst_class: int              # the class (by data set label) with the lowest agreement on the unseen half
    worst_class_agreement: float
    certified_agreement: float    # measured on the certify part
    early_exits: bool             # False: certification fell back to no early exits


@dataclass
class ResplitReport:
    target: float
    alpha: float
    n_splits: int
    n_images: int
    violations: int               # re-splits whose population agreement fell below the target (the certificate)
    violation_rate: float
    violation_rate_upper: float   # one-sided Clopper-Pearson upper bound (95%) on the violation rate
    hit_rate_violations: int      # re-splits whose population hit rate fell below its certified lower bound
    unseen_below_target: int      # re-splits whose unseen-half agreement fell below the target (sampling included)
    agreement_min: float
    agreement_p05: float
    agreement_mean: float
    hit_rate_mean: float
    worst_class_agreement_min: float
    worst_class_agreement_mean: float
    fell_back: int                # re-splits certified with no early exits at all
    outcomes: list[SplitOutcome] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ResplitInputs:
    """The plan's caches scored on every image of a split, and what calibration needs beside them."""
    entries: list[Scores]   # in plan order
    labels: np.ndarray      # the data set's labels, one per scored image
    costs: Costs
    mode: str
    target: float
    alpha: float            # the bundle's certificate spent this share of the error budget


def resplit_inputs(bundle: Bundle, unseen: Dataset) -> ResplitInputs:
    """The bundle's stored calibration scores for its plan's caches, joined with the same caches' scores on
    `unseen` (computed here: one pass of the base model). Together, e.g., the whole CIFAR-10 test split."""
    info, m = bundle.info, bundle.info.manifest
    keys = [(e.cut, e.variant) for e in m.plan.entries]
    stored, _ = info.calibration()
    caches = {key: info.load_cache(*key) for key in keys}
    wanted: dict[int, dict[str, str]] = {}
    for (cut, variant), cache in caches.items():
        wanted.setdefault(cut, {})[variant] = cache.reducer_key
    device = str(next(bundle.model.parameters()).device)
    feats, logits = extract(bundle.staged, unseen, bundle.preprocess, wanted, device, extraction_batch(device),
                            "unseen")
    fresh = calibration_arrays(caches, feats, logits.argmax(1).numpy(), unseen.labels)
    old, new = scores_from(stored), scores_from(fresh)
    entries = [Scores(cut, variant, np.concatenate([old[(cut, variant)].conf, new[(cut, variant)].conf]),
                      np.concatenate([old[(cut, variant)].correct, new[(cut, variant)].correct]))
               for cut, variant in keys]
    p = m.profile
    costs = Costs.of(p, keys)
    labels = np.concatenate([stored["labels"], np.asarray(unseen.labels)])
    return ResplitInputs(entries, labels, costs, m.plan.mode, float(m.target), float(m.certified.alpha))


def resplit_validation(entries: list[Scores], labels: np.ndarray, costs: Costs, mode: str, target: float,
                       alpha: float, n_splits: int, seed: int = 0) -> ResplitReport:
    """`n_splits` seeded re-splits of the scored images (see the module docstring)."""
    labels = np.asarray(labels)
    if not entries or any(len(e.conf) != len(labels) for e in entries):
        raise ValueError("every entry needs one score per labelled image")
    rng = np.random.default_rng(seed)
    outcomes = [_one_split(entries, labels, costs, mode, target, alpha, rng) for _ in range(n_splits)]
    return _report(outcomes, target, alpha, len(labels))


def _one_split(entries: list[Scores], labels: np.ndarray, costs: Costs, mode: str, target: float, alpha: float,
               rng: np.random.Generator) -> SplitOutcome:
    calib, rest = random_halves(labels, rng)
    select, cert = random_halves(labels[calib], rng)  # indices into `calib`
    thresholds, certified = calibrate([e.subset(calib) for e in entries], costs, mode, target, select, cert, alpha)
    right, hit = _served(entries, np.asarray(thresholds))  # every scored image, served at these thresholds
    population = np.setdiff1d(np.arange(len(labels)), calib[select])
    classes = labels[rest]
    per_class = {int(c): float(right[rest][classes == c].mean()) for c in np.unique(classes)}
    worst = min(per_class, key=per_class.get)
    return SplitOutcome(float(right[rest].mean()), float(hit[rest].mean()), float(right[population].mean()),
                        float(hit[population].mean()), float(certified.hit_rate_lower_bound), worst, per_class[worst],
                        float(certified.agreement), bool(np.isfinite(thresholds).any()))


def _served(entries: list[Scores], thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per scored image: whether the cascade at `thresholds` agrees with the base model, and whether it hit."""
    exit_at = exit_index(entries, thresholds)
    right = np.ones(len(exit_at), dtype=bool)
    for j, e in enumerate(entries):
        here = exit_at == j
        right[here] = e.correct[here]
    return right, exit_at < len(entries)


def random_halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The project's splitting rule (`gati.data.halves`: class by class, alternate rows) over a random order."""
    order = rng.permutation(len(labels))
    first, second = halves(labels[order])
    return np.sort(order[first]), np.sort(order[second])


def _report(outcomes: list[SplitOutcome], target: float, alpha: float, n_images: int) -> ResplitReport:
    agreement = np.array([o.agreement for o in outcomes])
    worst = np.array([o.worst_class_agreement for o in outcomes])
    violations = sum(o.population_agreement < target for o in outcomes)
    return ResplitReport(
        target=target, alpha=alpha, n_splits=len(outcomes), n_images=n_images, violations=violations,
        violation_rate=violations / len(outcomes), violation_rate_upper=_upper_bound(violations, len(outcomes)),
        hit_rate_violations=sum(o.population_hit_rate < o.hit_rate_lower_bound for o in outcomes),
        unseen_below_target=int((agreement < target).sum()),
        agreement_min=float(agreement.min()), agreement_p05=float(np.quantile(agreement, 0.05)),
        agreement_mean=float(agreement.mean()), hit_rate_mean=float(np.mean([o.hit_rate for o in outcomes])),
        worst_class_agreement_min=float(worst.min()), worst_class_agreement_mean=float(worst.mean()),
        fell_back=sum(not o.early_exits for o in outcomes), outcomes=outcomes)


def _upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a rate after k events in n trials (the certificate's own
    exact binomial bound, read for the events instead of the agreements)."""
    return 1.0 - agreement_lower_bound(n, k, 1.0 - confidence)
