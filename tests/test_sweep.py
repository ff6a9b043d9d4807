"""experiments/latency_sweep.py on the tiny synthetic model: rows, JSON lines, resuming, skips, figures and docs.

One sweep runs once per module (in process at two targets and two workloads with learning off and on, one cluster
row, and a row that must be skipped: a GPU row on this CPU); the tests read what it left behind. Figures are checked as
matplotlib objects (titles, axis labels, series and their data), never as pixels.
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments import latency_sweep
from experiments.sweep.bundles import Bundles, Ready, Unavailable
from experiments.sweep.cluster import Refits, cluster_config
from experiments.sweep.figures import draw_all
from experiments.sweep.replay import live_lower_bound, replay_in_process
from experiments.sweep.report import marker, replace_block
from experiments.sweep.results import DONE, FAILED, SKIPPED, UNKNOWN, Records, ResultsFile, Summary, records_folder
from experiments.sweep.spec import (
    CLUSTER,
    IN_PROCESS,
    SweepError,
    load_models,
    load_preset,
)
from gati.bundle import load_bundle
from gati.data import load_split
from gati.learning.online import OnlineConfig
from gati.measure.evaluate import evaluate
from gati.measure.workloads import parse_workload
from gati.rpc.config import load_config
from tests.tinynet import CUTS

REPO = Path(__file__).resolve().parents[1]
REQUESTS = 48


@pytest.fixture(scope="module")
def sweep_file(tiny_bundle, tiny_data, tmp_path_factory) -> Path:
    data, checkpoint = tiny_data
    folder = tmp_path_factory.mktemp("sweep")
    spec = {
        "models": {"tiny": {"title": "TinyNet / synthetic", "model_module": "tests.tinynet:factory", "cuts": CUTS,
                            "dataset": "imagefolder", "data": str(data), "checkpoint": str(checkpoint),
                            "bundle": str(tiny_bundle), "paper": {"cpu": 1.5, "cuda": 1.25},
                            "note": "synthetic blobs"}},
        "presets": {"tiny": {"requests": REQUESTS, "window": 8, "build_target": 0.9, "headline_target": 0.9,
                             "sweeps": [
                                 {"models": ["tiny"], "targets": [0.9, 0.95], "workloads": ["iid", "bursty:mean_run=6"],
                                  "online": [False, True]},
                                 {"models": ["tiny"], "devices": ["cuda"], "targets": [0.9], "workloads": ["iid"]},
                                 {"models": ["tiny"], "targets": [0.9], "workloads": ["iid"],
                                  "deployments": ["cluster"], "hop_delays_ms": [0]}]}},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def swept(sweep_file, tmp_path_factory):
    """A copy of the docs, the sweep run over it, and what it returned."""
    root = tmp_path_factory.mktemp("checkout")
    (root / "docs" / "results").mkdir(parents=True)
    shutil.copy(REPO / "README.md", root / "README.md")
    for name in ("results.md", "aws.md"):
        shutil.copy(REPO / "docs" / name, root / "docs" / name)
    shutil.copy(REPO / "docs" / "results" / "hop_delay.json", root / "docs" / "results" / "hop_delay.json")
    argv = ["--preset", str(sweep_file), "--root", str(root), "--work", str(root / "work"), "--quiet"]
    code = latency_sweep.main(argv)
    results = root / "docs" / "results" / "sweep" / "tiny.jsonl"
    return {"root": root, "argv": argv, "code": code, "results": results,
            "lines": results.read_text().splitlines(), "preset": load_preset(str(sweep_file))}


def rows_of(swept) -> dict:
    return ResultsFile(swept["results"], records_folder(swept["root"] / "work")).latest()


def records_of(swept, line: str) -> dict:
    """One results line's per-request records, from the gzipped file it names under the work folder."""
    name = json.loads(line)["records_file"]
    return json.loads(gzip.decompress((records_folder(swept["root"] / "work") / name).read_bytes()))


def test_the_lines_hold_no_per_request_records_which_stay_in_the_work_folder(swept):
    lines = [json.loads(line) for line in swept["lines"]]
    done = [d for d in lines if d["status"] == DONE]
    assert done and all(d["records"] is None and d["records_file"] for d in done)
    bare = ResultsFile(swept["results"]).latest()  # a fresh clone: the lines without the work folder
    assert all(r.records is None and r.summary is not None for r in bare.values() if r.status == DONE)
    full = rows_of(swept)
    assert all(len(full[k].records) == full[k].summary.requests for k, r in bare.items() if r.status == DONE)


def test_every_row_is_measured_or_skipped_with_its_reason_and_command(swept):
    preset, rows = swept["preset"], rows_of(swept)
    assert swept["code"] == latency_sweep.EXIT_INCOMPLETE  # some rows cannot run here, and the exit code says so
    assert set(rows) == {r.key for r in preset.rows} and len(preset.rows) == 8 + 1 + 1
    assert not [r for r in rows.values() if r.status == FAILED], [r.reason for r in rows.values()]
    skipped = {k: r for k, r in rows.items() if r.status == SKIPPED}
    assert {r.row.device for r in skipped.values()} == {"cuda"} and len(skipped) == 1
    for r in skipped.values():
        assert r.reason and r.command, r.key
        assert "no CUDA device" in r.reason and "latency_sweep.py" in r.command and "GPU" in r.command
    done = [r for r in rows.values() if r.status == DONE]
    assert len(done) == 8 + 1 and sum(r.row.online for r in done) == 4
    for r in done:
        rec, s = r.records, r.summary
        assert len(rec) == s.requests == REQUESTS and list(rec.index) == list(range(REQUESTS))
        assert s.agreement == pytest.approx(np.mean(rec.answer == rec.base_label))
        assert s.speedup_mean == pytest.approx(rec.ms_base.mean() / rec.ms_gati.mean(), rel=1e-3)  # ms kept to 0.1 us
        assert (rec.hit == (rec.exit_name != "final")).all() and not (rec.sampled & ~rec.hit).any()
        assert (rec.ms_base > 0).all() and (rec.ms_gati > 0).all() and ((0 <= rec.live_lower_bound) & (rec.live_lower_bound <= 1)).all()
        assert r.bundle.target == r.row.target and r.bundle.cuts == CUTS and r.note == "synthetic blobs"
        env = r.environment
        assert env["cpu"] and env["cpus"] >= 1 and env["torch"] and env["torch_threads"] >= 1 and "git_commit" in env
    cluster = [r for r in done if r.row.deployment == CLUSTER]
    assert len(cluster) == 1 and cluster[0].summary.mean_stages_run is not None
    local = next(r for r in done if r.row.deployment == IN_PROCESS and r.row.workload_name == "iid"
                 and r.row.target == 0.9 and not r.row.online)
    assert (cluster[0].records.answer == local.records.answer).all()  # the cluster answers what the engine answers


def test_online_rows_learn_while_serving_and_keep_the_learners_bound_level_and_version(swept):
    done = [r for r in rows_of(swept).values() if r.status == DONE]
    exits = {*CUTS, *(f"tier:{c}" for c in CUTS), "final"}
    for r in done:
        rec = r.records
        assert set(rec.exit_name.tolist()) <= exits
        assert r.summary.live_lower_bound == pytest.approx(rec.live_lower_bound[-1], abs=1e-6)  # kept to 6 places
        if r.row.online:  # the OnlineEngine's own: the rung it served at, its cache version, its live bound
            assert (rec.fallback_level >= 0).all() and (rec.version >= 0).all()
            realised = np.cumsum(rec.answer == rec.base_label) / np.arange(1, len(rec) + 1)
            assert (rec.live_lower_bound <= realised + 1e-9).all()
        else:
            assert (rec.fallback_level == UNKNOWN).all() and (rec.version == 0).all()


@pytest.mark.parametrize("online", [False, True])
def test_the_in_process_adapter_is_evaluate_on_the_same_stream(tiny_bundle, tiny_data, online):
    """One replay: the sweep's in-process row is `gati eval`'s, so its agreement, hit rate and bound are evaluate's."""
    bundle = load_bundle(tiny_bundle)
    split = load_split("imagefolder", tiny_data[0], "test:eval")
    stream = parse_workload("bursty:n=40,seed=2,mean_run=5").generate(split)
    records, learned = replay_in_process(bundle, split, stream, online, 0.3, seed=1, background=False)
    config = OnlineConfig(sample_rate=0.3, coin_seed=1, background=False) if online else None
    result = evaluate(bundle, split, progress=False, workload=parse_workload(stream.workload), online=config)
    summary = Summary.of(records, 8)
    assert summary.agreement == pytest.approx(result.agreement) and summary.hit_rate == pytest.approx(result.hit_rate)
    assert records.answer.tolist() == [r.answer for r in result.records]
    assert records.exit_name.tolist() == [r.exit for r in result.records]
    if online:
        assert records.live_lower_bound.tolist() == [r.lower for r in result.records]
        assert summary.live_lower_bound == result.live_lower_bound
        assert records.fallback_level.tolist() == [r.level for r in result.records]
        assert learned == {"reviews": result.reviews, "versions_deployed": result.versions_deployed,
                           "deployed_by": result.deployed_by}
    else:
        assert learned == {}


def test_other_targets_are_calibrated_from_the_built_bundle_with_the_gati_command(swept, tiny_bundle):
    row = next(r for r in rows_of(swept).values() if r.status == DONE and r.row.target == 0.95)
    assert row.commands[0] == f"(given: {tiny_bundle})"
    assert row.commands[1].startswith("gati calibrate --bundle ") and "--target 0.95" in row.commands[1]
    assert Path(row.bundle.path).parent == swept["root"] / "work" and row.bundle.looks == 2


def test_a_second_run_resumes_and_force_measures_again(swept, sweep_file):
    before = swept["results"].read_text()
    assert latency_sweep.main(swept["argv"]) == latency_sweep.EXIT_INCOMPLETE
    assert swept["results"].read_text() == before  # nothing measured, no skip recorded twice
    spec = yaml.safe_load(sweep_file.read_text())
    one = spec["presets"].pop("tiny")
    spec["presets"]["one"] = {**one, "sweeps": [{"models": ["tiny"], "targets": [0.9], "workloads": ["iid"]}]}
    path = sweep_file.parent / "one.yaml"
    path.write_text(yaml.safe_dump(spec))
    argv = [*swept["argv"][:1], str(path), *swept["argv"][2:]]
    results = swept["results"].with_name("one.jsonl")
    for extra, lines in (([], 1), ([], 1), (["--force"], 2)):
        assert latency_sweep.main(argv + extra) == 0
        assert len(results.read_text().splitlines()) == lines
    first, second = results.read_text().splitlines()
    assert json.loads(first)["key"] == json.loads(second)["key"] == "tiny|cpu|0.9|iid:n=48,seed=0|in-process|frozen"
    assert records_of(swept, first)["answer"] == records_of(swept, second)["answer"]  # the same stream, again


def test_the_docs_blocks_are_generated_from_the_json(swept):
    root = swept["root"]
    results_md = (root / "docs" / "results.md").read_text()
    block = results_md.split(marker("latency sweep: tiny"))[1].split(marker("latency sweep: tiny", end=True))[0]
    assert "9 of 10 rows measured" in block and "no CUDA device on this machine" in block
    assert "![" in block and "figures/tiny/fig1-gain-vs-paper.png" in block and "**Machine**" in block
    assert "gati calibrate --bundle" in block and "python experiments/latency_sweep.py --preset" in block
    assert "## Core: learned caches in-process" in results_md  # the hand-written sections stay
    readme = (root / "README.md").read_text()
    headline = readme.split(marker("headline table"))[1].split(marker("headline table", end=True))[0]
    rows = [line.strip("| ").split(" | ") for line in headline.splitlines() if line.startswith("| TinyNet")]
    assert [row[:4] for row in rows] == [["TinyNet / synthetic *", "cpu", "0.9", str(REQUESTS)],
                                         ["TinyNet / synthetic *", "cpu", "0.95", str(REQUESTS)]]
    assert all(row[6].startswith("**") and row[7] == "-" for row in rows)  # the paper's numbers are at 0.97 only
    assert "synthetic blobs" in headline
    aws = (root / "docs" / "aws.md").read_text()
    hop = aws.split(marker("per-hop table"))[1].split(marker("per-hop table", end=True))[0]
    table = {json.dumps(r["hop_delay_ms"]): r for r in json.loads((REPO / "docs/results/hop_delay.json").read_text())}
    assert f"{table['1.0']['p50_ms']:.1f} ms" in hop and "docs/results/hop_delay.json" in hop
    for name in ("fig1-gain-vs-paper", "fig2-tradeoff", "fig3-exits", "fig4-latency-cdf", "fig5-over-time",
                 "fig6-caches", "fig7-hop-delay"):
        assert (root / "docs" / "figures" / "tiny" / f"{name}.png").stat().st_size > 10_000


def test_a_clone_without_the_records_keeps_the_figures_drawn_from_them(swept, tmp_path):
    """Per-request records stay in the work folder, out of git: redrawing in a fresh clone must keep the committed
    figures 4 and 5 and their links rather than delete them: the figures come out as committed."""
    clone = tmp_path / "clone"
    shutil.copytree(swept["root"] / "docs", clone / "docs")
    shutil.copy(swept["root"] / "README.md", clone / "README.md")
    committed = {name: (clone / "docs" / "figures" / "tiny" / f"{name}.png").read_bytes()
                 for name in ("fig4-latency-cdf", "fig5-over-time")}

    def figure_lines() -> list[str]:  # the block's figure links, captions and "not drawn" notes
        block = (clone / "docs" / "results.md").read_text().split(marker("latency sweep: tiny"))[1]
        block = block.split("**Figures**")[1].split("**Machine**")[0]
        return [line for line in block.splitlines() if line.strip()]

    before = figure_lines()
    argv = ["--preset", swept["argv"][1], "--root", str(clone), "--work", str(clone / "work"), "--quiet"]
    assert latency_sweep.main(argv + ["--report-only"]) == swept["code"]
    for name, png in committed.items():
        assert (clone / "docs" / "figures" / "tiny" / f"{name}.png").read_bytes() == png
    assert figure_lines() == before and len([line for line in before if line.startswith("![")]) == 7


@pytest.fixture(scope="module")
def figures(swept) -> dict:
    preset = swept["preset"]
    rows = [r for r in rows_of(swept).values() if r.status == DONE]
    return {d.name: d.figure for d in draw_all(rows, preset.models, preset.headline_target, preset.window)}, rows


def series(ax) -> dict[str, object]:
    """Every labelled line and bar group of an axes, by label."""
    out = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    out.update({c.get_label(): c for c in ax.containers})
    return out


def readable(fig) -> None:
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), ax
        assert ax.get_legend() is not None and ax.get_legend().get_texts()


def test_every_figure_has_a_title_axis_labels_and_a_legend(figures):
    drawn, _ = figures
    assert set(drawn) == {"fig1-gain-vs-paper", "fig2-tradeoff", "fig3-exits", "fig4-latency-cdf", "fig5-over-time",
                          "fig6-caches", "fig7-hop-delay"}
    for name, fig in drawn.items():
        assert fig is not None, name
        readable(fig)


def pick_row(rows, **where):
    return next(r for r in rows if all(getattr(r.row, k) == v for k, v in where.items()))


def test_figure_1_sets_measured_gains_beside_the_paper(figures):
    drawn, rows = figures
    ax = drawn["fig1-gain-vs-paper"].axes[0]
    s = series(ax)
    assert {"measured, CPU", "paper, CPU (Table 6)", "measured, GPU", "paper, GPU (Table 6)", "no gain"} <= set(s)
    local = pick_row(rows, target=0.9, workload_name="iid", deployment=IN_PROCESS, online=False)
    assert s["measured, CPU"].patches[0].get_height() == pytest.approx(local.summary.speedup_mean)
    assert s["paper, CPU (Table 6)"].patches[0].get_height() == 1.5
    assert s["paper, GPU (Table 6)"].patches[0].get_height() == 1.25
    assert np.isnan(s["measured, GPU"].patches[0].get_height())  # not measured here, and marked so
    assert "Table 6" in ax.get_title() and "speed-up" in ax.get_ylabel()


def test_figure_2_is_the_trade_off_curve_with_the_certified_bound(figures):
    drawn, rows = figures
    s = series(drawn["fig2-tradeoff"].axes[0])
    measured = s["TinyNet / synthetic: measured"]
    points = sorted((r for r in rows if r.row.workload_name == "iid" and r.row.deployment == IN_PROCESS
                     and not r.row.online), key=lambda r: r.row.target)
    assert list(measured.get_ydata()) == pytest.approx([r.summary.agreement for r in points])
    assert list(measured.get_xdata()) == pytest.approx([r.summary.speedup_mean for r in points])
    assert list(s["TinyNet / synthetic: certified bound (>= target)"].get_ydata()) == [0.9, 0.95]
    assert list(s["TinyNet / synthetic: paper (Table 6, 97%)"].get_xydata()[0]) == [1.5, 0.97]


def test_figure_3_shows_where_requests_exit_per_target(figures):
    drawn, _ = figures
    s = series(drawn["fig3-exits"].axes[0])
    assert set(s) == {"target 0.9", "target 0.95"}
    for bars in s.values():
        assert sum(p.get_height() for p in bars.patches) == pytest.approx(1.0)


def test_figure_4_has_the_base_in_process_and_cluster_cdfs(figures):
    drawn, _ = figures
    s = series(drawn["fig4-latency-cdf"].axes[0])
    assert set(s) == {"unsplit model", "GATI in process", "GATI through the cluster (0 ms per hop)"}
    for line in s.values():
        y = line.get_ydata()
        assert len(y) == REQUESTS and y[-1] == 1.0 and (np.diff(line.get_xdata()) >= 0).all()


def test_figure_5_shows_rolling_speedup_agreement_and_the_live_bound_on_locality_workloads(figures):
    drawn, rows = figures
    speed, agree = drawn["fig5-over-time"].axes
    assert speed.get_title().startswith("bursty") and "live lower bound" in agree.get_title()
    assert set(series(speed)) == {"TinyNet / synthetic, learning off", "TinyNet / synthetic, learning on", "no gain"}
    s = series(agree)
    assert {f"TinyNet / synthetic, learning {on}: {what}" for on in ("off", "on")
            for what in ("rolling agreement", "live lower bound (all requests so far)")} | {"target 0.9"} == set(s)
    for online, on in ((False, "off"), (True, "on")):
        bursty = pick_row(rows, target=0.9, workload_name="bursty", online=online)
        bound = s[f"TinyNet / synthetic, learning {on}: live lower bound (all requests so far)"]
        assert list(bound.get_ydata()) == pytest.approx(list(bursty.records.live_lower_bound))


def test_figure_6_shows_lookup_cost_and_memory_per_variant_with_the_plan_marked(figures):
    drawn, rows = figures
    cost, size = drawn["fig6-caches"].axes
    variants = {c.variant for c in rows[0].bundle.caches}
    for ax in (cost, size):
        assert set(series(ax)) == variants | {"in the plan at target 0.9"}
    linear = series(size)["linear"]
    facts = sorted((c for c in pick_row(rows, target=0.9).bundle.caches if c.variant == "linear"), key=lambda c: c.cut)
    assert list(linear.get_ydata()) == pytest.approx([c.nbytes / 2**20 for c in facts])


def test_figure_7_shows_the_cluster_median_against_the_in_process_engine(figures):
    drawn, rows = figures
    s = series(drawn["fig7-hop-delay"].axes[0])
    name = "TinyNet / synthetic at 0.9 (cpu)"
    assert set(s) == {f"{name}: cluster", f"{name}: in process", f"{name}: unsplit model"}
    cluster = pick_row(rows, deployment=CLUSTER)
    assert list(s[f"{name}: cluster"].get_xydata()[0]) == pytest.approx([0.0, cluster.summary.p50_ms_gati])


def test_records_survive_the_json_line():
    rng = np.random.default_rng(0)
    n = 7
    records = Records(index=np.arange(n), source=rng.integers(0, 9, n), phase=np.zeros(n, int),
                      label=rng.integers(0, 3, n), base_label=rng.integers(0, 3, n), answer=rng.integers(0, 3, n),
                      exit_name=np.array(["stem", "final", "block2", "stem", "final", "final", "block1"], dtype=object),
                      stages_run=rng.integers(1, 5, n), ms_base=rng.random(n), ms_gati=rng.random(n),
                      hit=rng.random(n) < 0.5, sampled=np.zeros(n, bool), live_lower_bound=rng.random(n),
                      fallback_level=np.full(n, -1), version=np.array([0, 0, 1, 1, 1, 2, 2]))
    back = Records.from_json(json.loads(json.dumps(records.to_json())))
    assert list(back.exit_name) == list(records.exit_name) and (back.answer == records.answer).all()
    assert back.ms_base == pytest.approx(records.ms_base, abs=1e-4) and back.hit.dtype.kind in "biu"
    assert back.version.tolist() == records.version.tolist()
    older = {k: v for k, v in records.to_json().items() if k != "version"}  # a line written before the column
    assert Records.from_json(older).version.tolist() == [0] * n


def test_the_live_lower_bound_rises_with_right_answers_and_stays_below_the_realised_agreement():
    n = 5000
    hit = np.ones(n, bool)
    _, clean = live_lower_bound(hit, np.zeros(n, bool), 0.05, seed=1)
    assert clean[0] == 0.0 and 0.97 < clean[-1] < 1.0  # an unsampled first hit may be wrong: nothing is known yet
    assert (np.diff(clean[1000:]) >= 0).all()  # once the samples bound the unseen errors, every right answer adds
    wrong = np.random.default_rng(2).random(n) < 0.02
    _, bound = live_lower_bound(hit, wrong, 0.05, seed=1)
    realised = 1 - np.cumsum(wrong) / np.arange(1, n + 1)
    assert (bound <= realised + 1e-12).all() and bound[-1] > 0.9


def test_the_shipped_presets_cover_the_paper_and_fit_the_quick_budget():
    quick, paper = load_preset("quick"), load_preset("paper")
    assert {r.model for r in quick.rows} == {"resnet18-cifar10", "resnet50-cifar10"}
    assert {r.target for r in quick.rows} == {0.97, 0.99} and {r.device for r in quick.rows} == {"cpu"}
    assert {r.workload_name for r in quick.rows} == {"iid", "bursty", "repeat"}
    assert {r.deployment for r in quick.rows} == {IN_PROCESS, CLUSTER}
    assert {r.model for r in paper.rows} == {"resnet18-cifar10", "resnet50-cifar10", "resnet152-cifar100",
                                             "vgg16-speechcommands"}
    assert {r.device for r in paper.rows} == {"cpu", "cuda"} and min(r.target for r in paper.rows) == 0.9
    assert max(r.target for r in paper.rows) == 0.999 and {r.online for r in paper.rows} == {False, True}
    assert "tinyimagenet100" not in {m.dataset for m in load_models().values()}
    # the paper's online CIFAR rows (5,000 requests each) see at least one review of the learner
    review = paper.learning.refit_every + paper.learning.select_samples + paper.learning.certify_samples
    assert review / paper.learning.sample_rate <= 5000
    assert load_models()["resnet152-cifar100"].note and "re-made split" in load_models()["resnet152-cifar100"].note
    # quick builds its own, smaller bundles (its 30 minutes include them); the default builds are cpu-defaults'
    assert not quick.build.defaults and "--train-limit" in quick.build.args
    assert all(r.key.endswith("|build " + " ".join(quick.build.args)) for r in quick.rows)  # never a default build's
    defaults, learning = load_preset("cpu-defaults"), load_preset("learning")
    assert defaults.build.defaults and defaults.requests == 0 and {r.target for r in defaults.rows} == {0.97, 0.99}
    assert len(learning.rows) == 80 and {r.online for r in learning.rows} == {False, True}
    assert {r.workload_name for r in learning.rows} == {"iid", "zipf", "bursty", "repeat", "drift"}
    review = learning.learning.refit_every + learning.learning.select_samples + learning.learning.certify_samples
    assert review / learning.learning.sample_rate <= learning.requests  # a learning row sees a review


def test_a_presets_build_options_become_flags_and_a_folder_of_its_own(tmp_path):
    from experiments.sweep.spec import Build
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "data" / "cifar10-jpg.tar.gz").write_bytes(b"")
    spec = load_models()["resnet18-cifar10"]
    quick = load_preset("quick")
    ours = Bundles(shared, tmp_path / "work", 0.97, False, "sweep", quick.build, "quick")
    out = tmp_path / "work" / "resnet18-cifar10-cpu-quick"
    (out / "manifest.yaml").parent.mkdir(parents=True)
    (out / "manifest.yaml").write_text("")  # found: reused, not built
    assert ours._base(spec, "cpu", shared / "data" / "cifar10-jpg.tar.gz").path == out
    plain = Bundles(shared, tmp_path / "work", 0.97, False, "sweep", Build(), "cpu-defaults")
    assert plain.suffix == "" and ours.suffix == "-quick"
    from experiments.sweep.bundles import _build_args
    args = _build_args(spec, Path("c.pt"), Path("d"), 0.97, "cpu", Path("o"), quick.build)
    assert args[args.index("--train-limit") + 1] == "10000" and args[args.index("--variants") + 1] == "linear,mlp,fc"
    assert args[-2:] == ["--out", "o"]


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["sweeps"][0].update(models=["nope"]), "unknown models nope"),
    (lambda p: p["sweeps"][0].update(devices=["tpu"]), "devices are cpu, cuda"),
    (lambda p: p["sweeps"][0].update(workloads=["bursty:mean_run=0"]), "mean_run"),
    (lambda p: p.update(colour="red"), "unknown keys colour"),
    (lambda p: p["sweeps"][0].update(targets=[1.2]), r"in \(0, 1\)"),
    (lambda p: p.update(learning={"refit_every": 0}), "refit_every must be an integer >= 1"),
    (lambda p: p.update(learning={"rate": 0.3}), "unknown keys rate"),
    (lambda p: p.update(build={"train_limits": 5}), "unknown keys train_limits"),
    (lambda p: p.update(build={"variants": "fc"}), "variants must be a non-empty list"),
])
def test_a_bad_preset_is_refused_with_what_is_wrong(sweep_file, tmp_path, edit, message):
    spec = yaml.safe_load(sweep_file.read_text())
    edit(spec["presets"]["tiny"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match=message):
        load_preset(str(bad))


def test_a_frozen_cluster_never_refits_and_an_online_one_refits_as_the_preset_says(tiny_bundle, tmp_path):
    (tmp_path / "frozen").mkdir(), (tmp_path / "online").mkdir()
    frozen = load_config(cluster_config(tiny_bundle, "cpu", 0.0, tmp_path / "frozen"))
    assert frozen.retrainer.refit_every == 0 and frozen.retrainer.refit_seconds == 0
    online = load_config(cluster_config(tiny_bundle, "cpu", 0.0, tmp_path / "online", Refits(0.4, 300, 100, 500)))
    assert online.aggregator.sample_rate == 0.4
    # each cluster keeps its state in its own folder: what one row's cluster learned never serves another's
    assert frozen.state_dir.resolve() == (tmp_path / "frozen" / "state").resolve()
    assert online.state_dir.resolve() == (tmp_path / "online" / "state").resolve()
    assert (online.retrainer.refit_every, online.retrainer.select_samples, online.retrainer.certify_samples) == \
        (300, 100, 500)


def test_a_missing_checkpoint_without_a_gpu_is_a_skip_with_the_train_base_command(tmp_path):
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "data" / "cifar100-jpg.tar.gz").write_bytes(b"")
    bundles = Bundles(shared, tmp_path / "work", 0.97, cuda=False, sweep_command="python experiments/latency_sweep.py")
    got = bundles.get(load_models()["resnet152-cifar100"], "cpu", 0.97)
    assert isinstance(got, Unavailable) and "no GPU" in got.reason
    assert got.command.startswith("gati train-base --arch resnet152 --dataset cifar100") and "--device cuda" in got.command
    missing = bundles.get(load_models()["vgg16-speechcommands"], "cpu", 0.97)
    assert isinstance(missing, Unavailable) and "no data at" in missing.reason
    assert not isinstance(bundles.get(load_models()["resnet18-cifar10"], "cuda", 0.97), Ready)


def test_generated_blocks_replace_only_their_own_text():
    text = f"intro\n{marker('x')}\nold\n{marker('x', end=True)}\nhand-written\n"
    assert replace_block(text, "x", "new") == f"intro\n{marker('x')}\nnew\n{marker('x', end=True)}\nhand-written\n"
    assert replace_block("intro\n", "y", "made", append=True).endswith(f"{marker('y')}\nmade\n{marker('y', end=True)}\n")
    with pytest.raises(SweepError, match="no generated block"):
        replace_block("intro\n", "y", "made")
