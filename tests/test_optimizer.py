import numpy as np

from gati.pipeline.certify import Costs, Scores
from gati.pipeline.optimizer import Problem, exhaustive, greedy, optimize


def problem(memory=float("inf"), seed=0):
    rng = np.random.default_rng(seed)
    n = 1500
    scores, lookups, nbytes = {}, {}, {}
    for cut in range(4):
        for variant, skill, cost, size in (("linear", 0.3, 0.02, 1000), ("mlp", 0.6, 0.08, 50_000)):
            conf = rng.uniform(0, 1, n)
            correct = rng.uniform(0, 1, n) < (0.3 + skill * conf + 0.1 * cut)
            scores[(cut, variant)] = Scores(cut, variant, conf, correct)
            lookups[(cut, variant)] = cost
            nbytes[(cut, variant)] = size
    return Problem(scores, Costs([1.0] * 5, lookups), nbytes, target=0.95, memory_bytes=memory)


def test_greedy_lands_close_to_exhaustive():
    p = problem()
    g, e = greedy(p, "sync"), exhaustive(p, "sync")
    base = p.evaluate([], "sync").latency_ms
    assert e.latency_ms <= g.latency_ms + 1e-9
    assert g.latency_ms < base
    assert (g.latency_ms - e.latency_ms) / e.latency_ms < 0.05


def test_memory_budget_is_respected():
    p = problem(memory=60_000)
    choice = greedy(p, "sync")
    assert sum(p.nbytes[k] for k in choice.keys) <= 60_000


def test_a_cache_that_never_pays_off_is_not_chosen():
    p = problem()
    useless = Scores(1, "knn", np.zeros(1500), np.zeros(1500, dtype=bool))
    p.scores[(1, "knn")] = useless
    p.costs.lookup_ms[(1, "knn")] = 5.0  # dearer than the stages it could save
    p.nbytes[(1, "knn")] = 10
    assert (1, "knn") not in optimize(p).keys


def test_simulated_agreement_meets_the_problem_target():
    p = problem()
    assert optimize(p).agreement >= p.target
