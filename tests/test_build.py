"""The build's draft pass: cheap drafts first, full-size fits only where the draft plan exits, and a choice that
never reads the certify part."""

from __future__ import annotations

import functools

import numpy as np
import torch

from gati.bundle import read_bundle
from gati.pipeline.build import fit_caches, fit_with_drafts
from gati.pipeline.certify import look_alpha, split_select_certify
from gati.pipeline.planner import choose
from gati.cache import make_cache

CLASSES = 4


def test_only_the_drafts_the_plan_chose_are_refitted_at_full_size():
    shapes = {0: (8, 4, 4), 1: (8, 4, 4)}
    caches = {(cut, v): make_cache(v, shapes[cut], CLASSES, epochs=1) for cut in shapes for v in ("convfc", "fc")}
    feats = {(cut, c.reducer_key): torch.randn(64, *c.feat_shape) for (cut, _), c in caches.items()}
    fit = functools.partial(fit_caches, feats=feats, teacher=torch.randn(64, CLASSES), seed=0)
    offered = {}

    def chosen(fitted):
        offered.update({key: cache.hparams.channels for key, cache in fitted.items() if key[1] == "convfc"})
        return [(0, "convfc"), (1, "fc")]

    out = fit_with_drafts(caches, fit, chosen)
    assert offered == {(0, "convfc"): 64, (1, "convfc"): 64}  # the optimizer chose among drafts
    assert out[(0, "convfc")] is caches[(0, "convfc")] and out[(0, "convfc")].hparams.channels == 256
    assert out[(1, "convfc")].hparams.channels == 64  # not chosen: stays a draft, fitted
    assert out[(1, "fc")] is caches[(1, "fc")] and out[(0, "fc")] is caches[(0, "fc")]  # nothing to draft
    assert list(out) == list(caches)
    for (cut, _), cache in out.items():
        label, conf = cache.predict(feats[(cut, cache.reducer_key)][:3])
        assert label.shape == (3,) and bool(((conf >= 0) & (conf <= 1)).all())


def test_without_drafts_the_choice_is_never_asked_for():
    caches = {(0, "fc"): make_cache("fc", (8, 4, 4), CLASSES, epochs=1)}
    fit = functools.partial(fit_caches, feats={(0, caches[(0, "fc")].reducer_key): torch.randn(16, 8, 4, 4)},
                            teacher=torch.randn(16, CLASSES), seed=0)

    def chosen(fitted):
        raise AssertionError("nothing was drafted, so there is nothing to choose")

    assert fit_with_drafts(caches, fit, chosen)[(0, "fc")] is caches[(0, "fc")]


def test_choosing_reads_no_certify_image(tiny_bundle):
    info = read_bundle(tiny_bundle)
    arrays, ids = info.calibration()
    m = info.manifest
    nbytes = {(c.cut, c.variant): c.nbytes for c in m.caches}
    _, certify = split_select_certify(arrays["labels"], ids)
    scrambled = dict(arrays)
    rng = np.random.default_rng(0)
    for name in arrays:
        if name.startswith(("conf_", "pred_")):  # every cache's answers on the certify part, made up
            scrambled[name] = arrays[name].copy()
            made_up = rng.random(len(certify)) if name.startswith("conf_") else rng.integers(0, 4, len(certify))
            scrambled[name][certify] = made_up
    assert any(not np.array_equal(arrays[n], scrambled[n]) for n in arrays)
    picks = [choose(a, ids, arrays["labels"], m.profile, nbytes, m.target, look_alpha(1)).choice
             for a in (arrays, scrambled)]
    assert picks[0] == picks[1]
