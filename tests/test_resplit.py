"""The certificate's re-split check (gati.measure.resplit) on synthetic scores."""
import numpy as np
import pytest

from gati.measure.resplit import resplit_validation
from gati.pipeline.certify import Scores, look_alpha
from tests.test_calibrate import COSTS, synthetic_scores

N = 2000


def labels(n=N, classes=4):
    return np.arange(n) % classes


def test_the_certificate_holds_on_most_resplits_and_the_report_adds_up():
    entries = synthetic_scores(N, seed=3)
    report = resplit_validation(entries, labels(), COSTS, "sync", 0.97, look_alpha(1), n_splits=12, seed=1)
    agreement = np.array([o.agreement for o in report.outcomes])
    population = np.array([o.population_agreement for o in report.outcomes])
    assert report.n_splits == len(report.outcomes) == 12 and report.n_images == N
    assert report.violations == int((population < 0.97).sum()) and report.unseen_below_target == int((agreement < 0.97).sum())
    assert report.violations <= 1  # alpha is 0.03: a procedure that skipped certification fails this
    # the population (certify part and unseen half) holds the unseen half: its agreement lies between the halves'
    assert all(abs(o.population_agreement - o.agreement) < 0.05 for o in report.outcomes)
    assert report.violation_rate <= report.violation_rate_upper <= 1
    assert report.agreement_min == pytest.approx(agreement.min())
    assert report.hit_rate_mean > 0.3  # the cascade does answer early
    assert all(o.worst_class_agreement <= o.agreement + 1e-12 for o in report.outcomes)  # a minimum of class means
    assert report.worst_class_agreement_min <= report.agreement_min


def test_the_same_seed_gives_the_same_report():
    entries = synthetic_scores(N, seed=4)
    a, b = (resplit_validation(entries, labels(), COSTS, "sync", 0.97, 0.03, n_splits=2, seed=7) for _ in range(2))
    assert a.to_json() == b.to_json()


def test_caches_that_are_always_wrong_fall_back_to_no_early_exits():
    rng = np.random.default_rng(0)
    entries = [Scores(cut, "mlp", rng.uniform(0, 1, N), np.zeros(N, dtype=bool)) for cut in (0, 1, 2)]
    # 500 certify images without a single wrong hit bound agreement at 0.993 (alpha 0.03): below 0.999
    report = resplit_validation(entries, labels(), COSTS, "sync", 0.999, 0.03, n_splits=5)
    assert report.fell_back == 5 and report.violations == 0
    assert report.agreement_min == 1.0 and report.hit_rate_mean == 0.0


def test_scores_must_cover_every_labelled_image():
    with pytest.raises(ValueError):
        resplit_validation(synthetic_scores(10), labels(12), COSTS, "sync", 0.97, 0.03, n_splits=1)
