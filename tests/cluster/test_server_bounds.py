"""The server's bounds and its authentication, in process: connection cap, idle and partial-frame
deadlines, frames refused from their header, the buffer budget, signed sessions, running out of
descriptors (in a child process with a low RLIMIT_NOFILE)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gati.rpc import auth, surface
from gati.rpc.auth import AuthError, Secret, create_secret
from gati.rpc.client import ping
from gati.rpc.config import ConnectionLimits
from gati.rpc.gen.gati_idl import NeighborIndex
from gati.rpc.index import IndexHandler
from gati.rpc.server import RpcServer
from gati.rpc.tensors import to_tensor
from gati.rpc.transport import Limits, PeerUnavailable, Pool
from tests.cluster.helpers import closed_by_peer, frame, handshake, message, until

SECRET = Secret.generate()
DATA = 256 * 1024
REPO = Path(__file__).resolve().parents[2]


class HeldIndex(IndexHandler):
    """The index, with `add` held until the test lets it go: calls that keep their frames in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def add(self, key: str, vectors, labels) -> None:
        self.entered.set()
        self.release.wait(5)
        super().add(key, vectors, labels)


def serve(limits: ConnectionLimits = ConnectionLimits(), handler: IndexHandler | None = None) -> RpcServer:
    return RpcServer(NeighborIndex.Processor(handler or IndexHandler()), "127.0.0.1", 0,
                     surface.internal("index", DATA), limits, SECRET, name="index").start()


@pytest.fixture
def servers():
    started: list[RpcServer] = []
    yield lambda *a, **k: started.append(serve(*a, **k)) or started[-1]
    for s in started:
        s.close()


def connect(server: RpcServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=5)


def signed_add(session: auth.Session, rows: int) -> bytes:
    """A signed `add` frame of `rows` 8-d vectors."""
    x = np.zeros((rows, 8), np.float32)
    payload = message(NeighborIndex.Client, "add", "k", to_tensor(x), to_tensor(np.zeros(rows, np.int64)))
    return frame(payload + session.seal(payload))


def test_at_the_cap_the_longest_idle_connection_makes_room(servers):
    server = servers(ConnectionLimits(max_open=8))
    idle = [connect(server) for _ in range(20)]
    until(lambda: server.events.get("internal", "accepted") == 20, timeout_s=5)
    assert server.open_connections <= 8 and server.events.get("internal", "evicted") == 12
    assert all(closed_by_peer(s, 1.0) for s in idle[:12])  # the oldest went first
    assert ping(server.host, server.port, 2.0, SECRET)     # a newcomer gets in
    assert server.events.peak("internal") <= 8
    for s in idle:
        s.close()
    assert ping(server.host, server.port, 2.0, SECRET)


def test_idle_connections_and_slow_senders_are_closed(servers):
    server = servers(ConnectionLimits(idle_s=0.4, read_s=0.4))
    silent = connect(server)
    slow_hello = connect(server)
    slow_hello.sendall(auth.hello().data[:5])                 # a handshake that never completes
    slow_frame = connect(server)
    session = handshake(slow_frame, SECRET)
    slow_frame.sendall(signed_add(session, 100)[:300])         # a frame that never completes
    started = time.monotonic()
    assert all(closed_by_peer(s, 2.0) for s in (silent, slow_hello, slow_frame))
    assert time.monotonic() - started < 1.5
    assert server.events.get("internal", "idle") == 1 and server.events.get("internal", "slow") == 2


def test_a_frame_over_its_methods_limit_is_refused_from_its_header(servers):
    server = servers()
    sock = connect(server)
    handshake(sock, SECRET)
    head = message(NeighborIndex.Client, "add", "k", to_tensor(np.zeros((1, 8), np.float32)),
                   to_tensor(np.zeros(1, np.int64)))[:40]
    sock.sendall(frame(head, declared=16 * 1024 * 1024 + auth.TAG))  # announces 16 MB, sends 40 bytes
    assert closed_by_peer(sock, 1.0)  # not waiting for the body: refused on the header alone
    assert server.events.get("internal", "too_large") == 1
    ctl = connect(server)
    handshake(ctl, SECRET)
    ctl.sendall(frame(message(NeighborIndex.Client, "reset", "k" * 20000), declared=None))  # a 20 kB "control" call
    assert closed_by_peer(ctl, 1.0) and server.events.get("internal", "too_large") == 2
    assert ping(server.host, server.port, 2.0, SECRET)


def test_frames_over_the_buffer_budget_wait_for_room_and_are_then_served(servers):
    handler = HeldIndex()
    server = servers(ConnectionLimits(buffer_mb=0.15), handler)  # room for one 100 kB frame at a time
    a, b = connect(server), connect(server)
    frame_a, frame_b = signed_add(handshake(a, SECRET), 2500), signed_add(handshake(b, SECRET), 2500)
    a.sendall(frame_a)
    assert handler.entered.wait(5)  # the first frame is with the handler, its bytes still held
    b.sendall(frame_b)
    until(lambda: server.events.get("internal", "waited_for_buffer") == 1)  # the second waits, unread
    handler.release.set()
    until(lambda: handler.status().counters.get("index_vectors_added", 0) == 5000, timeout_s=5)  # then both are served


def test_calls_without_the_secret_or_with_a_bad_tag_never_reach_the_handler(servers):
    handler = IndexHandler()
    server = servers(handler=handler)
    signed = Pool(NeighborIndex.Client, server.host, server.port, Limits(secret=SECRET))
    signed.call("add", "k", to_tensor(np.zeros((3, 8), np.float32)), to_tensor(np.zeros(3, np.int64)))
    unsigned = Pool(NeighborIndex.Client, server.host, server.port, Limits())
    with pytest.raises(PeerUnavailable):
        unsigned.call("reset", "k")
    with pytest.raises(PeerUnavailable, match="cannot authenticate"):  # it sees the server's proof fail, and leaves
        Pool(NeighborIndex.Client, server.host, server.port, Limits(secret=Secret.generate())).call("reset", "k")
    forger = connect(server)
    sent = auth.hello()
    forger.sendall(sent.data)
    forger.recv(auth.CHALLENGE_SIZE)
    forger.sendall(b"\0" * auth.PROOF_SIZE)  # a proof made without the secret
    assert closed_by_peer(forger, 1.0)
    tampered = connect(server)
    session = handshake(tampered, SECRET)
    good = signed_add(session, 3)
    tampered.sendall(good[:-1] + bytes([good[-1] ^ 1]))  # one bit of the tag flipped
    assert closed_by_peer(tampered, 1.0)
    assert server.events.get("internal", "auth_failed") == 3  # unsigned, forged proof, bad tag
    assert signed.call("size", "k") == 3 and handler.status().counters.get("index_vectors_added", 0) == 3  # no reset, no add got through


def test_a_recorded_session_cannot_be_replayed(servers):
    handler = IndexHandler()
    server = servers(handler=handler)
    first = connect(server)
    session = handshake(first, SECRET)
    recorded = signed_add(session, 3)
    first.sendall(recorded)
    until(lambda: handler.status().counters.get("index_vectors_added", 0) == 3)
    first.sendall(recorded)  # the same frame again on its own connection: the frame counter moved on
    assert closed_by_peer(first, 1.0)
    other = connect(server)
    handshake(other, SECRET)
    other.sendall(recorded)  # on a new connection: another session key
    assert closed_by_peer(other, 1.0)
    assert handler.status().counters.get("index_vectors_added", 0) == 3 and server.events.get("internal", "auth_failed") == 2


def test_secret_files_are_created_private_and_refused_when_readable_by_others(tmp_path):
    path = tmp_path / "deploy" / "secret"
    assert create_secret(path) and not create_secret(path)  # never overwritten
    assert os.stat(path).st_mode & 0o777 == 0o600 and len(path.read_text().strip()) == 64
    Secret.load(path)
    assert repr(Secret.load(path)) == "Secret(<hidden>)"
    os.chmod(path, 0o644)
    with pytest.raises(AuthError, match="chmod 600"):
        Secret.load(path)
    with pytest.raises(AuthError, match="does not exist"):
        Secret.load(tmp_path / "none")


CHILD = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
from gati.rpc import surface
from gati.rpc.auth import Secret
from gati.rpc.gen.gati_idl import Service
from gati.rpc.metrics import ServiceMetrics
from gati.rpc.server import RpcServer
from gati.rpc.service import ServiceBase
server = RpcServer(Service.Processor(ServiceBase(ServiceMetrics("service", "emfile"))), "127.0.0.1", 0, surface.internal("index", 1 << 20),
                   secret=Secret.load(sys.argv[1]), name="emfile").start()
hog = []
try:
    while True:
        hog.append(open(os.devnull))
except OSError:
    pass
for f in hog[-6:]:
    f.close()  # six descriptors left: a few connections fit, then accept() fails
print(server.port, flush=True)
sys.stdin.read()
server.close()
"""


def test_a_server_out_of_descriptors_logs_makes_room_and_keeps_accepting(tmp_path):
    create_secret(tmp_path / "secret")
    secret = Secret.load(tmp_path / "secret")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "secret")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        port = int(child.stdout.readline())
        flood = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(30)]
        time.sleep(0.3)  # the server accepts what it can, then runs out of descriptors
        assert ping("127.0.0.1", port, 8.0, secret)
        for s in flood:
            s.close()
        started = time.monotonic()
        assert ping("127.0.0.1", port, 2.0, secret) and time.monotonic() - started < 1.0
        assert child.poll() is None
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    log = child.stderr.read()
    assert "Too many open files" in log and "descriptor limit 128" in log
    assert log.count("Too many open files") <= 2  # logged at most once per 10 s, not per failed accept
