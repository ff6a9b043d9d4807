"""The cluster attacked as an outsider and an insider would (issue 14): forged callbacks through the
front door, management calls without the secret, floods of idle connections, oversized frames."""
from __future__ import annotations

import resource
import socket
import threading
import time
from pathlib import Path

import pytest

from gati.bundle import cache_file
from gati.cache import load_cache
from gati.rpc.cachefile import cache_to_bytes
from gati.rpc.gen.gati_idl import Aggregator, Predictor
from gati.rpc.gen.gati_idl.ttypes import (
    CacheUpdate,
    ExecutionResult,
    InvalidRequest,
    Request,
    ShadowResult,
)
from gati.rpc.transport import Limits, PeerUnavailable, Pool
from tests.cluster.conftest import start_cluster
from tests.cluster.helpers import Cluster, closed_by_peer, frame, message, until

IDLE_CONNECTIONS = 5000
CAP = 1024   # connections.max_open's default


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, cluster_bundle) -> Cluster:
    return start_cluster(request, tmp_path_factory, cluster_bundle, index=False, retrainer=False, lookup_ms=2000)


def answers(cluster: Cluster, images, n: int) -> list[tuple[int, str]]:
    with cluster.client() as client:
        return [(p.label, p.exit_name) for p in (client.predict_pixels(images[i]) for i in range(n))]


def forge(address: tuple[str, int], method: str, *args) -> bool:
    """Send one forged callback on a connection of its own; True when the server closed it unanswered."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(frame(message(Aggregator.Client, method, *args)))
        return closed_by_peer(sock, 2.0)


def test_forged_callbacks_through_the_front_door_change_no_answer(cluster, eval_images, references):
    forged: list[bool] = []
    stop = threading.Event()

    def attack() -> None:  # the attack of the issue: every reply reveals an id; forge the next 48
        with cluster.client() as probe:
            while not stop.is_set():
                seen = probe.predict_pixels(eval_images[0]).request_id
                for rid in range(seen + 1, seen + 49, 4):
                    forged.append(forge(cluster.address, "finished", ExecutionResult(
                        request_id=rid, label=1, confidence=1.0, exit_cut=0, stages_run=1)))
                    forged.append(forge(cluster.address, "shadowed", ShadowResult(request_id=rid, base_label=1,
                                                                                 samples=[])))

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        got = answers(cluster, eval_images, 60)
    finally:
        stop.set()
        attacker.join(30)
    assert got == list(zip(references.labels[:60], references.exits[:60]))  # 0 answers changed
    assert forged and all(forged)  # every forged callback: connection closed, nothing processed
    assert cluster.status("aggregator").counters["rpc_connection_events.public.refused_method"] == len(forged)
    # The callback port itself wants the secret.
    callbacks = cluster.cfg.aggregator.callbacks
    assert forge((callbacks.host, callbacks.port), "finished", ExecutionResult(
        request_id=1, label=1, confidence=1.0, exit_cut=0, stages_run=1))
    assert cluster.status("aggregator").counters["rpc_connection_events.internal.auth_failed"] == 1


def test_request_ids_are_unguessable(cluster, eval_images):
    with cluster.client() as client:
        ids = [client.predict_pixels(eval_images[i]).request_id for i in range(20)]
    assert len(set(ids)) == 20 and all(0 <= i < 2 ** 63 for i in ids)
    # No counter: consecutive ids are far apart (a random pair is this close with chance 2^-30).
    assert min(abs(b - a) for a, b in zip(ids, ids[1:])) > 2 ** 32


def test_a_deploy_without_the_secret_is_refused(cluster, cluster_bundle: Path):
    p = cluster.cfg.predictor("predictor-1")  # serves block1 (cut 1, linear)
    blob = cache_to_bytes(load_cache(cluster_bundle / cache_file(1, "linear")))
    lockout = CacheUpdate(cut=1, version=2 ** 31 - 1, blob=blob)  # would lock the retrainer out for good
    with pytest.raises(PeerUnavailable):
        Pool(Predictor.Client, p.host, p.port, Limits()).call("deploy", lockout)
    s = cluster.status("predictor-1")
    assert s.gauges["cache_version.block1"] == 0.0 and "cache_deploys.block1" not in s.counters
    assert s.counters["rpc_connection_events.internal.auth_failed"] == 1
    # With the secret the call reaches the handler (which refuses a version it already serves).
    with pytest.raises(InvalidRequest, match="already serves version 0"):
        Pool(Predictor.Client, p.host, p.port, Limits(secret=cluster.secret)).call(
            "deploy", CacheUpdate(cut=1, version=0, blob=blob))


def descriptors_for(n: int) -> int:
    """Raise this process's soft descriptor limit toward n + headroom; how many connections it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 512
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return min(n, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 512)


def test_thousands_of_idle_connections_leave_predict_answering(cluster, eval_images, references):
    n = descriptors_for(IDLE_CONNECTIONS)
    if n <= CAP:
        pytest.skip(f"this process may open only {n} connections, not more than the server's cap")
    accepted = cluster.status("aggregator").counters.get("rpc_connection_events.public.accepted", 0)
    idle = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(cluster.address)  # completes in the kernel; nothing is ever sent
            idle.append(s)
        until(lambda: cluster.status("aggregator").counters["rpc_connection_events.public.accepted"] >= accepted + n, timeout_s=30)
        with cluster.client(timeout_s=5) as client:
            for i in range(10):
                started = time.monotonic()
                p = client.predict_pixels(eval_images[i])
                assert time.monotonic() - started < cluster.cfg.timeouts.request_ms / 1000
                assert (p.label, p.exit_name) == (references.labels[i], references.exits[i])
        s = cluster.status("aggregator")
        counters = s.counters
        assert s.gauges["rpc_connections_peak.public"] <= CAP
        assert counters["rpc_connection_events.public.evicted"] >= n - CAP  # the longest idle made room for newcomers
    finally:
        for s in idle:
            s.close()
    assert answers(cluster, eval_images, 5) == list(zip(references.labels[:5], references.exits[:5]))


def peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def test_16mb_frames_to_predict_are_refused_before_they_are_read(cluster, eval_images, references):
    pid = cluster.procs["aggregator"].pid
    before = peak_rss_kb(pid)
    size = 16 * 1024 * 1024
    head = message(Aggregator.Client, "predict", Request(image=b"\0" * 1024))[:64]  # a predict's first bytes
    sent: list[int] = []

    def send_16mb() -> None:
        with socket.create_connection(cluster.address, timeout=5) as sock:
            total = 0
            try:
                sock.sendall(frame(head, declared=size))
                chunk = bytes(64 * 1024)
                while total < size:
                    total += sock.send(chunk)
            except OSError:  # reset by the server: it stopped reading
                pass
            sent.append(total)

    threads = [threading.Thread(target=send_16mb) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(sent) == 4 and all(total < size for total in sent)  # cut off before the whole frame went out
    assert peak_rss_kb(pid) - before < 8 * 1024  # the aggregator's memory peak did not move by a frame
    assert cluster.status("aggregator").counters["rpc_connection_events.public.too_large"] == 4
    assert answers(cluster, eval_images, 5) == list(zip(references.labels[:5], references.exits[:5]))
