"""Learned caches on synthetic cut activations: each class has its own mean activation pattern, and the
teacher's logits are a fixed random linear map of the class (diagonal-heavy, so its argmax is learnable)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from gati.cache import (
    REDUCERS,
    hparams_for,
    hparams_of,
    VARIANTS,
    FaissIndex,
    KnnCache,
    LinearCache,
    load_cache,
    make_cache,
    make_reducer,
    reduced_shape,
)
from gati.cache.convfc import DRAFT_EPOCHS
from gati.cache.train import DistillSettings
from gati.errors import BundleError, GatiError, InvalidInput
from gati.measure.coverage import answered_within

SHAPE = (16, 8, 8)
CLASSES = 10
EASY_NOISE, HARD_NOISE = 1.0, 8.0


def problem(n: int, noise: float, seed: int, shape=SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations N x C x H x W, teacher logits N x CLASSES); the task itself is fixed, `seed` draws samples."""
    task = torch.Generator().manual_seed(1234)
    patterns = 0.5 * torch.randn(CLASSES, *shape, generator=task) + torch.randn(CLASSES, shape[0], 1, 1, generator=task)
    mapping = torch.randn(CLASSES, CLASSES, generator=task) + 4 * torch.eye(CLASSES)
    draw = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=draw)
    acts = patterns[y] + noise * torch.randn(n, *shape, generator=draw)
    logits = mapping[y] + 0.3 * torch.randn(n, CLASSES, generator=draw)
    return acts, logits


def fitted(variant: str, noise: float, **hparams):
    cache = make_cache(variant, SHAPE, CLASSES, **hparams)
    acts, logits = problem(1000, noise, seed=0)
    report = cache.fit(cache.reduce(acts), logits, seed=0)
    return cache, report


@pytest.fixture(scope="module")
def easy() -> dict:
    return {v: fitted(v, EASY_NOISE) for v in VARIANTS}


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    return problem(500, EASY_NOISE, seed=1)


# --- reducers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", REDUCERS)
@pytest.mark.parametrize("act_shape", [(16, 32, 32), (8, 4, 4), (8, 6, 3), (4, 1, 1)])
def test_reduced_shape_matches_reducer_output(key, act_shape):
    out = make_reducer(key)(torch.randn(3, *act_shape))
    assert tuple(out.shape) == (3, *reduced_shape(key, act_shape))


def test_reducers_compute_the_pooling_they_name():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    assert torch.equal(make_reducer("gap")(x), x.mean(dim=(2, 3)))
    assert torch.equal(make_reducer("gapmax")(x), torch.tensor([[7.5, 23.5, 15.0, 31.0]]))
    assert torch.equal(make_reducer("pool2")(x)[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert torch.equal(make_reducer("pool8")(x), x)  # never enlarges


def test_unknown_reducer_and_non_4d_input():
    with pytest.raises(GatiError, match="gapmax"):
        make_reducer("pool3")
    with pytest.raises(InvalidInput, match="N x C x H x W"):
        make_reducer("gap")(torch.randn(3, 16))


# --- fitting and predicting -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fit_learns_the_teachers_answers(variant, easy, held_out):
    cache, report = easy[variant]
    acts, logits = held_out
    labels, conf = cache(acts)
    agreement = float((labels == logits.argmax(dim=1)).float().mean())
    assert agreement > 0.9, f"{variant}: held-out agreement {agreement:.3f}"
    assert report.train_agreement > 0.9 and report.seconds > 0
    assert labels.dtype == torch.int64 and conf.dtype == torch.float32 and labels.shape == conf.shape == (500,)
    assert float(conf.min()) >= 0.0 and float(conf.max()) <= 1.0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_confidence_is_higher_when_right(variant):
    cache, _ = fitted(variant, HARD_NOISE)
    acts, logits = problem(1000, HARD_NOISE, seed=2)
    labels, conf = cache(acts)
    right = labels == logits.argmax(dim=1)
    assert 0.2 < float(right.float().mean()) < 0.995, "the hard problem should leave some mistakes"
    assert float(conf[right].mean()) > float(conf[~right].mean()) + 0.05
    assert 0.0 <= float(conf.min()) and float(conf.max()) <= 1.0


def test_fit_is_deterministic_under_seed():
    acts, logits = problem(400, HARD_NOISE, seed=0)
    probe, _ = problem(200, HARD_NOISE, seed=5)
    outputs = []
    for seed in (3, 3, 4):
        cache = make_cache("mlp", SHAPE, CLASSES, epochs=3)
        cache.fit(cache.reduce(acts), logits, seed=seed)
        outputs.append(cache(probe)[1])
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_fit_leaves_the_global_rng_alone():
    acts, logits = problem(100, EASY_NOISE, seed=0)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    make_cache("mlp", SHAPE, CLASSES, epochs=1).fit(make_reducer("gapmax")(acts), logits)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_predict_does_not_change_the_cache_or_its_input(variant, easy, held_out, tmp_path):
    cache, _ = easy[variant]
    feats = cache.reduce(held_out[0][:50]).clone()
    copy = feats.clone()
    first = cache.predict(feats)
    second = cache.predict(feats)
    assert torch.equal(feats, copy)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_constant_fit_feature_is_ignored_later():
    """Standardisation comes from the fit features: a feature that never varied there must not swamp predictions."""
    acts, logits = problem(600, EASY_NOISE, seed=0)
    acts[:, 0] = 0.0  # channel 0 is dead in the fit data
    cache = make_cache("linear", SHAPE, CLASSES)
    cache.fit(cache.reduce(acts), logits)
    probe, probe_logits = problem(300, EASY_NOISE, seed=1)
    probe[:, 0] = 0.0
    before = cache(probe)[0]
    probe[:, 0] = 50.0  # now it fires
    assert torch.equal(cache(probe)[0], before)
    assert float((before == probe_logits.argmax(dim=1)).float().mean()) > 0.9


def test_features_from_inference_mode_can_be_fitted():
    acts, logits = problem(200, EASY_NOISE, seed=0)
    cache = make_cache("convfc", SHAPE, CLASSES, epochs=1)
    with torch.inference_mode():
        feats, logits = cache.reduce(acts), logits.clone()
    assert cache.fit(feats, logits).epochs == 1


# --- persistence, memory, configuration --------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_load_round_trip(variant, easy, held_out, tmp_path):
    cache, _ = easy[variant]
    path = tmp_path / f"{variant}.pt"
    cache.save(path)
    loaded = load_cache(path)
    assert type(loaded) is type(cache) and loaded.config() == cache.config()
    assert loaded.nbytes() == cache.nbytes()
    feats = cache.reduce(held_out[0])
    for got, want in zip(loaded.predict(feats), cache.predict(feats)):
        assert torch.equal(got, want)


def test_config_holds_variant_shape_classes_and_hparams():
    config = make_cache("mlp", SHAPE, CLASSES, hidden=32, epochs=4).config()
    assert config == {
        "variant": "mlp",
        "in_shape": SHAPE,
        "num_classes": CLASSES,
        "epochs": 4,
        "lr": config["lr"],
        "weight_decay": config["weight_decay"],
        "bf16": 0,
        "temperature": config["temperature"],
        "hard_weight": config["hard_weight"],
        "hidden": 32,
        "dropout": config["dropout"],
    }
    assert make_cache(**config).config() == config


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nbytes_is_positive(variant, easy):
    assert easy[variant][0].nbytes() > 0


def test_linear_nbytes_is_its_parameter_bytes(easy):
    cache, _ = easy["linear"]
    assert cache.nbytes() == (SHAPE[0] * CLASSES + CLASSES) * 4


def test_knn_nbytes_counts_vectors_and_labels(easy):
    cache, _ = easy["knn"]
    assert cache.nbytes() == 1000 * (SHAPE[0] * 4 + 8) + SHAPE[0] * 4


def test_fc_pools_less_for_wide_activations():
    assert make_cache("fc", (256, 8, 8), CLASSES).reducer_key == "pool4"
    wide = make_cache("fc", (512, 4, 4), CLASSES)
    assert wide.reducer_key == "pool2" and wide.feat_shape == (512, 2, 2)
    assert VARIANTS["fc"].reducer_for((512, 4, 4)) == "pool2"


def test_convfc_width_follows_the_input_unless_given(tmp_path):
    # input x output channels stay at 64 x 256, clamped to 64..256 output channels
    assert [make_cache("convfc", (c, 8, 8), CLASSES).hparams.channels for c in (3, 64, 128, 256, 1024)] == \
        [256, 256, 128, 64, 64]
    assert make_cache("convfc", (64, 8, 8), CLASSES, channels=32).hparams.channels == 32
    # the resolved width is what the saved config names, so a bundle loads with the width it was fitted at
    cache = make_cache("convfc", (64, 8, 8), CLASSES, epochs=1)
    cache.fit(torch.randn(32, 64, 8, 8), torch.randn(32, CLASSES))
    cache.save(tmp_path / "c.pt")
    assert load_cache(tmp_path / "c.pt").hparams.channels == 256


def test_a_convfc_draft_is_the_narrowest_head_or_if_narrow_already_fitted_briefly():
    wide = make_cache("convfc", (64, 8, 8), CLASSES, epochs=10, lr=0.02)
    draft = wide.draft()
    assert draft.hparams == dataclasses.replace(wide.hparams, channels=64) and not draft._fitted
    narrow = make_cache("convfc", (256, 8, 8), CLASSES)  # 64 channels already: only the epochs drop
    assert narrow.draft().hparams == dataclasses.replace(narrow.hparams, epochs=DRAFT_EPOCHS)
    assert narrow.draft().draft() is None  # as cheap as the variant gets
    assert make_cache("convfc", (64, 8, 8), CLASSES, channels=64, epochs=2).draft() is None
    assert all(make_cache(v, SHAPE, CLASSES).draft() is None for v in VARIANTS if v != "convfc")


def test_corrupt_or_missing_file_is_a_bundle_error(easy, tmp_path):
    path = tmp_path / "cache.pt"
    easy["mlp"][0].save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=str(path)):
        load_cache(path)
    with pytest.raises(BundleError, match="does not exist"):
        load_cache(tmp_path / "absent.pt")


def test_file_with_mismatched_state_is_a_bundle_error(easy, tmp_path):
    path = tmp_path / "cache.pt"
    easy["linear"][0].save(path)
    blob = torch.load(path, weights_only=True)
    blob["config"]["in_shape"] = [32, 8, 8]
    torch.save(blob, path)
    with pytest.raises(BundleError, match="weight0"):
        load_cache(path)


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(GatiError, match="convfc, fc, knn, linear, mlp"):
        make_cache("forest", SHAPE, CLASSES)


@pytest.mark.parametrize(
    "hparams", [{"epochs": 0}, {"lr": -1.0}, {"hidden": 8}, {"epochs": 2.5}, {"weight_decay": "x"},
                {"temperature": 0.0}, {"hard_weight": -1.0}]
)
def test_bad_hyper_parameters_are_rejected(hparams):
    with pytest.raises(GatiError):
        make_cache("linear", SHAPE, CLASSES, **hparams)  # linear has no hidden layer either


def test_bad_shape_or_class_count_is_rejected():
    with pytest.raises(GatiError, match="in_shape"):
        make_cache("linear", (16, 8), CLASSES)
    with pytest.raises(GatiError, match="num_classes"):
        make_cache("linear", SHAPE, 1)


# --- input validation ------------------------------------------------------------------------------


def bad_inputs(cache):
    good = torch.zeros(2, *cache.feat_shape)
    nan, inf = good.clone(), good.clone()
    nan.view(-1)[3] = float("nan")
    inf.view(-1)[-1] = float("inf")
    return {
        "wrong shape": torch.zeros(2, cache.feat_shape[0] + 1, *cache.feat_shape[1:]),
        "no batch dim": torch.zeros(*cache.feat_shape),
        "int dtype": good.long(),
        "NaN": nan,
        "inf": inf,
        "not a tensor": good.numpy(),
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bad_features_raise_invalid_input(variant, easy):
    cache, _ = easy[variant]
    for what, x in bad_inputs(cache).items():
        with pytest.raises(InvalidInput):
            cache.predict(x)
            pytest.fail(f"{what} was accepted")


def test_bad_activation_raises_invalid_input(easy):
    cache, _ = easy["mlp"]
    with pytest.raises(InvalidInput, match="16 x 8 x 8"):
        cache(torch.zeros(1, 16, 4, 4))
    with pytest.raises(InvalidInput, match="floating"):
        cache(torch.zeros(1, *SHAPE, dtype=torch.int32))


def test_other_float_dtypes_are_accepted(easy, held_out):
    cache, _ = easy["linear"]
    feats = cache.reduce(held_out[0])
    labels, conf = cache.predict(feats.double())
    assert torch.equal(labels, cache.predict(feats)[0]) and conf.dtype == torch.float32


def test_bad_fit_data_raises_invalid_input():
    cache = make_cache("linear", SHAPE, CLASSES)
    feats = torch.randn(10, SHAPE[0])
    with pytest.raises(InvalidInput, match="teacher logits"):
        cache.fit(feats, torch.randn(10, CLASSES + 1))
    with pytest.raises(InvalidInput, match="10 feature rows but 9"):
        cache.fit(feats, torch.randn(9, CLASSES))


def test_unfitted_cache_refuses_to_predict_or_save(tmp_path):
    cache = make_cache("knn", SHAPE, CLASSES)
    with pytest.raises(GatiError, match="not fitted"):
        cache.predict(torch.zeros(1, SHAPE[0]))
    with pytest.raises(GatiError, match="unfitted"):
        cache.save(tmp_path / "x.pt")


# --- kNN specifics -----------------------------------------------------------------------------------


class CountingIndex:
    """A NeighborIndex that is not FAISS-backed inside the cache: it counts the searches it serves."""

    def __init__(self, dim: int) -> None:
        self.inner = FaissIndex(dim)
        self.searches = 0
        self.added = 0

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        self.added += len(x)
        self.inner.add(x, labels)

    def search(self, x: np.ndarray, k: int):
        self.searches += 1
        sims, labels = self.inner.search(x, k)
        for a in (sims, labels):  # as if decoded from a message buffer
            a.flags.writeable = False
        return sims, labels

    def export(self):
        return self.inner.export()


def test_knn_queries_a_swapped_in_index(held_out):
    cache, _ = fitted("knn", EASY_NOISE)
    feats = cache.reduce(held_out[0])
    before = cache.predict(feats)
    index = CountingIndex(SHAPE[0])
    cache.use_index(index)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read-only results must not trip torch's non-writable warning
        after = cache.predict(feats)
        cache.predict(feats[:1])
    assert index.added == 1000 and index.searches == 2 and cache.index is index
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])


def test_knn_without_populate_searches_only_the_given_index():
    cache, _ = fitted("knn", EASY_NOISE, k=3)
    index = CountingIndex(SHAPE[0])
    index.add(np.eye(SHAPE[0], dtype=np.float32)[:2], np.array([7, 7]))  # only label 7 stored remotely
    cache.use_index(index, populate=False)
    labels, conf = cache.predict(torch.randn(5, SHAPE[0]))
    assert index.searches == 1 and labels.tolist() == [7] * 5 and torch.allclose(conf, torch.ones(5))


def test_knn_rejects_an_object_without_the_index_methods():
    cache = make_cache("knn", SHAPE, CLASSES)
    with pytest.raises(GatiError, match="NeighborIndex"):
        cache.use_index(object())


def test_knn_vote_is_weighted_by_similarity():
    cache = KnnCache((2, 1, 1), 3, k=3)
    # Two far-but-agreeing neighbours of class 1 against one very close neighbour of class 2.
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [-1.0, -1.0]])
    logits = torch.nn.functional.one_hot(torch.tensor([2, 1, 1, 0]), 3).float()
    cache.fit(feats, logits)
    mean = feats.mean(dim=0)
    probe = (mean + torch.tensor([1.0, -0.3])).unsqueeze(0)
    label, conf = cache.predict(probe)
    assert label.item() == 2 and 0.5 < conf.item() < 1.0


def test_knn_subsamples_to_max_items():
    cache, _ = fitted("knn", EASY_NOISE, max_items=100)
    assert len(cache.index.export()[1]) == 100


def test_linear_is_a_registered_variant():
    assert VARIANTS["linear"] is LinearCache and set(VARIANTS) == {"linear", "mlp", "fc", "convfc", "knn"}


def test_faiss_searches_leave_torchs_thread_count_alone():
    """FAISS and torch share one OpenMP runtime: a one-thread search must not pin torch to one thread."""
    from gati.cache.knn import FaissIndex
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        index = FaissIndex(8)
        index.add(np.random.rand(50, 8).astype(np.float32), np.arange(50))
        index.search(np.random.rand(1, 8).astype(np.float32), 3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_engines_lookup_answers_like_the_checked_call(variant, easy, held_out, tmp_path):
    cache, _ = easy[variant]
    acts = held_out[0][:50]
    with torch.inference_mode():
        for got, want in zip(cache.lookup(acts), cache(acts)):
            assert torch.equal(got, want)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_moving_a_cache_keeps_its_answers(variant, easy, held_out, tmp_path):
    cache, _ = easy[variant]
    cache.save(tmp_path / "c.pt")
    moved = load_cache(tmp_path / "c.pt").to("cpu")
    acts = held_out[0][:50]
    for got, want in zip(moved(acts), cache(acts)):
        assert torch.equal(got, want)
    assert moved.graphable == (variant != "knn")  # FAISS searches on the host


@pytest.mark.parametrize("variant", ["linear", "mlp", "fc", "convfc"])
def test_bf16_storage_halves_memory_and_keeps_the_answers(variant, easy, held_out, tmp_path):
    cache, _ = easy[variant]
    small = cache.with_params(bf16=1)
    assert small.nbytes() * 2 == cache.nbytes()
    acts = held_out[0]
    label32, conf32 = cache(acts)
    label16, conf16 = small(acts)
    assert conf16.dtype == torch.float32 and label16.dtype == torch.int64
    assert (label16 == label32).float().mean() >= 0.98
    assert (conf16 - conf32).abs().max() < 0.05
    small.save(tmp_path / "small.pt")  # the storage dtype survives a round trip
    loaded = load_cache(tmp_path / "small.pt")
    assert loaded.nbytes() == small.nbytes()
    for got, want in zip(loaded(acts), small(acts)):
        assert torch.equal(got, want)


def test_with_params_refuses_what_a_variant_does_not_have(easy):
    with pytest.raises(GatiError, match="bf16"):
        easy["knn"][0].with_params(bf16=1)


def test_the_distillation_settings_come_from_the_caches_hyper_parameters():
    """A build's `cache_hparams` (and a refit's, from the cache's saved config) reach the loss the head is fitted
    with: the temperature and the hard term's weight are the variant's, not the loop's."""
    cache = make_cache("mlp", SHAPE, CLASSES, temperature=3.0, hard_weight=0.0)
    settings = DistillSettings.of(cache.hparams)
    assert (settings.temperature, settings.hard_weight) == (3.0, 0.0)
    assert cache.config()["temperature"] == 3.0


def test_answered_within_counts_requests_before_the_next_wrong_answer():
    cache = make_cache("linear", SHAPE, CLASSES)
    acts, logits = problem(400, EASY_NOISE, seed=0)
    cache.fit(cache.reduce(acts), logits, seed=0)
    feats, base = cache.reduce(acts), logits.argmax(1)
    label, conf = cache.predict(feats)
    order = torch.argsort(conf, descending=True)
    wrong_at = [i for i in order.tolist() if label[i] != base[i]]  # requests in confidence order that it gets wrong
    first_wrong = order.tolist().index(wrong_at[0]) if wrong_at else len(order)
    assert answered_within(cache, feats, base, (0, 10**6)) == [first_wrong, len(order)]


def test_cache_hyper_parameters_from_the_command_line_reach_the_variants_that_have_them():
    assert hparams_for(["linear", "mlp", "knn"], ["temperature=1", "mlp.hidden=64", "lr=0.5"]) == {
        "linear": {"temperature": 1, "lr": 0.5}, "mlp": {"temperature": 1, "hidden": 64, "lr": 0.5}}
    for variants, bad, match in [(["knn"], "hidden=8", "knn.*'hidden'"), (["mlp"], "convfc.epochs=3", "not among"),
                                 (["mlp"], "temperature", "NAME=VALUE"), (["mlp"], "temperature=warm", "number")]:
        with pytest.raises(GatiError, match=match):
            hparams_for(variants, [bad])


def test_one_comma_joined_setting_gives_one_variant_its_hyper_parameters():
    assert hparams_of("convfc", "") == {}
    assert hparams_of("convfc", "channels=128,epochs=8") == {"channels": 128, "epochs": 8}
    with pytest.raises(GatiError, match="hidden"):
        hparams_of("convfc", "hidden=8")


def test_a_cache_saved_before_the_temperature_was_a_setting_refits_at_the_temperature_it_was_fitted_at(tmp_path):
    cache, _ = fitted("mlp", EASY_NOISE)
    path = tmp_path / "c.pt"
    cache.save(path)
    assert load_cache(path).hparams.temperature == cache.hparams.temperature  # saved with it: kept
    blob = torch.load(path, weights_only=True)
    del blob["config"]["temperature"]
    torch.save(blob, path)
    assert load_cache(path).hparams.temperature == 2.0  # saved without it: fitted at the old 2.0

