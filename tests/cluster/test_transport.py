"""Thrift transport and server in one process: limits, reconnects, typed errors, delay injection, drain."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gati.rpc import surface
from gati.rpc.auth import Secret
from gati.rpc.client import ping
from gati.rpc.gen.gati_idl import NeighborIndex
from gati.rpc.gen.gati_idl.ttypes import InvalidRequest, Unavailable
from gati.rpc.index import IndexHandler, RemoteIndex
from gati.rpc.server import Gate, RpcServer
from gati.rpc.tensors import to_tensor
from gati.rpc.transport import Limits, PeerUnavailable, Pool

SMALL = 256 * 1024
SECRET = Secret.generate()


def serve_index(port: int = 0, max_bytes: int = SMALL) -> tuple[IndexHandler, RpcServer]:
    handler = IndexHandler()
    return handler, RpcServer(NeighborIndex.Processor(handler), "127.0.0.1", port,
                              surface.internal("index", max_bytes), secret=SECRET, name="index").start()


def signed(**limits) -> Limits:
    """Client limits holding the test deployment's secret, as every internal caller's do."""
    return Limits(secret=SECRET, **limits)


@pytest.fixture
def index():
    handler, server = serve_index()
    yield handler, server
    server.close()


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_remote_index_adds_searches_and_exports(index):
    handler, server = index
    remote = RemoteIndex(Pool(NeighborIndex.Client, "127.0.0.1", server.port, signed()), "cut@v0")
    x, labels = unit_rows(50, 8), np.arange(50, dtype=np.int64) % 5
    remote.add(x, labels)
    sims, found = remote.search(x[:3], 4)
    assert sims.shape == found.shape == (3, 4)
    assert np.array_equal(found[:, 0], labels[:3]) and np.allclose(sims[:, 0], 1.0, atol=1e-5)
    vectors, stored = remote.export()
    assert np.allclose(vectors, x) and np.array_equal(stored, labels)
    assert handler.status().counters["index_searches"] == 1 and ping("127.0.0.1", server.port, secret=SECRET)


def test_declared_errors_are_typed_and_keep_the_connection(index):
    _, server = index
    pool = Pool(NeighborIndex.Client, "127.0.0.1", server.port, signed())
    with pytest.raises(InvalidRequest, match="no index named 'missing'"):
        pool.call("search", "missing", to_tensor(unit_rows(1, 8)), 3)
    with pytest.raises(InvalidRequest, match="NaN"):
        pool.call("add", "k", to_tensor(np.full((2, 8), np.nan, np.float32)), to_tensor(np.zeros(2, np.int64)))
    assert len(pool._idle) == 1 and pool.call("size", "k") == 0


def test_an_oversized_frame_drops_that_connection_only(index):
    _, server = index
    big = Pool(NeighborIndex.Client, "127.0.0.1", server.port, signed(max_bytes=8 * SMALL))
    with pytest.raises(PeerUnavailable):
        big.call("add", "k", to_tensor(unit_rows(20000, 8)), to_tensor(np.zeros(20000, np.int64)))
    assert big.call("ping") is True  # the server kept serving; the pool reconnected


def test_a_restarted_peer_is_reached_again_on_the_same_pool():
    handler, server = serve_index()
    port = server.port
    pool = Pool(NeighborIndex.Client, "127.0.0.1", port, signed(connect_s=0.5))
    pool.call("reset", "k")
    pool.send("ping")  # a oneway-style send on a pooled connection
    server.close()
    with pytest.raises(PeerUnavailable, match="cannot connect"):
        pool.call("ping")
    assert not ping("127.0.0.1", port, 0.2, SECRET)
    _, server = serve_index(port)
    try:
        assert pool.call("ping") is True
    finally:
        server.close()


def test_a_started_call_is_read_later_once_and_a_late_reply_is_a_failure(index):
    handler, server = index
    pool = Pool(NeighborIndex.Client, "127.0.0.1", server.port, signed())
    pool.call("add", "k", to_tensor(unit_rows(4, 8)), to_tensor(np.zeros(4, np.int64)))
    call = pool.start("size", "k")  # the request is out; the caller works on meanwhile
    assert call.result(timeout_s=2.0) == 4
    with pytest.raises(PeerUnavailable, match="already read"):
        call.result(timeout_s=2.0)
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    late = Pool(NeighborIndex.Client, "127.0.0.1", silent.getsockname()[1], Limits()).start("size", "k")
    with pytest.raises(PeerUnavailable):
        late.result(timeout_s=0.05)
    silent.close()


def test_hop_delay_is_injected_before_each_message(index):
    _, server = index
    pool = Pool(NeighborIndex.Client, "127.0.0.1", server.port, signed(hop_delay_s=0.02))
    pool.call("ping")
    started = time.perf_counter()
    pool.call("ping")
    assert time.perf_counter() - started >= 0.04  # the request and the reply each pay one hop


def test_client_timeout_bounds_a_call_to_a_silent_peer():
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections, never answers
    pool = Pool(NeighborIndex.Client, "127.0.0.1", silent.getsockname()[1], Limits(call_s=0.2))
    started = time.monotonic()
    with pytest.raises(PeerUnavailable, match="timed out|timeout"):
        pool.call("ping")
    assert time.monotonic() - started < 1.0
    silent.close()


def test_gate_refuses_new_calls_once_closed_and_waits_for_those_in_flight():
    gate = Gate()
    inside, leave = threading.Event(), threading.Event()

    def call() -> None:
        with gate.enter(lambda: Unavailable("draining")):
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=call)
    t.start()
    inside.wait(5)
    gate.close()
    with pytest.raises(Unavailable):
        with gate.enter(lambda: Unavailable("draining")):
            pass
    with gate.track():  # traffic the cluster still needs is counted, not refused
        assert gate.inflight == 2
    assert not gate.wait_idle(0.05)
    leave.set()
    assert gate.wait_idle(5)
    t.join()
