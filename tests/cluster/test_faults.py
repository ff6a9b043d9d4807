"""Faults: predictors killed or frozen, the executor down or hung, a full queue, SIGTERM draining.

Every request completes with a right answer or a typed error; services that stay up keep serving;
a service restarted alone rejoins.
"""
from __future__ import annotations

import signal
import threading
import time

import pytest

from gati.rpc import launch
from gati.rpc.client import ping
from gati.rpc.gen.gati_idl.ttypes import (
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    Request,
    Unavailable,
)
from gati.rpc.tensors import to_tensor
from tests.cluster.conftest import start_cluster
from tests.cluster.helpers import (
    Cluster,
    Load,
    answered,
    frozen,
    stages_after_hit,
    until,
)

QUEUE, WORKERS, LOOKUP_MS = 4, 2, 300


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, cluster_bundle) -> Cluster:
    # No index service: the kNN cut searches its local FAISS index, the embedded default.
    return start_cluster(request, tmp_path_factory, cluster_bundle, index=False, retrainer=False,
                         queue_size=QUEUE, workers=WORKERS, lookup_ms=LOOKUP_MS, request_ms=3000)


def answers_match(cluster: Cluster, images, references, n: int = 40) -> bool:
    with cluster.client() as client:
        got = [client.predict_pixels(images[i]) for i in range(n)]
    return [(p.label, p.exit_name) for p in got] == list(zip(references.labels[:n], references.exits[:n]))


def test_a_killed_predictor_makes_misses_not_failures_and_rejoins_when_restarted(cluster, eval_images, references):
    with Load(cluster, eval_images, threads=2) as load:
        load.wait_for(30)
        cluster.kill("predictor-1")  # serves block1 and block2
        seen = len(load.answers)
        load.wait_for(seen + 60)
        outage = load.answers[seen + 10:]
    assert not load.errors, load.errors[:3]
    after_hit = stages_after_hit(cluster.metrics("executor"))
    assert after_hit["0.0"] == after_hit["+Inf"] > 0  # sync plan: no stage past a hit
    for idx, p in load.answers:  # right answers: the engine's, or the full model's where a cut missed
        assert (p.label, p.exit_name) == (references.labels[idx], references.exits[idx]) or \
            (p.exit_name == "final" and p.label == references.base[idx])
    assert {p.exit_name for _, p in outage} <= {"stem", "final"}
    assert any(references.exits[i] in ("block1", "block2") for i, _ in outage)
    assert cluster.status("executor").counters["lookup_failures.unreachable"] > 0

    cluster.restart("predictor-1")
    assert answers_match(cluster, eval_images, references)
    assert cluster.status("predictor-1").counters["lookups.block1.hit"] > 0


def test_a_frozen_predictor_costs_one_lookup_timeout_and_counts_as_a_miss(cluster, eval_images, references):
    with frozen(cluster, "predictor-0"), cluster.client() as client:  # serves the first cut (kNN)
        for i in range(4):
            started = time.monotonic()
            p = client.predict_pixels(eval_images[i])
            assert time.monotonic() - started < LOOKUP_MS / 1000 + 1.5
            assert p.exit_name != "stem"
            assert p.label == (references.labels[i] if p.exit_name == references.exits[i] else references.base[i])
    # A verdict late on an open connection, or a new connection whose handshake the frozen process
    # never answers (bounded by the same lookup timeout): each request pays one.
    counters = cluster.status("executor").counters
    assert counters.get("lookup_failures.timeout", 0) + counters.get("lookup_failures.unreachable", 0) >= 4
    until(lambda: answers_match(cluster, eval_images, references, n=20), timeout_s=20)  # back once thawed


def test_executor_down_or_hung_is_a_typed_error_within_the_deadline(cluster, eval_images, references):
    with frozen(cluster, "executor"), cluster.client() as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.predict_pixels(eval_images[0], deadline_ms=500)
        assert 0.45 < time.monotonic() - started < 2.0
    cluster.kill("executor")
    with cluster.client() as client:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="executor is unreachable"):
            client.predict_pixels(eval_images[0], deadline_ms=2000)
        assert time.monotonic() - started < 2.0
    cluster.restart("executor")  # alone: the aggregator and predictors were never restarted
    assert answers_match(cluster, eval_images, references)
    assert answered(cluster.status("aggregator")) > 0


def test_a_full_queue_answers_overloaded_at_once_before_decoding(cluster, eval_images):
    outcomes: list[object] = []
    lock = threading.Lock()

    def one(request: Request) -> None:
        with cluster.client() as client:
            try:
                result: object = client.predict(request)
            except (Overloaded, DeadlineExceeded, InvalidRequest) as e:
                result = e
            with lock:
                outcomes.append((time.monotonic(), result))

    def admitted() -> float:
        g = cluster.status("aggregator").gauges
        return g["queue_depth"] + g["requests_in_flight"]

    with frozen(cluster, "executor"):  # nothing completes: admitted requests wait, the rest are refused
        threads = [threading.Thread(target=one, args=(Request(tensor=to_tensor(eval_images[i]), deadline_ms=2000),))
                   for i in range(QUEUE)]
        for t in threads:
            t.start()
        until(lambda: admitted() == QUEUE, timeout_s=10)
        # Bytes that are no image: refused as Overloaded, so admission comes before any decoding.
        extra = [threading.Thread(target=one, args=(Request(image=b"not an image", deadline_ms=2000),))
                 for _ in range(3)]
        started = time.monotonic()
        for t in extra:
            t.start()
        for t in threads + extra:
            t.join(timeout=10)
    kinds = [type(r).__name__ for _, r in outcomes]
    assert kinds.count("Overloaded") == 3 and kinds.count("DeadlineExceeded") == QUEUE
    assert all(t - started < 1.5 for t, r in outcomes if isinstance(r, Overloaded))  # refused, not queued
    assert cluster.status("aggregator").counters["request_failures.Overloaded"] == 3
    with cluster.client() as client:
        assert client.predict_pixels(eval_images[0]).label >= 0  # serving again
        with pytest.raises(InvalidRequest, match="cannot be decoded"):  # with room, the same bytes are decoded
            client.predict(Request(image=b"not an image"))


def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_a_restart_rejoins(cluster, eval_images,
                                                                                   references):
    results: list[object] = []

    def in_flight(i: int) -> None:
        with cluster.client() as client:
            try:
                results.append((i, client.predict_pixels(eval_images[i], deadline_ms=8000)))
            except Exception as e:  # recorded: the test asserts there are none
                results.append((i, e))

    with frozen(cluster, "executor"):
        threads = [threading.Thread(target=in_flight, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        until(lambda: cluster.status("aggregator").gauges["requests_in_flight"] == 2)
        # its executor does not answer ping: the aggregator cannot serve, and says so
        status, body = cluster.http("aggregator", "/health/ready")
        assert status == 503 and b"waiting for executor" in body
        cluster.signal("aggregator", signal.SIGTERM)
        # While it drains, a balancer sees it not ready (HTTP and Thrift ping alike), yet alive.
        until(lambda: cluster.http("aggregator", "/health/ready") == (503, b'{"ready": false, "reason": "draining"}'),
              timeout_s=5)
        assert cluster.http("aggregator", "/health/live")[0] == 200 and not ping(*cluster.address)
        with cluster.client() as client, pytest.raises(Unavailable, match="draining"):
            client.predict_pixels(eval_images[5])
    for t in threads:
        t.join(timeout=10)
    assert sorted((i, p.label) for i, p in results) == [(0, references.labels[0]), (1, references.labels[1])]
    until(lambda: not launch.alive(cluster.procs["aggregator"].pid), timeout_s=10)  # it exits once drained
    cluster.restart("aggregator")  # the executor and predictors reconnect to the new one by themselves
    assert answers_match(cluster, eval_images, references)
