"""The cluster's live guarantee at the front door (gati/rpc/live.py), without processes: the aggregator's bound
falls back when wrong answers put it at risk, never on misses or a stream that keeps the promise, asks again on
each new wrong answer while at risk, and counts a lost full-model run as a wrong answer."""
from __future__ import annotations

import threading

import numpy as np

from gati.rpc.live import LiveGuard


def guard(p: float = 1.0, target: float = 0.9, ask_every_s: float = 0.0) -> tuple[LiveGuard, list[str]]:
    asked: list[str] = []
    return LiveGuard(p, target, alpha=0.05, headroom=3, on_fallback=asked.append, ask_every_s=ask_every_s), asked


def test_wrong_hits_that_put_the_bound_at_risk_ask_for_no_early_exits_with_the_bound_in_the_reason():
    g, asked = guard()
    for _ in range(400):
        g.observe(True, True, False)  # sampled hits, all right: the bound climbs past the target
    assert g.snapshot().lower_bound > 0.9 and asked == []
    for _ in range(200):
        g.observe(True, True, True)
        if asked:
            break
    assert len(asked) == 1 and g.fallbacks == 1 and "live lower bound" in asked[0]
    s = g.snapshot()
    assert s.lower_bound < 0.9 + 0.05 and s.sampled_wrong >= 1
    g.observe(True, True, True)  # still at risk, a new wrong answer: asks again (the first push may have failed)
    assert len(asked) == 2


def test_fallbacks_within_the_ask_interval_are_counted_not_asked():
    g, asked = guard(ask_every_s=3600.0)
    for _ in range(400):
        g.observe(True, True, False)
    for _ in range(50):
        g.observe(True, True, True)  # hits in flight while the first push is made
    assert len(asked) == 1 == g.asked and g.fallbacks > 1


def test_misses_and_a_stream_that_keeps_the_promise_never_fall_back():
    g, asked = guard(p=0.3)
    rng = np.random.default_rng(0)
    for _ in range(20000):
        hit, sampled = bool(rng.random() < 0.8), bool(rng.random() < 0.3)
        wrong = bool(rng.random() < 0.02) if hit and sampled else None  # 98% agreement against a 0.9 target
        g.observe(hit, sampled, wrong)
    assert asked == [] and g.snapshot().lower_bound > 0.9
    for _ in range(1000):
        g.observe(False, True)  # misses are the full model's answers
    assert asked == []


def test_a_lost_full_model_run_counts_as_a_wrong_answer_seen():
    g, _ = guard()
    g.lost(True)
    g.lost(False)  # a miss is right whatever happened to its shadow run
    s = g.snapshot()
    assert (s.requests, s.hits, s.sampled_wrong) == (2, 1, 1)


def test_observations_from_many_threads_are_all_counted():
    g, _ = guard(p=0.5)

    def serve():
        for _ in range(500):
            g.observe(True, False)
    threads = [threading.Thread(target=serve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert g.snapshot().requests == 2000
