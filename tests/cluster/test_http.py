"""The HTTP port every service has: health before and after the service is built, metrics, limits."""
from __future__ import annotations

import http.client
import json
import socket

import pytest
from prometheus_client import CollectorRegistry, Counter

from gati.errors import AddressInUse
from gati.rpc.http import HttpServer, Readiness


@pytest.fixture
def server():
    # Each request below opens and closes its own connection; the server frees a slot only once it has noticed a
    # close, which on a loaded machine can come after the next request: a tight bound here made these tests flaky.
    s = HttpServer("127.0.0.1", 0, "test", max_connections=32, max_body_bytes=100).start()
    yield s
    s.close()


@pytest.fixture
def two_slots():
    s = HttpServer("127.0.0.1", 0, "test", max_connections=2, max_body_bytes=100).start()
    yield s
    s.close()


def get(server: HttpServer, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_live_at_once_ready_only_once_attached(server):
    assert get(server, "/health/live") == (200, b'{"live": true}')
    status, body = get(server, "/health/ready")
    assert status == 503 and json.loads(body) == {"ready": False, "reason": "loading the bundle"}
    assert get(server, "/metrics")[0] == 503

    registry = CollectorRegistry()
    Counter("gati_things", "Things", registry=registry).inc(3)
    state = {"ready": Readiness(True, "ready")}
    server.attach(lambda: state["ready"], registry)
    assert get(server, "/health/ready") == (200, b'{"ready": true, "reason": "ready"}')
    status, text = get(server, "/metrics")
    assert status == 200 and b"gati_things_total 3.0" in text
    state["ready"] = Readiness(False, "draining")
    assert get(server, "/health/ready") == (503, b'{"ready": false, "reason": "draining"}')


def test_unknown_paths_methods_and_oversized_bodies_are_refused(server):
    assert get(server, "/nowhere")[0] == 404
    assert get(server, "/health/live", "POST", b"{}")[0] == 405
    assert get(server, "/health/live", "POST", b"x" * 101)[0] == 413


def test_connections_beyond_the_bound_are_refused_at_once_not_queued(two_slots):
    server = two_slots
    held = [http.client.HTTPConnection(server.host, server.port, timeout=5) for _ in range(2)]
    for conn in held:  # keep-alive: each open connection holds one of the two slots
        conn.request("GET", "/health/live")
        assert conn.getresponse().read() == b'{"live": true}'
    assert get(server, "/health/live")[0] == 503
    held[0].close()
    for _ in range(50):  # the slot frees once the server notices the close
        if get(server, "/health/live")[0] == 200:
            break
    else:
        pytest.fail("a closed connection never gave its slot back")
    held[1].close()


def test_a_port_in_use_is_a_typed_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(AddressInUse, match="already in use"):
            HttpServer("127.0.0.1", busy.getsockname()[1], "test")


def test_the_model_configuration_matches_the_metadata_as_perf_analyzer_reads_it(server):
    """perf_analyzer reads Triton's /config before it sends anything: batch size is part of the shapes."""
    from gati.rpc.oip import OipModel, oip_routes
    model = OipModel("m", "abc123", (3, 32, 32))
    server.mount(oip_routes(model, predict=lambda request: None, readiness=lambda: Readiness(True, "ready")))
    for path in ("/v2/models/m/config", "/v2/models/m/versions/abc123/config"):
        status, body = get(server, path)
        config = json.loads(body)
        assert status == 200 and config["name"] == "m" and config["max_batch_size"] == 0
        assert config["input"] == [{"name": "image", "data_type": "TYPE_UINT8", "dims": [1, 3, 32, 32]}]
        assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
            ("label", "TYPE_INT64", [1]), ("class_name", "TYPE_STRING", [1]), ("confidence", "TYPE_FP32", [1])]
        metadata = json.loads(get(server, path.removesuffix("/config"))[1])
        assert metadata["inputs"][0]["shape"] == config["input"][0]["dims"]
    assert get(server, "/v2/models/other/config")[0] == 404
    assert get(server, "/v2/models/m/versions/nope/config")[0] == 404
