"""Every service's HTTP port, beside its Thrift port: health probes and Prometheus metrics.

    GET /health/live    200 while the process runs
    GET /health/ready   200 when it should be sent work; 503 with the reason while the bundle
                        loads, while a peer it needs does not answer, and while it drains (SIGTERM)
    GET /metrics        the service's Prometheus registry (text format; OpenMetrics on request)

More routes can be mounted (the aggregator mounts the Open Inference Protocol, gati/rpc/oip.py).

The server is the standard library's, on a thread of its own, bounded: at most `max_connections`
connections are served at once (each holds a thread while it is open, HTTP/1.1 keeps them open);
one more is answered 503 and closed at once, never queued. A connection idle for `idle_s` is
closed, and a body over `max_body_bytes` is refused (413) unread.
"""
from __future__ import annotations

import errno
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from gati.errors import AddressInUse, GatiError

log = logging.getLogger("gati.rpc.http")


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str                       # "ready", or why not


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str                         # without the query string
    headers: dict[str, str]           # names in lower case
    body: bytes


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: Any) -> "HttpResponse":
        return cls(status, json.dumps(value).encode())

    @classmethod
    def error(cls, status: int, message: str) -> "HttpResponse":
        return cls.json(status, {"error": message})


# A route's handler gets the request and its path's match (named groups are the path's parameters).
Handler = Callable[[HttpRequest, "re.Match[str]"], HttpResponse]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str                      # a regular expression the whole path must match
    handle: Handler


class HttpServer:
    """One service's HTTP port. Until `attach` is called the service is live but not ready
    ("loading the bundle"), and /metrics answers 503."""

    def __init__(self, host: str, port: int, name: str = "gati", max_connections: int = 32,
                 max_body_bytes: int = 8 * 1024 * 1024, idle_s: float = 30.0):
        self.name, self.max_body_bytes = name, max_body_bytes
        self._readiness: Callable[[], Readiness] = lambda: Readiness(False, "loading the bundle")
        self._registry: CollectorRegistry | None = None
        self._routes: list[tuple[re.Pattern[str], Route]] = []
        self.mount([Route("GET", "/health/live", lambda r, m: HttpResponse.json(200, {"live": True})),
                    Route("GET", "/health/ready", lambda r, m: self._ready()),
                    Route("GET", "/metrics", lambda r, m: self._metrics(r))])
        handler = type("Handler", (_Handler,), {"server_app": self, "timeout": idle_s})
        try:
            self._server = _BoundedServer((host, port), handler, max_connections)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise AddressInUse(f"{name}: HTTP port {host}:{port} is already in use (another gati serve? "
                                   f"`make status-local` lists what runs)") from e
            raise GatiError(f"{name}: cannot listen on {host}:{port} for HTTP: {e}") from e
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    def attach(self, readiness: Callable[[], Readiness], registry: CollectorRegistry) -> None:
        """The service is built: report its readiness and metrics from now on."""
        self._readiness, self._registry = readiness, registry

    def mount(self, routes: list[Route]) -> None:
        self._routes += [(re.compile(r.pattern), r) for r in routes]

    def readiness(self) -> Readiness:
        return self._readiness()

    def start(self) -> "HttpServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"{self.name}-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=2)
            self._thread = None
        self._server.server_close()

    def dispatch(self, request: HttpRequest) -> HttpResponse:
        allowed = []
        for pattern, route in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            try:
                return route.handle(request, match)
            except Exception:  # a bug must not kill the connection thread silently
                log.exception("%s: %s %s failed", self.name, request.method, request.path)
                return HttpResponse.error(500, "internal error (see the service's log)")
        if allowed:
            return HttpResponse(405, json.dumps({"error": f"{request.method} not allowed"}).encode(),
                                headers={"Allow": ", ".join(sorted(set(allowed)))})
        return HttpResponse.error(404, f"no route for {request.path}")

    def _ready(self) -> HttpResponse:
        r = self._readiness()
        return HttpResponse.json(200 if r.ready else 503, {"ready": r.ready, "reason": r.reason})

    def _metrics(self, request: HttpRequest) -> HttpResponse:
        if self._registry is None:
            return HttpResponse(503, b"loading the bundle\n", "text/plain; charset=utf-8")
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return HttpResponse(200, encode(self._registry), content_type)


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True             # an open keep-alive connection never blocks shutdown
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int):
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:  # refused at once: a client retries elsewhere instead of waiting in a queue
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive: clients such as tritonclient reuse connections
    # Headers and body leave in two writes: with Nagle's algorithm the body waits for the client to
    # acknowledge the headers, which a client delaying its ACKs holds back ~40 ms (perf_analyzer saw 56 ms).
    disable_nagle_algorithm = True
    server_app: HttpServer

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = headers.get("content-length", "0")
        if not length.isdigit():
            return self._send(HttpResponse.error(400, "Content-Length must be a number"), close=True)
        if int(length) > self.server_app.max_body_bytes:
            return self._send(HttpResponse.error(413, f"body of {length} bytes exceeds the limit of "
                                                      f"{self.server_app.max_body_bytes}"), close=True)
        if headers.get("transfer-encoding", "identity") != "identity":
            return self._send(HttpResponse.error(411, "send a Content-Length (chunked bodies are not read)"),
                              close=True)
        body = self.rfile.read(int(length))
        request = HttpRequest(method, urlsplit(self.path).path, headers, body)
        self._send(self.server_app.dispatch(request))

    def _send(self, response: HttpResponse, close: bool = False) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for k, v in response.headers.items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s: " + format, self.server_app.name, *args)
