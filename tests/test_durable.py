"""The cluster services' state directory (gati/rpc/durable.py): versions and samples on disk, without processes."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gati.cache import make_cache
from gati.rpc.cachefile import cache_to_bytes
from gati.rpc.config import ConfigError, parse_config
from gati.rpc.durable import VersionStore, load_samples, save_samples
from gati.rpc.periodic import Every
from gati.rpc.samples import CheckedSample, SampleRing

SHAPE, CLASSES = (8, 4, 4), 4


def fitted(variant: str = "linear", seed: int = 0):
    cache = make_cache(variant, SHAPE, CLASSES)
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(64, *SHAPE, generator=g)
    cache.fit(cache.reduce(acts), torch.randn(64, CLASSES, generator=g))
    return cache


def store(tmp_path: Path, bundle: str = "b" * 64) -> VersionStore:
    return VersionStore(tmp_path / "versions", bundle)


def test_the_latest_version_is_resumed_and_two_are_kept(tmp_path):
    served, caches = fitted(seed=0), [fitted(seed=s) for s in (1, 2, 3)]
    s = store(tmp_path)
    assert s.latest("block1", served) is None
    for version, cache in enumerate(caches, start=1):
        s.save(1, "block1", version, cache.variant, cache_to_bytes(cache), {"candidate_agreement": 0.9})
    assert s.versions("block1") == [2, 3]
    found = store(tmp_path).latest("block1", served)  # a new process: read back from disk
    assert found.version == 3 and found.record.certificate == {"candidate_agreement": 0.9}
    x = torch.randn(5, *SHAPE)
    assert torch.equal(found.cache.predict(found.cache.reduce(x))[1], caches[2].predict(caches[2].reduce(x))[1])


def test_a_crash_mid_write_leaves_the_last_complete_version(tmp_path):
    served, cache = fitted(seed=0), fitted(seed=1)
    s = store(tmp_path)
    s.save(1, "block1", 1, cache.variant, cache_to_bytes(cache))
    folder = tmp_path / "versions" / "block1"
    (folder / ".tmp-abc123").write_bytes(b"half a cache")           # killed inside an atomic write
    (folder / "v0002.pt").write_bytes(cache_to_bytes(fitted(seed=2)))  # killed between the file and its record
    found = store(tmp_path).latest("block1", served)
    assert found.version == 1
    assert not (folder / ".tmp-abc123").exists() and not (folder / "v0002.pt").exists()  # removed at opening


def test_a_file_that_does_not_match_its_record_is_skipped(tmp_path, caplog):
    served = fitted(seed=0)
    s = store(tmp_path)
    for version in (1, 2):
        s.save(1, "block1", version, "linear", cache_to_bytes(fitted(seed=version)))
    (tmp_path / "versions" / "block1" / "v0002.pt").write_bytes(cache_to_bytes(fitted(seed=9)))
    with caplog.at_level(logging.WARNING, "gati.rpc.durable"):
        assert s.latest("block1", served).version == 1
    assert "sha256" in caplog.text


@pytest.mark.parametrize("other", ["variant", "bundle"])
def test_a_version_for_another_cache_or_bundle_is_refused(tmp_path, caplog, other):
    served = fitted("linear", seed=0)
    stored = fitted("mlp" if other == "variant" else "linear", seed=1)
    store(tmp_path, "a" * 64).save(1, "block1", 4, stored.variant, cache_to_bytes(stored))
    reader = store(tmp_path, "a" * 64 if other == "variant" else "c" * 64)
    with caplog.at_level(logging.ERROR, "gati.rpc.durable"):
        assert reader.latest("block1", served) is None
    assert "not resuming version 4 of cut block1" in caplog.text and "serving the bundle's version 0" in caplog.text


def _checked(rng, i: int) -> CheckedSample:
    return CheckedSample(rng.standard_normal(SHAPE).astype(np.float32), i % CLASSES,
                         rng.standard_normal(CLASSES).astype(np.float32) if i % 2 else None)


def test_samples_round_trip_and_a_snapshot_of_another_shape_is_refused(tmp_path, caplog):
    rng = np.random.default_rng(0)
    samples = [_checked(rng, i) for i in range(7)]
    ring = SampleRing(10, SHAPE, CLASSES)
    for s in samples:
        ring.append(s)
    path = tmp_path / "samples" / "block1.npz"
    save_samples(path, ring.arrays())
    (path.parent / ".tmp-dead").write_bytes(b"torn")
    back = load_samples(path, SHAPE, CLASSES)
    assert len(back) == 7 and not (path.parent / ".tmp-dead").exists()
    for i, s in enumerate(samples):
        assert np.array_equal(s.features, back.features[i]) and s.label == back.labels[i]
        assert bool(back.has_logits[i]) == (s.logits is not None)
        assert s.logits is None or np.array_equal(s.logits, back.logits[i])
    with caplog.at_level(logging.ERROR, "gati.rpc.durable"):
        assert len(load_samples(path, (8, 2, 2), CLASSES)) == 0
    assert "starting without samples" in caplog.text
    assert len(load_samples(tmp_path / "none.npz", SHAPE, CLASSES)) == 0


def test_the_sample_ring_keeps_the_latest_in_order_without_growing():
    rng = np.random.default_rng(1)
    samples = [_checked(rng, i) for i in range(23)]
    ring = SampleRing(5, SHAPE, CLASSES)
    buffers = (ring._features.ctypes.data, ring._logits.ctypes.data)
    for s in samples:
        ring.append(s)
    held = ring.arrays()
    assert len(ring) == len(held) == 5
    assert [int(x) for x in held.labels] == [s.label for s in samples[-5:]]
    assert np.array_equal(held.features, np.stack([s.features for s in samples[-5:]]))
    assert (ring._features.ctypes.data, ring._logits.ctypes.data) == buffers  # written in place, never regrown
    again = SampleRing(3, SHAPE, CLASSES)
    again.extend(held)  # a resume into a smaller ring keeps the newest
    assert [int(x) for x in again.arrays().labels] == [s.label for s in samples[-3:]]


def test_every_runs_at_once_then_each_period_and_stops_promptly():
    runs = []
    ticker = Every("t", 0.2, lambda: runs.append(time.monotonic())).start()
    time.sleep(0.5)
    started = time.monotonic()
    ticker.stop()
    assert time.monotonic() - started < 0.5 and 2 <= len(runs) <= 4
    assert not any(t.name == "t" for t in threading.enumerate())


def test_state_dir_is_optional_and_resolved_beside_the_config(tmp_path):
    raw = {"bundle": "b", "secret_file": "s", "services": {
        "aggregator": {"host": "127.0.0.1", "port": 1, "internal_port": 2},
        "executor": {"host": "127.0.0.1", "port": 3},
        "predictors": [{"host": "127.0.0.1", "port": 4}],
        "retrainer": {"host": "127.0.0.1", "port": 5, "snapshot_s": 2, "resync_s": 7}}}
    cfg = parse_config(raw, tmp_path / "c.yaml")
    assert cfg.state_dir is None and cfg.state_folder("retrainer") is None
    cfg = parse_config({**raw, "state_dir": "state"}, tmp_path / "c.yaml")
    assert cfg.state_folder("predictor-0") == (tmp_path / "state" / "predictor-0").resolve()
    assert (cfg.retrainer.snapshot_s, cfg.retrainer.resync_s) == (2.0, 7.0)
    raw["services"]["retrainer"]["resync_s"] = 0
    with pytest.raises(ConfigError, match="resync_s must be positive"):
        parse_config(raw, tmp_path / "c.yaml")


def test_the_samples_held_are_bounded_by_memory_as_well_as_count():
    from gati.rpc.config import RetrainerConfig
    from gati.rpc.retrainer import sample_capacity
    cfg = RetrainerConfig("127.0.0.1", 0, max_samples=20000, max_sample_mb=256.0)
    assert sample_capacity(cfg, (16,), 3) == 20000                      # small features: the count binds
    held = sample_capacity(cfg, (64, 8, 8), 3)                           # 16 KB each: memory binds
    assert held < 20000 and 3 * held * 64 * 8 * 8 * 4 <= 256 * 2**20
    assert sample_capacity(RetrainerConfig("127.0.0.1", 0, max_sample_mb=1e-9), (64, 8, 8), 1) == 1
