"""The cluster as separate processes on loopback answers exactly what the in-process engine answers."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gati.measure.environment import read_records
from gati.rpc.gen.gati_idl.ttypes import InvalidRequest, Request, Tensor
from gati.rpc.tensors import to_tensor
from gati.rpc.transport import PeerUnavailable
from tests.cluster.conftest import start_cluster
from tests.cluster.helpers import (
    Cluster,
    Load,
    References,
    cache_with_outputs,
    lookups,
    stages_after_hit,
    until,
)
from tests.cluster.helpers import answered as answered_by_aggregator

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, cluster_bundle) -> Cluster:
    # lookahead 1: each lookup overlaps the next stage (the paper's topology); the fault tests run
    # the plan's own mode (sync: the executor waits for each verdict).
    # A generous lookup timeout: a verdict that is late only because the machine is busy must not
    # turn into a miss here (answers are compared with the engine's).
    return start_cluster(request, tmp_path_factory, cluster_bundle, sample_rate=0.25, lookahead=1, lookup_ms=2000)


@pytest.fixture(scope="module")
def references_async(cluster_bundle, eval_images) -> References:
    return References.of(cluster_bundle, eval_images, "async")  # the engine with lookahead 1, as the cluster here


def test_answers_equal_the_engine_and_the_work_is_spread(cluster, eval_images, references, references_async):
    with cluster.client() as client:
        answers = [client.predict_pixels(img) for img in eval_images]
    got = [(p.label, p.exit_name) for p in answers]
    want = list(zip(references.labels, references.exits))
    assert got == want
    assert [p.stages_run for p in answers] == references_async.stages  # one loop: the same stages_run

    statuses = {name: cluster.status(name) for name in cluster.procs}
    pids = {s.pid for s in statuses.values()}
    assert len(pids) == len(statuses) and statuses["aggregator"].pid not in {
        statuses["predictor-0"].pid, statuses["predictor-1"].pid}
    assert all(s.bundle_sha256 == statuses["aggregator"].bundle_sha256 != "" for s in statuses.values())
    answered = {cut: sum(e == cut for _, e in want) for cut in ("stem", "block1", "block2", "final")}
    assert min(answered.values()) > 0  # hits at every planned cut, and misses that reach the full model
    p0, p1 = statuses["predictor-0"], statuses["predictor-1"]
    # Sampled requests run every cut, so predictors see at least the hits that answered.
    assert lookups(p0, "stem") >= len(want) and p0.counters["lookups.stem.hit"] >= answered["stem"]
    assert p1.counters["lookups.block1.hit"] >= answered["block1"]
    assert p1.counters["lookups.block2.hit"] >= answered["block2"]
    assert p1.counters["lookups.block2.miss"] > 0 and p0.counters["lookups.stem.miss"] > 0
    assert statuses["executor"].counters["executor_requests.stopped"] > 0  # cancelled after a hit
    after_hit = stages_after_hit(cluster.metrics("executor"))
    assert after_hit["0.0"] < after_hit["1.0"] == after_hit["+Inf"]   # after a hit, at most one more stage
    # the kNN cut's predictor searched the index
    assert statuses["index"].counters["index_searches"] >= lookups(p0, "stem") > 0
    agg = statuses["aggregator"]
    assert answered_by_aggregator(agg) == len(want)
    assert {c: agg.counters.get(f"request_duration_seconds.{c}.count", 0) for c in answered} == answered


# Families each role must export (besides gati_build_info, the process metrics and
# gati_peer_unreachable_total), as sample names.
ROLE_METRICS = {
    "aggregator": ["gati_request_duration_seconds_bucket", "gati_queue_depth", "gati_requests_in_flight",
                   "gati_sampled_requests_total", "gati_live_agreement_ratio", "gati_live_hit_agreement_ratio"],
    "executor": ["gati_executor_requests_total", "gati_stages_run_total", "gati_stages_after_hit_bucket",
                 "gati_queue_depth", "gati_requests_in_flight"],
    "predictor": ["gati_lookups_total", "gati_cache_version"],
    "index": ["gati_index_searches_total", "gati_index_vectors_added_total", "gati_index_vectors"],
    "retrainer": ["gati_retrainer_samples_total", "gati_cache_version"],
}


def test_the_front_door_runs_without_torch(cluster, eval_images, cluster_bundle):
    """The aggregator checks and converts inputs with numpy and PIL, resizing included, and forwards them: no torch
    in its process."""
    def mapped(name: str) -> str:
        return Path(f"/proc/{cluster.procs[name].pid}/maps").read_text()

    if not Path("/proc/self/maps").exists():
        pytest.skip("reads /proc")
    other_size = np.asarray(Image.fromarray(eval_images[5]).resize((50, 41), Image.BICUBIC))
    with cluster.client() as client:
        assert client.predict_pixels(other_size).label == References.of(cluster_bundle, other_size[None]).labels[0]
    assert "libtorch" in mapped("executor")  # what the check looks for, where torch is
    assert "libtorch" not in mapped("aggregator")


def test_every_service_serves_health_and_prometheus_metrics(cluster, eval_images, cluster_bundle):
    from gati import __version__
    from gati.bundle import read_manifest
    from gati.rpc.metrics import describe_plan
    with cluster.client() as client:
        for img in eval_images[:40]:
            client.predict_pixels(img)
    sha = cluster.status("aggregator").bundle_sha256
    plan = describe_plan(read_manifest(cluster_bundle).plan)
    for name, proc in cluster.procs.items():
        assert cluster.http(name, "/health/live")[0] == 200
        status, body = cluster.http(name, "/health/ready")
        assert (status, json.loads(body)) == (200, {"ready": True, "reason": "ready"}), name
        samples = cluster.metrics(name)
        names = {sample for sample, _ in samples}
        assert [dict(labels) for sample, labels in samples if sample == "gati_build_info"] == [
            {"version": __version__, "bundle_sha256": sha, "plan": plan, "role": proc.role, "service": name}]
        assert set(ROLE_METRICS[proc.role]) <= names, name
        assert "process_cpu_seconds_total" in names and "process_resident_memory_bytes" in names
        text = cluster.http(name, "/metrics")[1].decode()
        counters = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE gati_")
                    and line.endswith(" counter")]
        assert counters and all(c.endswith("_total") for c in counters), counters
        assert not any(n.endswith("_created") for n in names)
    agg = cluster.metrics("aggregator")
    assert agg[("gati_sampled_requests_total", (("answered_by", "cache"),))] > 0  # a quarter finished later
    assert 0.0 <= agg[("gati_live_agreement_ratio", ())] <= 1.0
    assert cluster.http("aggregator", "/nowhere")[0] == 404


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


BAD = [
    Request(image=b"not an image at all"),
    Request(image=b""),
    Request(image=b"\x89PNG" + bytes(600 * 1024)),                                   # over max_request_kb
    Request(tensor=to_tensor(np.zeros((32, 32, 4), np.uint8))),                       # four channels
    Request(tensor=to_tensor(np.zeros((3, 31, 32), np.float32))),                     # not the model's shape
    Request(tensor=to_tensor(np.zeros((32, 32, 3), np.float64))),                     # wrong dtype
    Request(tensor=to_tensor(np.full((3, 32, 32), np.nan, np.float32))),              # NaN
    Request(tensor=Tensor(shape=[32, 32, 3], dtype="uint8", data=b"")),               # empty payload
    Request(),                                                                        # nothing
]


def test_bad_inputs_get_invalid_request_and_the_services_keep_serving(cluster, eval_images, references):
    with cluster.client() as client:
        for bad in BAD:
            with pytest.raises(InvalidRequest) as err:
                client.predict(bad)
            assert err.value.message
        # Beyond max_message_mb the frame itself is refused: that connection drops, the server stays.
        with pytest.raises(PeerUnavailable):
            client.predict(Request(image=bytes(2 * 1024 * 1024)))
        assert client.predict_image(png(eval_images[0])).label == references.labels[0]
    assert cluster.status("aggregator").counters["request_failures.InvalidRequest"] >= len(BAD)


def test_retrainer_swaps_a_validated_version_under_load_and_rejects_a_broken_one(cluster, eval_images, references,
                                                                                  cluster_bundle, tmp_path):
    import torch

    from gati.bundle import cache_file
    from gati.rpc.gen.gati_idl import Retrainer
    from gati.rpc.transport import Limits, Pool
    retrainer = Pool(Retrainer.Client, "127.0.0.1", cluster.cfg.retrainer.port, Limits(call_s=60, secret=cluster.secret))
    deployed = (cluster_bundle / cache_file(1, "linear")).read_bytes()
    broken_file = tmp_path / "broken.pt"  # confidently wrong: every hit names the next class
    broken_file.write_bytes(cache_with_outputs(cluster_bundle / cache_file(1, "linear"),
                                               lambda v: torch.roll(v, 1, dims=0)))

    with Load(cluster, eval_images, threads=2) as load:
        until(lambda: min(cluster.status("retrainer").counters.get(f"retrainer_samples.{c}", 0) for c in ("stem", "block1"))
              >= 40, timeout_s=60)  # the sampled requests' features reach the retrainer
        rejected = retrainer.call("propose", 1, broken_file.read_bytes())
        accepted = retrainer.call("propose", 1, deployed)
        refit = retrainer.call("retrain", 0)  # the kNN cut: a new version goes into the index
        load.wait_for(len(load.answers) + 40)
    assert not rejected.deployed and rejected.candidate_agreement < rejected.deployed_agreement
    assert "rejected" in rejected.message and rejected.holdout_samples >= 20
    assert accepted.deployed and accepted.version == 1
    assert refit.deployed == (refit.candidate_agreement >= refit.deployed_agreement)
    assert cluster.status("predictor-1").gauges["cache_version.block1"] == 1.0
    assert cluster.status("predictor-0").gauges["cache_version.stem"] == float(refit.version)
    assert not load.errors
    if not refit.deployed:  # the swapped-in block1 cache is the same model: answers unchanged
        assert all((p.label, p.exit_name) == (references.labels[i], references.exits[i]) for i, p in load.answers)
    else:  # the new kNN version lives in the index under its own key
        assert cluster.status("index").gauges[f"index_vectors.stem@v{refit.version}"] > 0


def test_gati_predict_and_bench_against_the_cluster(cluster, eval_images, references, tmp_path, cluster_bundle,
                                                    tiny_data):
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        files[-1].write_bytes(png(eval_images[i]))
    # Another size and format: the server resizes it as the manifest's preprocessing says, as the engine would.
    big = np.asarray(Image.fromarray(eval_images[3]).resize((60, 80), Image.BICUBIC))
    files.append(tmp_path / "big.bmp")
    Image.fromarray(big).save(files[-1])
    (tmp_path / "junk.png").write_bytes(b"junk")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    address = f"{cluster.cfg.aggregator.host}:{cluster.cfg.aggregator.port}"
    out = subprocess.run([sys.executable, "-m", "gati.cli", "predict", "--endpoint", address, "--json",
                          *map(str, files), str(tmp_path / "junk.png")], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=120)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 1  # one file was not an image
    assert [r["label"] for r in rows[:3]] == references.labels[:3]
    assert rows[3]["label"] == References.of(cluster_bundle, big[None]).labels[0]
    assert rows[4]["error"] == "InvalidRequest" and "cannot be decoded" in rows[4]["message"]

    bench = subprocess.run([sys.executable, "-m", "gati.cli", "bench", "--bundle", str(cluster_bundle),
                            "--endpoint", address, "--data-dir", str(tiny_data[0]), "--dataset", "imagefolder",
                            "--limit", "60", "--concurrency", "2", "--warmup", "4", "--json",
                            "--records", str(tmp_path / "records.jsonl")],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert bench.returncode == 0, bench.stderr[-2000:]
    result = json.loads(bench.stdout)
    assert result["target"] == address and result["environment"]["gati"]
    m = result["measurements"][0]
    assert m["completed"] == 60 and m["errors"] == 0 and m["agreement"] == 1.0 and m["concurrency"] == 2
    assert 0 < m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"] and m["throughput_rps"] > 0
    # the replies' server-side breakdown (what the aggregator measures), averaged and kept per request
    s = m["server_ms"]
    assert s["server_ms"] >= s["queue_ms"] >= 0 and s["server_ms"] >= s["decode_ms"] > 0
    env, rows = read_records(tmp_path / "records.jsonl")
    assert env["gati"] and len(rows) == 60 and all(r["server_ms"] < r["latency_ms"] for r in rows)


def test_the_open_inference_protocol_answers_what_gati_predict_answers(cluster, eval_images, cluster_bundle, tmp_path):
    """A standard client (tritonclient) against the aggregator's /v2: pixels in binary and in JSON,
    an encoded image as BYTES; every answer equals `gati predict`'s for the same image file."""
    triton = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException
    files = []
    for i in range(5):
        files.append(tmp_path / f"img{i}.png")
        files[-1].write_bytes(png(eval_images[i]))
    address = f"{cluster.cfg.aggregator.host}:{cluster.cfg.aggregator.port}"
    out = subprocess.run([sys.executable, "-m", "gati", "predict", "--endpoint", address, "--json", *map(str, files)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                         timeout=120)
    predicted = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and len(predicted) == len(files)

    model = cluster_bundle.name
    client = triton.InferenceServerClient(f"{cluster.cfg.aggregator.host}:{cluster.cfg.aggregator.http_port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
        meta = client.get_model_metadata(model)
        assert meta["platform"] == "gati" and meta["name"] == model
        assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [1, 3, 32, 32]}]
        assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
            ("label", "INT64"), ("class_name", "BYTES"), ("confidence", "FP32")]
        config = client.get_model_config(model)  # Triton's configuration extension, which perf_analyzer reads
        assert config["max_batch_size"] == 0 and config["input"][0]["dims"] == [1, 3, 32, 32]
        as_json = [triton.InferRequestedOutput(n, binary_data=False) for n in ("label", "class_name", "confidence")]
        for i, want in enumerate(predicted):
            chw = np.ascontiguousarray(eval_images[i].transpose(2, 0, 1)[None])
            pixels, pixels_json, encoded = (triton.InferInput("image", [1, 3, 32, 32], "UINT8"),
                                            triton.InferInput("image", [1, 3, 32, 32], "UINT8"),
                                            triton.InferInput("image", [1], "BYTES"))
            pixels.set_data_from_numpy(chw)
            pixels_json.set_data_from_numpy(chw, binary_data=False)
            encoded.set_data_from_numpy(np.array([files[i].read_bytes()], dtype=object))
            for given, outputs in ((pixels, None), (pixels_json, as_json), (encoded, None)):
                r = client.infer(model, [given], outputs=outputs)
                name = r.as_numpy("class_name")[0]
                got = (int(r.as_numpy("label")[0]), name.decode() if isinstance(name, bytes) else name,
                       r.get_response()["parameters"]["exit_name"])
                assert got == (want["label"], want["class"], want["exit"])
                assert float(r.as_numpy("confidence")[0]) == pytest.approx(want["confidence"], abs=1e-4)
                timing = r.get_response()["parameters"]
                assert timing["server_ms"] >= timing["queue_ms"] >= 0 and timing["decode_ms"] >= 0
        wrong = triton.InferInput("image", [1, 3, 31, 32], "UINT8")
        wrong.set_data_from_numpy(np.zeros((1, 3, 31, 32), np.uint8))
        with pytest.raises(InferenceServerException, match=r"shape \[1, 3, 32, 32\]"):
            client.infer(model, [wrong])
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.infer("nope", [pixels])
    finally:
        client.close()
