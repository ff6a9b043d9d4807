"""The CUDA-graph engine: segmentation (checked eagerly on any machine) and, with a GPU, the real thing."""
from dataclasses import replace

import pytest
import torch

from gati.bundle import cache_file, load_bundle
from gati.cache import load_cache
from gati.data import load_split
from gati.errors import GatiError, InvalidInput
from gati.runtime.cascade import run_cascade
from gati.runtime.engine import Engine
from gati.runtime.graphs import Graphed, GraphedCascade
from gati.runtime.plan import Plan, PlanEntry

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Eager:
    """Graphed's interface without capture: runs the segment function on every call and, like a
    graph, writes into the same static output tensors (the next segment reads them in place)."""

    def __init__(self, fn, example, static_input=True):
        self.fn = fn
        with torch.inference_mode():
            self.input = example.clone() if static_input else example
            self.output = fn(self.input)

    def __call__(self, x=None):
        with torch.inference_mode():
            if x is not None:
                self.input.copy_(x)
            for static, new in zip(self.output, self.fn(self.input)):
                static.copy_(new)
        return self.output


def _dense_bundle(path, inputs, device="cpu"):
    """The tiny bundle with an mlp cache at every cut but the head (all graphable), each threshold
    at the median confidence of the requests that reach it, so that answers come from every exit."""
    bundle = load_bundle(path, device)
    cuts = range(len(bundle.staged.cuts) - 1)
    caches = {c: load_cache(path / cache_file(c, "mlp")).to(device) for c in cuts}
    thresholds, acts = [], [x.to(device) for x in inputs]
    with torch.inference_mode():
        for c in cuts:
            acts = [bundle.staged.stages[c](a) for a in acts]
            conf = torch.cat([caches[c].lookup(a)[1] for a in acts])
            thresholds.append(float(conf.median()))
            acts = [a for a, k in zip(acts, conf) if k < thresholds[-1]]
    plan = Plan([PlanEntry(c, bundle.staged.cuts[c], "mlp", t) for c, t in zip(cuts, thresholds)], "sync")
    return replace(bundle, plan=plan, caches=caches)


@pytest.fixture(scope="module")
def inputs(tiny_bundle, tiny_data):
    bundle = load_bundle(tiny_bundle)
    data = load_split("imagefolder", tiny_data[0], "test:eval")
    return [bundle.preprocess(data.images[i:i + 1]) for i in range(60)]


def test_segments_answer_like_the_stage_by_stage_engine(tiny_bundle, inputs):
    bundle = _dense_bundle(tiny_bundle, inputs)
    engine = Engine(bundle, "sync")
    entries = [(e.cut, bundle.caches[e.cut], e.threshold) for e in bundle.plan.entries]
    cascade = GraphedCascade(engine.stages, entries, inputs[0], capture=Eager)
    exits = set()
    for x in inputs:
        want, got = engine.predict(x), _run(cascade, bundle, x)
        assert (got.label, got.exit_cut, got.stages_run) == (want.label, want.exit_cut, want.stages_run)
        assert got.confidence == pytest.approx(want.confidence, abs=1e-6)
        exits.add(got.exit_cut)
    assert len(exits) == len(entries) + 1, "answers should come from every cut and the head"


def _run(cascade, bundle, x):
    """The cascade loop over the graphed segments, as the engine runs it on CUDA."""
    with torch.inference_mode():
        return run_cascade(x, cascade.steps(bundle.staged.cuts), cascade, 0, cascade.head).answer


def test_the_first_segment_rejects_non_finite_input(tiny_bundle, inputs):
    bundle = _dense_bundle(tiny_bundle, inputs)
    entries = [(e.cut, bundle.caches[e.cut], e.threshold) for e in bundle.plan.entries]
    cascade = GraphedCascade(list(bundle.staged.stages), entries, inputs[0], capture=Eager)
    bad = inputs[0].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInput, match="NaN"):
        _run(cascade, bundle, bad)


def test_a_knn_cache_cannot_be_captured(tiny_bundle, inputs):
    pytest.importorskip("faiss")
    bundle = load_bundle(tiny_bundle)
    knn = load_cache(tiny_bundle / cache_file(0, "knn"))
    with pytest.raises(GatiError, match="re-plan for this device"):
        GraphedCascade(list(bundle.staged.stages), [(0, knn, 0.9)], inputs[0], capture=Eager)


def test_graphs_need_a_cuda_tensor():
    with pytest.raises(GatiError, match="CUDA"):
        Graphed(lambda x: x + 1, torch.zeros(1))


@cuda
def test_on_cuda_the_graph_engine_matches_the_eager_one(tiny_bundle, inputs):
    bundle = _dense_bundle(tiny_bundle, inputs, "cuda")
    graphs = Engine(bundle, "sync")
    eager = Engine(bundle, "sync", graphs=False)  # the same engine, run stage by stage
    assert graphs.graphed
    for x in inputs:
        a, b = graphs.predict(x), eager.predict(x)
        assert (a.label, a.exit_cut, a.stages_run) == (b.label, b.exit_cut, b.stages_run)
        assert graphs.predict_base(x) == eager.predict_base(x)
    bad = inputs[0].clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(InvalidInput):
        graphs.predict(bad)


def test_a_level_judges_the_same_segments_at_its_own_thresholds(tiny_bundle, inputs):
    bundle = _dense_bundle(tiny_bundle, inputs)
    entries = [(e.cut, bundle.caches[e.cut], e.threshold) for e in bundle.plan.entries]
    graphed = GraphedCascade(list(bundle.staged.stages), entries, inputs[0], capture=Eager)
    never = graphed.judged_at({e.cut: float("inf") for e in bundle.plan.entries})
    steps = graphed.steps(bundle.staged.cuts)
    with torch.inference_mode():
        for x in inputs[:20]:
            answer = run_cascade(x, steps, never, 0, never.head).answer
            assert answer.exit_cut is None and answer.label == int(bundle.model(x).argmax())
    assert any(run_cascade(x, steps, graphed, 0, graphed.head).answer.exit_cut is not None for x in inputs[:20])
