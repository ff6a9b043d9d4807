"""`gati eval` over workloads, frozen and online: the default replays what it always did, records say what happened
to every request, and an online run reports its live bound and what its learner did."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from gati.bundle import load_bundle
from gati.cli import EXIT_FAILURE, main
from gati.data import load_split
from gati.learning.online import OnlineConfig
from gati.measure.environment import read_records
from gati.measure.evaluate import evaluate, format_table, stale_profile, worst_window
from gati.measure.workloads import Iid, Repeat, Trace

RECORD_FIELDS = {"i", "source", "phase", "truth", "base", "answer", "exit", "stages", "ms_base", "ms_gati", "hit",
                 "sampled", "lower", "level", "version"}


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def split(tiny_data):
    return load_split("imagefolder", tiny_data[0], "test:eval", limit=60, seed=3)


def test_the_default_replays_the_split_in_the_order_eval_always_used(bundle, split, tmp_path):
    assert np.array_equal(Iid(seed=3).generate(split).sources, np.random.default_rng(3).permutation(len(split)))
    result = evaluate(bundle, split, seed=3, progress=False, records=tmp_path / "r.jsonl")
    env, rows = read_records(tmp_path / "r.jsonl")  # the environment first, then one line per request
    assert env["gati"] and env["argv"] is not None
    assert result.workload == "iid:n=0,seed=3" and result.locality.startswith("locality: ")
    assert [r["source"] for r in rows] == np.random.default_rng(3).permutation(len(split)).tolist()
    assert all(set(r) == RECORD_FIELDS for r in rows) and len(rows) == result.requests == len(split)
    assert np.mean([r["answer"] == r["base"] for r in rows]) == pytest.approx(result.agreement)
    assert sum(r["hit"] for r in rows) == round(result.hit_rate * len(rows))
    assert not result.online and result.live_lower_bound is None and all(r["lower"] is None for r in rows)


def test_a_frozen_replay_says_what_the_latency_model_expected_and_when_the_profile_is_stale(bundle, split):
    result = evaluate(bundle, split, seed=3, progress=False)
    assert result.profiled_ms_base == bundle.manifest.profile.base_ms and result.modelled_speedup > 0
    assert "latency model:" in format_table(result)
    slow = replace(result, mean_ms_base=result.profiled_ms_base * 1.2)
    steady = replace(result, mean_ms_base=result.profiled_ms_base * 1.01)
    assert stale_profile(slow) and not stale_profile(steady)
    assert "gati plan --bundle" in format_table(slow) and "gati plan" not in format_table(steady)
    other = "async" if bundle.plan.mode == "sync" else "sync"  # the model prices the plan's own mode only
    assert evaluate(bundle, split, seed=3, progress=False, mode=other).modelled_speedup is None


def test_an_online_run_is_repeatable_and_reports_its_bound_and_learner(bundle, split, tmp_path):
    config = OnlineConfig(sample_rate=0.3, background=False, coin_seed=0, refit_every=40, select_samples=20,
                          certify_samples=40, target=0.9)
    runs = []
    for k in range(2):
        result = evaluate(bundle, split, progress=False, workload=Repeat(n=400, working_set=8, seed=1),
                          online=config, records=tmp_path / f"{k}.jsonl")
        _, rows = read_records(tmp_path / f"{k}.jsonl")
        runs.append((result, [{k: v for k, v in r.items() if not k.startswith("ms_")} for r in rows]))
    (result, rows), (_, again) = runs
    assert rows == again  # the coin, the learning and so every answer are the same
    assert result.online and result.reviews >= 1 and result.sample_rate == 0.3
    assert result.live_lower_bound <= result.agreement and result.bound_above_realised == 0
    assert rows[-1]["lower"] == pytest.approx(result.live_lower_bound)
    assert any(r["sampled"] for r in rows) and {r["version"] for r in rows} >= {0}
    assert result.workload.startswith("repeat:n=400") and "repeat an earlier image" in result.locality
    assert result.modelled_speedup is None  # the tier's exits are not the plan's: the build's model does not price them


def test_a_trace_has_no_true_labels(bundle, split, tmp_path):
    from PIL import Image
    for i in range(3):
        Image.fromarray(split.images[i]).save(tmp_path / f"{i}.png")
    (tmp_path / "trace.txt").write_text("0.png\n1.png\n2.png\n1.png\n")
    result = evaluate(bundle, split, progress=False, workload=Trace(path=str(tmp_path / "trace.txt")))
    assert result.requests == 4 and result.base_acc is None and result.gati_acc is None


def test_the_worst_window():
    agree = np.ones(3000, bool)
    agree[1000:1100] = False
    assert worst_window(agree) == pytest.approx(0.9) and worst_window(agree[:500]) == 1.0


def test_the_command_line(tiny_bundle, tiny_data, tmp_path, capsys):
    common = ["eval", "--bundle", str(tiny_bundle), "--data-dir", str(tiny_data[0]), "--limit", "40"]
    assert main([*common, "--workload", "repeat:n=120,working_set=6", "--online", "--deterministic",
                 "--sample-rate", "0.5", "--state-dir", str(tmp_path / "state"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["online"] and out["requests"] == 120 and (tmp_path / "state" / "learner.json").is_file()
    assert main([*common, "--state-dir", str(tmp_path)]) == EXIT_FAILURE
    assert "--state-dir needs --online" in capsys.readouterr().err
    assert main([*common, "--workload", "nope"]) == EXIT_FAILURE
    assert "unknown workload" in capsys.readouterr().err
    assert main([*common, "--workload", "help"]) == 0 and "repeat:" in capsys.readouterr().out
