"""The Open Inference Protocol (KServe v2, the HTTP protocol Triton speaks) on the aggregator's HTTP port.

    GET  /v2                                        server metadata
    GET  /v2/health/live, /v2/health/ready          as /health/live and /health/ready
    GET  /v2/models/<name>[/versions/<v>]           model metadata
    GET  /v2/models/<name>[/versions/<v>]/ready     200 when ready, 503 when not
    GET  /v2/models/<name>[/versions/<v>]/config    Triton's model configuration (what perf_analyzer reads)
    POST /v2/models/<name>[/versions/<v>]/infer     one image in, its answer out

An infer request carries one input, `image`, batch size 1:
    UINT8 [1, C, H, W]   raw pixels (the server preprocesses them, as for `gati predict`)
    FP32  [1, C, H, W]   already normalised with the bundle's mean and std
    BYTES [1]            one encoded image (PNG, JPEG): GATI's extension
as JSON (`data`) or with the binary tensor extension (`parameters.binary_data_size` and the
`Inference-Header-Content-Length` header). The answer has three outputs, `label` INT64 [1],
`class_name` BYTES [1] and `confidence` FP32 [1], each in JSON or binary as asked (an output's
`parameters.binary_data`, or the request's `parameters.binary_data_output`), and the response's
`parameters` carry the exit (`exit_cut`, `exit_name`), `stages_run`, `request_id`, `degraded` (and,
when true, `missing_cuts`) and the server's timing (`server_ms` and its breakdown). The request's
`parameters.timeout` (microseconds, as in Triton) becomes its deadline.

Each request is translated into the Thrift `Request` and answered by the aggregator's `predict`:
the same decoding, admission, metrics and answer as `gati predict`.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gati import __version__
from gati.rpc.gen.gati_idl.ttypes import (
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    Prediction,
    Request,
    Unavailable,
)
from gati.rpc.http import HttpRequest, HttpResponse, Readiness, Route
from gati.rpc.tensors import to_tensor
from gati.rpc.timing import TIMING_FIELDS

INPUT = "image"
OUTPUTS = {"label": "INT64", "class_name": "BYTES", "confidence": "FP32"}  # name -> datatype, each [1]
HEADER_LENGTH = "inference-header-content-length"
DTYPES = {"UINT8": np.dtype(np.uint8), "FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
# A reply's typed error -> the HTTP status a client sees.
STATUS = {InvalidRequest: 400, Overloaded: 429, Unavailable: 503, DeadlineExceeded: 504}


class BadRequest(Exception):
    """The HTTP request does not follow the protocol (400, with this message)."""


@dataclass(frozen=True)
class OipModel:
    """What model metadata reports: the bundle served, under a configured or the bundle's name."""
    name: str
    version: str                      # the bundle's manifest hash, shortened
    input_shape: tuple[int, int, int]  # C x H x W

    def metadata(self) -> dict:
        return {"name": self.name, "versions": [self.version], "platform": "gati",
                "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [1, *self.input_shape]}],
                "outputs": [{"name": name, "datatype": datatype, "shape": [1]} for name, datatype in OUTPUTS.items()]}

    def config(self) -> dict:
        """Triton's model configuration extension, in its JSON form: `max_batch_size` 0 says the shapes are
        sent whole (batch size 1 is part of them), the tensors as the metadata gives them."""
        def tensor(name: str, datatype: str, shape: list[int]) -> dict:
            return {"name": name, "data_type": f"TYPE_{'STRING' if datatype == 'BYTES' else datatype}",
                    "dims": shape}
        return {"name": self.name, "platform": "gati", "backend": "gati", "max_batch_size": 0,
                "input": [tensor(INPUT, "UINT8", [1, *self.input_shape])],
                "output": [tensor(name, datatype, [1]) for name, datatype in OUTPUTS.items()]}


def oip_routes(model: OipModel, predict: Callable[[Request], Prediction],
               readiness: Callable[[], Readiness]) -> list[Route]:
    """The protocol's routes for one model, answered by `predict` (the aggregator's)."""
    base = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"

    def ready_status() -> int:
        return 200 if readiness().ready else 503

    def known(match: re.Match[str]) -> HttpResponse | None:
        if match["name"] != model.name:
            return HttpResponse.error(404, f"unknown model {match['name']!r}; this server serves {model.name!r}")
        if match["version"] not in (None, model.version):
            return HttpResponse.error(404, f"model {model.name} has version {model.version}, not {match['version']}")
        return None

    def with_model(handle: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest, re.Match[str]],
                                                                               HttpResponse]:
        return lambda request, match: known(match) or handle(request)

    return [
        Route("GET", "/v2", lambda r, m: HttpResponse.json(200, {"name": "gati", "version": __version__,
                                                                "extensions": ["binary_tensor_data"]})),
        Route("GET", "/v2/health/live", lambda r, m: HttpResponse(200)),
        Route("GET", "/v2/health/ready", lambda r, m: HttpResponse(ready_status())),
        Route("GET", base, with_model(lambda r: HttpResponse.json(200, model.metadata()))),
        Route("GET", base + "/ready", with_model(lambda r: HttpResponse(ready_status()))),
        Route("GET", base + "/config", with_model(lambda r: HttpResponse.json(200, model.config()))),
        Route("POST", base + "/infer", with_model(lambda r: infer(model, predict, r))),
    ]


def infer(model: OipModel, predict: Callable[[Request], Prediction], request: HttpRequest) -> HttpResponse:
    try:
        header, binary = _split_body(request)
        thrift_request = _to_request(header, binary, model.input_shape)
        wanted = _outputs_wanted(header)
    except BadRequest as e:
        return HttpResponse.error(400, str(e))
    try:
        prediction = predict(thrift_request)
    except tuple(STATUS) as e:
        return HttpResponse.error(STATUS[type(e)], f"{type(e).__name__}: {e.message}")
    return _response(model, header.get("id"), prediction, wanted)


# ---- request ----------------------------------------------------------------------------------

def _split_body(request: HttpRequest) -> tuple[dict, bytes]:
    """The JSON header and the binary section that follows it (empty without the extension)."""
    body = request.body
    length = request.headers.get(HEADER_LENGTH)
    if length is not None:
        if not length.isdigit() or int(length) > len(body):
            raise BadRequest(f"{HEADER_LENGTH} {length!r} does not fit a body of {len(body)} bytes")
        body, binary = body[:int(length)], body[int(length):]
    else:
        binary = b""
    try:
        header = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise BadRequest("the request must be a JSON object")
    return header, binary


def _to_request(header: dict, binary: bytes, chw: tuple[int, int, int]) -> Request:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"send exactly one input, {INPUT!r} (batch size is 1)")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise BadRequest(f"the input is named {INPUT!r}, got {tensor.get('name')!r}")
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"input shape must be a list of sizes, got {shape!r}")
    deadline_ms = _deadline_ms(header.get("parameters") or {})
    raw = _binary_part(tensor, binary)
    if datatype == "BYTES":
        return Request(image=_one_encoded_image(tensor, raw, shape), deadline_ms=deadline_ms)
    if datatype not in ("UINT8", "FP32"):
        raise BadRequest(f"input datatype must be UINT8 (pixels), FP32 (normalised) or BYTES (an encoded "
                         f"image), got {datatype!r}")
    if tuple(shape) not in ((1, *chw), chw):
        raise BadRequest(f"a {datatype} image has shape [1, {', '.join(map(str, chw))}], got {shape}")
    array = _array(tensor, raw, DTYPES[datatype], shape)
    if datatype == "UINT8":  # Thrift's pixel tensors are H x W x C
        return Request(tensor=to_tensor(np.ascontiguousarray(array.reshape(chw).transpose(1, 2, 0))),
                       deadline_ms=deadline_ms)
    return Request(tensor=to_tensor(np.ascontiguousarray(array.reshape(1, *chw))), deadline_ms=deadline_ms)


def _binary_part(tensor: dict, binary: bytes) -> bytes | None:
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or size < 0 or size > len(binary):
        raise BadRequest(f"binary_data_size {size!r} does not fit the {len(binary)} binary bytes sent")
    return binary[:size]


def _array(tensor: dict, raw: bytes | None, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    count = int(np.prod(shape))
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise BadRequest(f"{len(raw)} binary bytes do not hold {count} {tensor['datatype']} values")
        return np.frombuffer(raw, dtype)
    try:
        array = np.asarray(tensor.get("data"), dtype=dtype).reshape(-1)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"input data is not a list of {tensor['datatype']} values: {e}") from e
    if array.size != count:
        raise BadRequest(f"input data holds {array.size} values, shape {shape} needs {count}")
    return array


def _one_encoded_image(tensor: dict, raw: bytes | None, shape: list[int]) -> bytes:
    if shape not in ([1], [1, 1]):
        raise BadRequest(f"a BYTES input holds one encoded image: shape [1], got {shape}")
    if raw is None:
        raise BadRequest("send an encoded image with the binary tensor extension (binary_data_size)")
    if len(raw) < 4 or struct.unpack("<I", raw[:4])[0] != len(raw) - 4:
        raise BadRequest("a BYTES element is a 4-byte little-endian length followed by that many bytes")
    return raw[4:]


def _deadline_ms(parameters: dict) -> int | None:
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return None
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us <= 0:
        raise BadRequest(f"parameters.timeout is in microseconds, a positive integer; got {timeout_us!r}")
    return max(1, timeout_us // 1000)


def _outputs_wanted(header: dict) -> dict[str, bool]:
    """Output name -> sent as binary?"""
    default = bool((header.get("parameters") or {}).get("binary_data_output", False))
    outputs = header.get("outputs")
    if outputs is None:
        return {name: default for name in OUTPUTS}
    if not isinstance(outputs, list):
        raise BadRequest(f"outputs must be a list, got {outputs!r}")
    wanted = {}
    for o in outputs:
        if not isinstance(o, dict) or o.get("name") not in OUTPUTS:
            raise BadRequest(f"outputs are {', '.join(OUTPUTS)}; got {o!r}")
        wanted[o["name"]] = bool((o.get("parameters") or {}).get("binary_data", default))
    return wanted


# ---- response ---------------------------------------------------------------------------------

def _response(model: OipModel, request_id: Any, p: Prediction, wanted: dict[str, bool]) -> HttpResponse:
    values = {"label": [p.label], "class_name": [p.class_name], "confidence": [p.confidence]}
    outputs, blobs = [], []
    for name, binary in wanted.items():
        datatype, data = OUTPUTS[name], values[name]
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [1]}
        if binary:
            blob = _encode(datatype, data)
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = data
        outputs.append(out)
    parameters = {"exit_cut": p.exit_cut, "exit_name": p.exit_name, "stages_run": p.stages_run,
                  "request_id": p.request_id, "degraded": bool(p.degraded)}
    if p.missing_cuts:  # parameters are scalars: the cuts whose verdict was missing, comma-separated
        parameters["missing_cuts"] = ",".join(p.missing_cuts)
    parameters.update({k: getattr(p, k) for k in TIMING_FIELDS if getattr(p, k) is not None})
    reply = {"model_name": model.name, "model_version": model.version, "outputs": outputs,
             "parameters": parameters}
    if request_id is not None:
        reply["id"] = request_id
    header = json.dumps(reply).encode()
    if not blobs:
        return HttpResponse(200, header)
    return HttpResponse(200, header + b"".join(blobs), "application/octet-stream",
                        {"Inference-Header-Content-Length": str(len(header))})


def _encode(datatype: str, data: list) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in data)
    return np.asarray(data, DTYPES[datatype]).tobytes()
