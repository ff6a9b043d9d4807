"""Workloads: deterministic streams, the promised shape of each, any image size and channel count, typed errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gati.data import Dataset
from gati.errors import WorkloadError
from gati.measure.perturb import CORRUPTIONS, corrupt, frame_jitter
from gati.measure.workloads import (
    UNKNOWN_LABEL,
    WORKLOADS,
    Bursty,
    Drift,
    Iid,
    Repeat,
    Trace,
    Zipf,
    locality_summary,
    parse_workload,
    workload_help,
)

SPLIT_WORKLOADS = ["iid", "zipf", "zipf:over=image", "bursty", "repeat", "drift"]


def make_split(classes: int = 10, per_class: int = 12, shape: tuple[int, int, int] = (16, 16, 3)) -> Dataset:
    """Smooth random pictures (4x4 noise scaled up), so that a shift of a pixel or two changes them little."""
    rng = np.random.default_rng(0)
    n, (height, width, channels) = classes * per_class, shape
    coarse = rng.integers(0, 256, size=(n, 4, 4, channels), dtype=np.uint8)
    images = np.stack([np.stack([np.asarray(Image.fromarray(c[..., k]).resize((width, height), Image.BILINEAR))
                                 for k in range(channels)], axis=-1) for c in coarse])
    return Dataset("synthetic", "test:eval", images, np.repeat(np.arange(classes), per_class),
                   [f"test/{i}" for i in range(n)], [f"c{c}" for c in range(classes)])


RGB = make_split()
GREY = make_split(shape=(20, 12, 1))  # single-channel and not square, as a spectrogram


@pytest.mark.parametrize("spec", SPLIT_WORKLOADS)
@pytest.mark.parametrize("data", [RGB, GREY], ids=["rgb", "grey"])
def test_same_workload_same_bytes_and_another_seed_another_stream(spec, data):
    workload = parse_workload(f"{spec}{',' if ':' in spec else ':'}n=300,seed=5")
    first, again = workload.generate(data), parse_workload(workload.spec()).generate(data)
    assert first.fingerprint() == again.fingerprint()
    assert np.array_equal(first.images, again.images) and np.array_equal(first.sources, again.sources)
    other = parse_workload(workload.spec().replace("seed=5", "seed=6")).generate(data)
    assert other.fingerprint() != first.fingerprint()
    assert first.images.shape == (300, *data.images.shape[1:]) and first.images.dtype == np.uint8
    assert np.array_equal(first.labels, data.labels[first.sources])
    assert first.workload == workload.spec() and first.description == workload.describe()


def test_streams_are_as_long_as_asked_whatever_the_split_size():
    assert len(Iid().generate(RGB)) == len(RGB)
    for name in ("iid", "zipf", "bursty", "repeat", "drift"):
        assert len(parse_workload(f"{name}:n={3 * len(RGB) + 1}").generate(RGB)) == 3 * len(RGB) + 1


def test_iid_with_the_split_size_is_todays_shuffled_order():
    stream = Iid(seed=7).generate(RGB)
    assert np.array_equal(stream.sources, np.random.default_rng(7).permutation(len(RGB)))
    longer = Iid(n=2 * len(RGB), seed=7).generate(RGB)
    assert sorted(longer.sources.tolist()) == sorted(list(range(len(RGB))) * 2)  # every image twice


def test_zipf_skews_towards_a_few_classes_and_s_zero_is_uniform():
    def top_share(s: float) -> float:
        labels = Zipf(n=5000, s=s, seed=1).generate(RGB).labels
        return np.bincount(labels).max() / len(labels)
    assert top_share(2.0) > 0.55  # 1 / sum(r^-2, r = 1..10) = 0.65
    assert top_share(0.0) < 0.13
    images = Zipf(n=5000, s=1.2, over="image", seed=1).generate(RGB)
    assert np.bincount(images.sources).max() / 5000 > 0.15  # one image takes a large share


def test_bursty_runs_have_the_asked_mean_length_and_change_class():
    stream = Bursty(n=10000, mean_run=20, seed=2).generate(RGB)
    assert 17 < locality_summary(stream.labels).mean_run < 23
    assert locality_summary(Bursty(n=10000, mean_run=1, seed=2).generate(RGB).labels).mean_run == 1.0


def test_repeat_without_jitter_repeats_exactly_and_with_jitter_gives_near_duplicates():
    exact = Repeat(n=500, working_set=8, churn=0.0, jitter=0.0, flip=0.0, seed=3).generate(RGB)
    assert np.array_equal(exact.images, RGB.images[exact.sources]) and not exact.perturbed.any()
    assert len(np.unique(exact.sources)) <= 8 and exact.repeats().mean() > 0.95
    frames = Repeat(n=500, working_set=8, churn=0.05, seed=3).generate(RGB)
    assert frames.perturbed.mean() > 0.95
    changed = np.abs(frames.images.astype(int) - RGB.images[frames.sources].astype(int)).mean()
    unrelated = np.abs(RGB.images[:60].astype(int) - RGB.images[60:].astype(int)).mean()
    assert changed < unrelated / 2  # near-duplicates, not other images
    assert 8 < len(np.unique(frames.sources)) < 8 + 60  # members churned in


def test_drift_phases_change_the_class_mix_and_corrupt_more_and_more():
    stream = Drift(n=1200, phases=4, severity=5, concentration=0.3, seed=4).generate(RGB)
    assert stream.phases.tolist() == [p for p in range(4) for _ in range(300)]
    assert not stream.perturbed[stream.phases == 0].any()  # the first phase is clean
    assert stream.perturbed[stream.phases == 3].mean() > 0.9
    mixes = [np.bincount(stream.labels[stream.phases == p], minlength=10) / 300 for p in range(4)]
    assert max(np.abs(mixes[0] - m).sum() / 2 for m in mixes[1:]) > 0.3  # total variation between phases
    damage = [np.abs(stream.images[stream.phases == p].astype(int)
                     - RGB.images[stream.sources[stream.phases == p]].astype(int)).mean() for p in range(4)]
    assert damage == sorted(damage) and damage[0] == 0
    assert [Drift(phases=6).phase_severity(p) for p in range(6)] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("shape", [(32, 32, 3), (98, 40, 1), (7, 5, 3)])
def test_every_perturbation_keeps_shape_and_type_for_any_size_and_channels(shape):
    image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    rng = np.random.default_rng(1)
    for kind in CORRUPTIONS:
        for severity in range(6):
            out = corrupt(image, kind, severity, rng)
            assert out.shape == shape and out.dtype == np.uint8
    out = frame_jitter(image, rng, strength=1.0, flip=0.5)
    assert out.shape == shape and out.dtype == np.uint8
    assert np.array_equal(frame_jitter(image, rng, strength=0.0, flip=0.0), image)
    assert np.array_equal(frame_jitter(image, rng, strength=0.0, flip=1.0), image[:, ::-1])


def test_corruptions_grow_with_severity():
    image = np.random.default_rng(0).integers(40, 216, size=(32, 32, 3), dtype=np.uint8)

    def measure(kind: str, statistic) -> list[float]:
        return [statistic(corrupt(image, kind, s, np.random.default_rng(1)).astype(float)) for s in range(6)]
    spread = measure("contrast", np.std)
    assert spread == sorted(spread, reverse=True)
    bright = measure("brightness", np.mean)
    assert bright == sorted(bright)
    noise = measure("noise", lambda x: np.abs(x - image).mean())
    assert noise == sorted(noise)
    edges = measure("blur", lambda x: np.abs(np.diff(x, axis=1)).mean())
    assert edges == sorted(edges, reverse=True)
    with pytest.raises(WorkloadError, match="unknown corruption"):
        corrupt(image, "fog", 1, np.random.default_rng(0))


def _write_trace(folder, lines: list[str]):
    listing = folder / "trace.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def test_trace_follows_the_file_and_resizes_any_image_to_the_input(tmp_path):
    (tmp_path / "frames").mkdir()
    stripes = np.zeros((32, 96, 3), dtype=np.uint8)  # green | red | blue, left to right
    stripes[:, :32, 1], stripes[:, 32:64, 0], stripes[:, 64:, 2] = 255, 255, 255
    Image.fromarray(stripes).save(tmp_path / "frames" / "a.png")
    Image.fromarray(np.full((30, 20), 90, dtype=np.uint8), "L").save(tmp_path / "frames" / "b.jpg")
    listing = _write_trace(tmp_path, ["# a video", "frames/a.png", "", "frames/b.jpg",
                                      str(tmp_path / "frames" / "a.png")])
    stream = Trace(path=str(listing), n=7).generate(input_shape=(3, 32, 32))
    assert stream.images.shape == (7, 32, 32, 3) and stream.sources.tolist() == [0, 1, 0, 0, 1, 0, 0]
    assert (stream.labels == UNKNOWN_LABEL).all() and stream.repeats().tolist() == [False, False] + [True] * 5
    centre = stream.images[0].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 200 and centre[1] < 30 and centre[2] < 30  # crop kept the red middle third
    stretched = Trace(path=str(listing), fit="stretch").generate(input_shape=(3, 32, 32)).images[0]
    assert stretched[:, :8, 1].mean() > 200 and stretched[:, -8:, 2].mean() > 200
    grey = Trace(path=str(listing)).generate(input_shape=(1, 98, 40))
    assert grey.images.shape == (3, 98, 40, 1)
    assert grey.fingerprint() == Trace(path=str(listing)).generate(input_shape=(1, 98, 40)).fingerprint()


def test_trace_errors_name_the_line(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(WorkloadError, match=r"trace.txt:3: cannot read image .*missing.png"):
        Trace(path=str(_write_trace(tmp_path, ["ok.png", "", "missing.png"]))).generate(input_shape=(3, 32, 32))
    with pytest.raises(WorkloadError, match=r"trace.txt:2: cannot read image .*broken.jpg"):
        Trace(path=str(_write_trace(tmp_path, ["ok.png", "broken.jpg"]))).generate(input_shape=(3, 32, 32))
    with pytest.raises(WorkloadError, match="lists no images"):
        Trace(path=str(_write_trace(tmp_path, ["# nothing"]))).generate(input_shape=(3, 32, 32))
    with pytest.raises(WorkloadError, match="cannot read"):
        Trace(path=str(tmp_path / "absent.txt")).generate(input_shape=(3, 32, 32))
    with pytest.raises(WorkloadError, match="pass input_shape"):
        Trace(path=str(tmp_path / "trace.txt")).generate()
    with pytest.raises(WorkloadError, match="input_shape must be"):
        Trace(path=str(tmp_path / "trace.txt")).generate(input_shape=(2, 32, 32))


def test_parse_gives_typed_range_checked_parameters():
    assert parse_workload("bursty:mean_run=20,seed=3") == Bursty(mean_run=20.0, seed=3)
    assert parse_workload(" zipf : s = 1.5 , over = image ") == Zipf(s=1.5, over="image")
    assert parse_workload("iid") == Iid()
    for name, cls in WORKLOADS.items():
        workload = cls(path="x.txt") if cls is Trace else cls()
        assert parse_workload(workload.spec()) == workload
        assert name in workload_help()


@pytest.mark.parametrize("spec, message", [
    ("poisson", "unknown workload 'poisson'; known: iid, zipf"),
    ("bursty:run=3", "bursty has no parameter 'run'; its parameters: n, seed, mean_run"),
    ("bursty:mean_run=abc", "bursty: mean_run must be a number, got 'abc'"),
    ("bursty:mean_run=0.5", r"bursty: mean_run must be in \[1, 1e6\], got 0.5"),
    ("bursty:mean_run=inf", "bursty: mean_run must be finite"),
    ("iid:n=1.5", "iid: n must be an integer, got '1.5'"),
    ("iid:n=-1", "iid: n must be >= 0"),
    ("zipf:s=1,s=2", "zipf: s given twice"),
    ("zipf:s", "expected KEY=VALUE"),
    ("zipf:over=pixel", "zipf: over must be 'class' or 'image'"),
    ("repeat:churn=2", r"repeat: churn must be in \[0, 1\]"),
    ("repeat:working_set=0", "repeat: working_set must be >= 1"),
    ("drift:corruptions=noise+fog", "drift: corruptions must be distinct names"),
    ("drift:severity=6", "drift: severity must be in 0..5"),
    ("trace", "trace: path must be a file"),
    ("trace:path=a.txt,fit=zoom", "trace: fit must be 'crop' or 'stretch'"),
])
def test_bad_specs_name_the_parameter(spec, message):
    with pytest.raises(WorkloadError, match=message):
        parse_workload(spec)


def test_python_construction_checks_types_too():
    with pytest.raises(WorkloadError, match="bursty: mean_run must be a number, got 'x'"):
        Bursty(mean_run="x")
    with pytest.raises(WorkloadError, match="iid: seed must be an integer, got True"):
        Iid(seed=True)
    with pytest.raises(WorkloadError, match="bursty: mean_run must be a number, got True"):
        Bursty(mean_run=True)
    assert Bursty(mean_run=20) == Bursty(mean_run=20.0) and isinstance(Bursty(mean_run=20).mean_run, float)


def test_split_workloads_need_a_fitting_split():
    with pytest.raises(WorkloadError, match="iid draws its requests from a data split"):
        Iid().generate()
    with pytest.raises(WorkloadError, match=r"the split's images are \(3, 16, 16\).*takes \(3, 32, 32\)"):
        Iid().generate(RGB, input_shape=(3, 32, 32))
    assert len(Iid().generate(RGB, input_shape=(3, 16, 16))) == len(RGB)


def test_locality_summary_counts_recent_answers_repeats_and_runs():
    summary = locality_summary(np.array([1, 1, 2, 1, 3, 3, 3]), k=2, sources=np.array([0, 0, 1, 2, 0, 3, 3]))
    assert summary.recent_share == pytest.approx(4 / 7)
    assert summary.repeat_share == pytest.approx(3 / 7) and summary.mean_run == 1.75
    assert summary.describe() == ("locality: 57.1% of base answers among the last 2, 42.9% repeat an earlier image, "
                                  "mean run 1.75")
    assert locality_summary(np.array([4]), k=8).describe() == "locality: 0.0% of base answers among the last 8, " \
                                                              "mean run 1.00"
    for bad, message in [((np.array([], dtype=int),), "non-empty"), ((np.array([1.0]),), "integer"),
                         ((np.array([1, 2]), 0), "k must be"), ((np.array([1, 2]), 8, np.array([1])), "sources")]:
        with pytest.raises(WorkloadError, match=message):
            locality_summary(*bad)


def test_bursty_streams_have_more_locality_than_shuffled_ones():
    """The summary printed with results tells workloads apart (here with true labels standing in for the base's)."""
    iid, bursty = Iid(n=2000).generate(RGB), Bursty(n=2000).generate(RGB)
    assert bursty.locality(bursty.labels).recent_share > iid.locality(iid.labels).recent_share + 0.2
