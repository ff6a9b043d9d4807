"""`gati bench` in process: a concurrency sweep, the open loop, time windows, per-request records."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gati.errors import InvalidInput
from gati.measure.bench import BenchConfig, format_table, poisson_arrivals, run_bench
from gati.measure.environment import read_records


@pytest.fixture(scope="module")
def config(tiny_bundle, tiny_data):
    def make(**options) -> BenchConfig:
        return BenchConfig(bundle=tiny_bundle, data_dir=tiny_data[0], dataset="imagefolder", limit=40, warmup=2,
                           **options)
    return make


def test_a_concurrency_sweep_measures_each_level_and_keeps_every_request(config, tmp_path):
    records = tmp_path / "records.jsonl"
    r = run_bench(config(concurrency=(1, 2), requests=30, records=records))
    assert r.target == "in-process" and r.images == 40 and [m.concurrency for m in r.measurements] == [1, 2]
    for m in r.measurements:
        assert m.requests == m.completed == 30 and m.errors == 0 and m.agreement == 1.0 and m.rate is None
        assert 0 < m.p50_ms <= m.p90_ms <= m.p95_ms <= m.p99_ms and m.throughput_rps > 0 and 0 < m.hit_rate <= 1
        assert m.server_ms == {}  # in process there is no server to report its timing
    env, rows = read_records(records)  # the first line is the environment, then one line per request
    assert env["gati"] and env["torch_threads"] >= 1
    assert len(rows) == 60 and {r["measurement"] for r in rows} == {0, 1}
    assert {"sent", "latency_ms", "label", "exit", "error", "agree", "image", "concurrency"} <= set(rows[0])
    assert all(r["latency_ms"] > 0 and r["error"] is None and r["agree"] for r in rows)
    first = [r["sent"] for r in rows if r["measurement"] == 0]
    assert first == sorted(first)
    table = format_table(r).splitlines()
    assert table[1].startswith("concurrency") and len(table) == 4  # title, header, one row per level
    d = json.loads(json.dumps(r.to_dict()))
    assert d["environment"]["torch_threads"] >= 1 and d["environment"]["gati"] and len(d["measurements"]) == 2


def test_the_open_loop_counts_latency_from_the_scheduled_arrival(config):
    """Arrivals far faster than one sender can answer: each request waits for the ones before it, and
    that wait is in its latency (a closed loop would hide it by sending later)."""
    closed = run_bench(config(concurrency=(1,), requests=60)).measurements[0]
    flood = run_bench(config(rate=(100_000.0,), requests=60, max_threads=1)).measurements[0]
    assert flood.rate == 100_000.0 and flood.concurrency is None and flood.completed == 60
    assert flood.p50_ms > 10 * closed.p50_ms and flood.client_wait_p99_ms > closed.p50_ms
    paced = run_bench(config(rate=(50.0,), duration_s=0.6, max_threads=4)).measurements[0]
    assert 10 <= paced.requests <= 60 and paced.errors == 0 and paced.agreement == 1.0  # ~30 expected


def test_poisson_arrivals_have_the_requested_rate():
    times = np.fromiter(poisson_arrivals(200.0, np.random.default_rng(0)), float, count=4000)
    gaps = np.diff(times)
    assert (gaps > 0).all() and abs(gaps.mean() - 1 / 200) < 0.1 / 200
    assert abs(gaps.std() / gaps.mean() - 1) < 0.1  # exponential gaps: as variable as they are long


def test_a_time_window_bounds_the_measurement(config):
    m = run_bench(config(concurrency=(2,), duration_s=0.4)).measurements[0]
    assert 0.35 <= m.seconds < 5 and m.completed == m.requests > 0


@pytest.mark.parametrize("options, message", [
    ({"concurrency": (0,)}, "concurrency"), ({"rate": (0.0,)}, "rates"),
    ({"requests": 10, "duration_s": 1.0}, "not both"), ({"max_threads": 0}, "max_threads"),
])
def test_bad_settings_are_refused(config, options, message):
    with pytest.raises(InvalidInput, match=message):
        config(**options)


def test_the_learner_serves_concurrent_clients_and_reports_what_it_learned(config):
    """With learning on, the in-process learner answers 4 clients at once while it learns beside them (its
    coin, shadow checks, tier and refits on its own threads); every answer comes back and the result says what the
    learner did."""
    from gati.learning.tier_config import TierConfig
    from gati.learning.online import OnlineConfig
    online = OnlineConfig(sample_rate=0.5, refit_every=40, select_samples=10, certify_samples=30, target=0.9,
                          tier=TierConfig(capacity=64, k=4))
    r = run_bench(config(concurrency=(1, 4), requests=120, online=online))
    assert r.target == "in-process, learning"
    for m in r.measurements:
        assert m.completed == m.requests == 120 and m.errors == 0 and m.base_agreement >= 0.9
    k = r.learner
    assert k["requests"] == 2 + 240 and k["samples"] > 0 and k["tier_size"] > 0  # the warm-up counts too
    assert 0 < k["live_lower_bound"] <= 1 and k["level"] <= k["levels"] - 1
    assert format_table(r).splitlines()[-1].startswith("learner: version")
    with pytest.raises(InvalidInput, match="in process"):
        config(online=online, endpoint="127.0.0.1:1")
