"""Server side: a threaded Thrift server that drains cleanly.

Thrift's stock Python servers cannot stop (TThreadedServer) or tie a worker thread to a client for
the connection's lifetime (TThreadPoolServer), which starves persistent connections. This one runs
one thread per connection (peers keep few, persistent connections) and stops in two steps:

    gate.close()   new calls are refused with a typed error; oneway traffic keeps flowing
    wait idle      calls in flight finish (bounded by a timeout)
    close()        the listener and every connection are shut down

A connection whose peer sends a frame over the size limit is dropped; the server keeps serving.
"""
from __future__ import annotations

import logging
import select
import signal
import socket
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from thrift.transport import TSocket, TTransport

from gati.rpc.transport import framed, protocol, tune

log = logging.getLogger("gati.rpc.server")


class Gate:
    """Counts calls in flight; once closed, `enter` raises what `refuse()` returns."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inflight = 0
        self.closed = False

    @property
    def inflight(self) -> int:
        return self._inflight

    @contextmanager
    def enter(self, refuse: Callable[[], Exception]) -> Iterator[None]:
        with self._cond:
            if self.closed:
                raise refuse()
            self._inflight += 1
        with self._counted():
            yield

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count the body in flight without refusing it (messages the cluster still needs while draining)."""
        with self._cond:
            self._inflight += 1
        with self._counted():
            yield

    @contextmanager
    def _counted(self) -> Iterator[None]:
        try:
            yield
        finally:
            with self._cond:
                self._inflight -= 1
                if self._inflight == 0:
                    self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout=timeout_s)


_after_reply = threading.local()


def after_reply(action: Callable[[], None]) -> None:
    """Run `action` once the reply to the call being handled is written (at once outside a server
    thread): work the caller does not wait for, kept off its critical path."""
    pending = getattr(_after_reply, "actions", None)
    if pending is None:
        action()
    else:
        pending.append(action)


class RpcServer:
    """Serves one Thrift processor on host:port (port 0 picks a free one; see `.port`)."""

    def __init__(self, processor: Any, host: str, port: int, max_bytes: int, name: str = "gati"):
        self.processor, self.max_bytes, self.name = processor, max_bytes, name
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(256)
        self.host, self.port = self._listener.getsockname()[:2]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._working = Gate()  # messages being processed, reply included
        self._accepting = True
        self._thread: threading.Thread | None = None

    def start(self) -> "RpcServer":
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        self._thread.start()
        return self

    def stop_accepting(self) -> None:
        """New connections are refused from now on; open ones keep working."""
        self._accepting = False
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self._listener.close()

    def close(self, grace_s: float = 2.0) -> None:
        """Stop accepting, let messages being processed finish (replies written), drop every connection."""
        if self._accepting:
            self.stop_accepting()
        self._working.wait_idle(grace_s)
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the connection thread blocked in recv()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _accept_loop(self) -> None:
        while self._accepting:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                break
            tune(sock)
            with self._lock:
                self._conns.add(sock)
            threading.Thread(target=self._serve, args=(sock,), name=f"{self.name}-conn", daemon=True).start()

    def _run_after_reply(self) -> None:
        actions, _after_reply.actions = _after_reply.actions, []
        for action in actions:
            try:
                action()
            except Exception:  # the reply is out; a failed follow-up must not drop the connection
                log.exception("%s: an after-reply action failed", self.name)

    def _serve(self, sock: socket.socket) -> None:
        tsock = TSocket.TSocket()
        tsock.setHandle(sock)
        trans = framed(tsock, self.max_bytes)
        prot = protocol(trans, self.max_bytes)
        _after_reply.actions = []
        try:
            while True:
                # Wait for a message outside the busy count, so close() knows replies are written.
                select.select([sock], [], [])
                with self._working.track():
                    self.processor.process(prot, prot)
                    self._run_after_reply()
        except TTransport.TTransportException as e:
            if e.type not in (TTransport.TTransportException.END_OF_FILE,):
                log.warning("%s: dropped a connection: %s", self.name, e)
        except (OSError, EOFError):
            pass
        except Exception:  # a malformed message: drop this peer, keep serving the others
            log.exception("%s: dropped a connection after an unexpected error", self.name)
        finally:
            with self._lock:
                self._conns.discard(sock)
            trans.close()


def wait_for_signal(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """Block the main thread until one of `signals` arrives; return it."""
    got = threading.Event()
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)
        got.set()

    for s in signals:
        signal.signal(s, handler)
    while not got.wait(0.5):  # short waits keep the main thread responsive to signals
        pass
    return received[0]
