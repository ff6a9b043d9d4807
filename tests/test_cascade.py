"""The cascade loop: one rule for every verdict source, and the calibration simulator agrees with it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gati.bundle import load_bundle
from gati.data import load_split
from gati.errors import Cancelled
from gati.pipeline.certify import Scores, exit_index
from gati.rpc import surface
from gati.rpc.auth import Secret
from gati.rpc.executor import RemoteVerdicts, Route
from gati.rpc.gen.gati_idl import Predictor
from gati.rpc.metrics import ExecutorMetrics
from gati.rpc.predictor import PredictorHandler, Slot
from gati.rpc.server import RpcServer
from gati.rpc.transport import Limits, Pool
from gati.runtime.cascade import Done, Step, Verdict, run_cascade
from gati.runtime.engine import Engine
from gati.runtime.graphs import GraphedCascade
from tests.test_graphs import Eager


class ScoredVerdicts:
    """Replays stored calibration scores: the verdict at cut j for the image the loop carries."""

    def __init__(self, scores: list[Scores], thresholds: np.ndarray):
        self.scores, self.thresholds = scores, thresholds

    def ask(self, cut: int, x: torch.Tensor) -> Done:
        i, s = int(x[0]), self.scores[cut]
        return Done(Verdict.judge(cut, int(not s.correct[i]), float(s.conf[i]), self.thresholds[cut]))


def _identity_steps(m: int) -> list[Step]:
    """m planned cuts after m steps, then the head: the loop's shape without a model."""
    return [Step(lambda x: x, k + 1, k if k < m else None, f"cut{k}" if k < m else "") for k in range(m + 1)]


@pytest.mark.parametrize("lookahead", [0, 1, 2])
def test_the_simulator_exits_where_the_loop_exits(lookahead):
    rng = np.random.default_rng(lookahead)
    m, n = 4, 500
    scores = [Scores(j, "x", rng.random(n).astype(np.float32), rng.random(n) < 0.9) for j in range(m)]
    thresholds = np.array([0.9, 0.7, np.inf, 0.5])
    source, steps = ScoredVerdicts(scores, thresholds), _identity_steps(m)
    simulated = exit_index(scores, thresholds)
    for i in range(n):
        trace = run_cascade(torch.tensor([i]), steps, source, lookahead, lambda x: (0, 1.0))
        exit_cut = trace.answer.exit_cut
        assert (m if exit_cut is None else exit_cut) == simulated[i]
        if exit_cut is not None:  # the loop stops `lookahead` steps after the cut (capped at the end)
            assert trace.answer.stages_run == min(exit_cut + 1 + lookahead, m + 1)
            assert trace.answer.label == int(not scores[exit_cut].correct[i])


def test_a_shadow_run_answers_at_the_first_hit_and_still_runs_to_the_end():
    scores = [Scores(j, "x", np.array([0.99], np.float32), np.array([True])) for j in range(3)]
    answers = []
    trace = run_cascade(torch.tensor([0]), _identity_steps(3), ScoredVerdicts(scores, np.full(3, 0.5)), 0,
                        lambda x: (7, 0.8), shadow=True, on_answer=answers.append)
    assert [a.exit_cut for a in answers] == [0] and trace.answer.exit_cut == 0
    assert trace.completed and trace.final.label == 7 and [v.cut for v in trace.verdicts] == [0, 1, 2]


def test_stop_cancels_between_steps_and_a_missing_verdict_is_a_miss():
    class Silent:
        def ask(self, cut, x):
            return Done(None)  # e.g. a predictor that is down
    trace = run_cascade(torch.tensor([0]), _identity_steps(2), Silent(), 0, lambda x: (3, 0.5))
    assert trace.answer.exit_cut is None and trace.answer.label == 3 and trace.answer.stages_run == 3
    with pytest.raises(Cancelled):
        run_cascade(torch.tensor([0]), _identity_steps(2), Silent(), 0, lambda x: (3, 0.5), stop=lambda: True)


# ---- every verdict source, on the tiny bundle ---------------------------------------------------

@pytest.fixture(scope="module")
def dense(tiny_bundle, tiny_data):
    from tests.test_graphs import _dense_bundle
    bundle = load_bundle(tiny_bundle)
    data = load_split("imagefolder", tiny_data[0], "test:eval")
    inputs = [bundle.preprocess(data.images[i:i + 1]) for i in range(48)]
    return _dense_bundle(tiny_bundle, inputs), inputs


@pytest.fixture(scope="module")
def predictor(dense):
    """A real predictor service on 127.0.0.1 serving the dense plan's caches."""
    bundle, _ = dense
    slots = {e.cut: Slot(e.cut, e.cut_name, e.variant, e.threshold, bundle.caches[e.cut]) for e in bundle.plan.entries}
    secret = Secret.generate()
    server = RpcServer(Predictor.Processor(PredictorHandler(slots)), "127.0.0.1", 0,
                       surface.internal("predictor", 1 << 20), secret=secret, name="predictor").start()
    yield Pool(Predictor.Client, "127.0.0.1", server.port, Limits(secret=secret), name="predictor-0")
    server.close()


def test_every_verdict_source_gives_the_same_answers(dense, predictor):
    bundle, inputs = dense
    sync, async_ = Engine(bundle, "sync"), Engine(bundle, "async")
    entries = [(e.cut, bundle.caches[e.cut], e.threshold) for e in bundle.plan.entries]
    graphed = GraphedCascade(sync.stages, entries, inputs[0], capture=Eager)
    routes = {e.cut: Route(e.cut, bundle.caches[e.cut], predictor) for e in bundle.plan.entries}

    def remote(x, lookahead):
        source = RemoteVerdicts(0, routes, 5.0, ExecutorMetrics().lookup_failures)
        try:
            return run_cascade(x, sync.steps, source, lookahead, sync.head).answer
        finally:
            source.drain()

    exits = set()
    try:
        with torch.inference_mode():
            for x in inputs:
                want = sync.predict(x)
                answers = {"graphs": run_cascade(x, graphed.steps(bundle.staged.cuts), graphed, 0, graphed.head).answer,
                           "remote": remote(x, 0)}
                for name, got in answers.items():
                    assert (got.label, got.exit_cut, got.stages_run) == (want.label, want.exit_cut, want.stages_run), name
                late, remote_late = async_.predict(x), remote(x, 1)  # lookahead 1: the same answer, a step later
                assert (late.label, late.exit_cut) == (want.label, want.exit_cut)
                assert (remote_late.label, remote_late.exit_cut, remote_late.stages_run) == \
                    (late.label, late.exit_cut, late.stages_run)
                exits.add(want.exit_cut)
    finally:
        async_.close()
    assert len(exits) == len(entries) + 1, "answers should come from every cut and the head"
