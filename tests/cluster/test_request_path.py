"""The request path's pieces without processes: tensors, request decoding, admission, deadlines, the decision
rule (and its degraded form), the retrainer's, index's and executor's checks at their doors."""
from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from gati.errors import InvalidInput
from gati.preprocess import Preprocess
from gati.rpc.admission import Admission, deadline_s
from gati.rpc.aggregator import Pending
from gati.rpc.config import IndexConfig
from gati.rpc.gen.gati_idl.ttypes import (
    DeadlineExceeded,
    ExecutionResult,
    InvalidRequest,
    Overloaded,
    Request,
    RunRequest,
    Sample,
    Tensor,
)
from gati.rpc.index import IndexHandler
from gati.rpc.inputs import InputSpec
from gati.rpc.samples import BadSample, check_sample
from gati.rpc.tensors import from_tensor, to_tensor
from gati.runtime.cascade import Done, Step, Verdict, run_cascade

PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
SPEC = InputSpec(PRE, max_bytes=64 * 1024)
PIXELS = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def encoded(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, format=fmt, **options)
    return buf.getvalue()


def png(pixels: np.ndarray) -> bytes:
    return encoded(pixels)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height greyscale pixels and holds none: decoding it would fail, opening it not."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_tensor_round_trip_and_byte_count_check():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(from_tensor(to_tensor(a)), a)
    with pytest.raises(InvalidInput, match="needs 48 bytes, got 44"):
        from_tensor(Tensor(shape=[3, 4], dtype="float32", data=b"\0" * 44))
    with pytest.raises(InvalidInput, match="dtype 'complex64'"):
        from_tensor(Tensor(shape=[1], dtype="complex64", data=b"\0" * 8))


def test_png_pixels_and_float_inputs_decode_to_the_same_model_input():
    expected = PRE.array(PIXELS[None])
    from_png = SPEC.decode(Request(image=png(PIXELS)))
    from_pixels = SPEC.decode(Request(tensor=to_tensor(PIXELS)))
    from_float = SPEC.decode(Request(tensor=to_tensor(expected)))
    for x in (from_png, from_pixels, from_float):
        assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32 and x.flags.writeable
        assert np.array_equal(x, expected)


@pytest.mark.parametrize("request_, message", [
    (Request(), "exactly one of"),
    (Request(image=b"x", tensor=to_tensor(PIXELS)), "exactly one of"),
    (Request(image=b""), "empty"),
    (Request(image=b"\x89PNG" + b"\0" * 100), "cannot be decoded"),
    (Request(image=png(PIXELS)[:60]), "cannot be decoded"),
    (Request(image=b"\0" * (64 * 1024 + 1)), "exceeds the limit"),
    (Request(image=png_header(20000, 20000)), "too many pixels"),
    (Request(image=png_header(4097, 4096)), "4096x4097 \\(HxW\\) pixels exceeds the limit of 16777216 pixels"),
    (Request(image=b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"), "formats accepted: PNG, JPEG"),
    (Request(tensor=to_tensor(np.zeros((32, 32, 4), np.uint8))), "uint8 H x W x C"),
    (Request(tensor=to_tensor(np.zeros((4097, 4096, 1), np.uint8))), "pixel tensor of 4097x4096"),
    (Request(tensor=to_tensor(np.zeros((3, 16, 16), np.float32))), r"float32 C x H x W = \(3, 32, 32\)"),
    (Request(tensor=to_tensor(np.zeros((2, 32, 32, 3), np.uint8))), "batch size must be 1"),
    (Request(tensor=to_tensor(np.zeros((0, 32, 3), np.uint8))), "empty"),
    (Request(tensor=to_tensor(np.zeros((32, 32, 3), np.int64))), "dtype must be uint8"),
    (Request(tensor=to_tensor(np.full((3, 32, 32), np.nan, np.float32))), "NaN"),
    (Request(tensor=Tensor(shape=[32, 32, 3], dtype="uint8", data=b"\0" * 10)), "needs 3072 bytes"),
])
def test_bad_requests_are_invalid_input_with_a_message(request_, message):
    with pytest.raises(InvalidInput, match=message):
        SPEC.decode(request_)


LOSSLESS = {"PNG": {}, "BMP": {}, "TIFF": {}, "WEBP": {"lossless": True}}


@pytest.mark.parametrize("fmt", sorted(LOSSLESS))
@pytest.mark.parametrize("size", [(32, 32), (75, 50), (17, 23)])
def test_images_of_any_size_and_common_format_are_resized_as_the_manifest_says(fmt, size):
    pixels = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    x = SPEC.decode(Request(image=encoded(pixels, fmt, **LOSSLESS[fmt])))
    assert x.shape == (1, 3, 32, 32)
    assert np.array_equal(x, PRE.array(pixels[None]))
    assert np.array_equal(SPEC.decode(Request(tensor=to_tensor(pixels))), x)


def test_lossy_and_palette_formats_and_greyscale_images_decode():
    smooth = np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], 40, axis=0).repeat(3, axis=2)
    for data in (encoded(smooth, "JPEG", quality=95), encoded(smooth, "GIF")):
        x = SPEC.decode(Request(image=data))
        assert x.shape == (1, 3, 32, 32) and np.abs(x - PRE.array(smooth[None])).max() < 0.2  # 0.2: 13 of 255 levels
    grey = smooth[..., :1]
    assert np.array_equal(SPEC.decode(Request(image=encoded(grey))), PRE.array(np.repeat(grey, 3, axis=2)[None]))


def test_a_greyscale_model_takes_colour_images_converted_as_pil_does():
    pre = Preprocess((0.3325,), (0.1969,), (98, 40))
    spec = InputSpec(pre, max_bytes=64 * 1024)
    colour = np.random.default_rng(2).integers(0, 256, (60, 30, 3), dtype=np.uint8)
    luma = np.asarray(Image.fromarray(colour).convert("L"))[None, ..., None]
    for request in (Request(image=encoded(colour)), Request(tensor=to_tensor(colour))):
        x = spec.decode(request)
        assert x.shape == (1, 1, 98, 40) and np.array_equal(x, pre.array(luma))
    exact = pre.array(luma)[0]
    assert np.array_equal(spec.decode(Request(tensor=to_tensor(exact))), pre.array(luma))
    with pytest.raises(InvalidInput, match=r"float32 C x H x W = \(1, 98, 40\)"):
        spec.decode(Request(tensor=to_tensor(np.zeros((3, 98, 40), np.float32))))


def test_the_declared_size_is_refused_before_any_pixel_is_decoded():
    small = InputSpec(PRE, max_bytes=64 * 1024, max_pixels=32 * 32)
    small.decode(Request(image=png(PIXELS)))
    # The header alone declares one pixel too many; the file holds no pixel data, so decoding would fail otherwise.
    with pytest.raises(InvalidInput, match="32x33 \\(HxW\\) pixels exceeds the limit of 1024"):
        small.decode(Request(image=png_header(33, 32)))
    with pytest.raises(InvalidInput, match="cannot be decoded"):
        small.decode(Request(image=png_header(32, 32)))


def test_admission_refuses_beyond_capacity_and_times_out_waiting_for_a_worker():
    depths: list[int] = []
    adm = Admission(capacity=2, workers=1, on_depth=depths.append)
    release = threading.Event()

    def hold() -> None:
        with adm.slot(time.monotonic() + 5):
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    while adm.running == 0:
        time.sleep(0.001)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):  # admitted (1 waiting), but no worker frees up in time
        with adm.slot(time.monotonic() + 0.05):
            pass
    assert 0.04 < time.monotonic() - started < 1.0
    waiter = threading.Thread(target=hold)
    waiter.start()
    while adm.admitted < 2:
        time.sleep(0.001)
    with pytest.raises(Overloaded, match="queue_size 2"):  # full: refused at once, never queued
        with adm.slot(time.monotonic() + 5):
            pass
    release.set()
    holder.join()
    waiter.join()
    assert (adm.admitted, adm.running) == (0, 0) and max(depths) == 1 and depths[-1] == 0


CUT_NAMES = {0: "a", 2: "b", 5: "c"}


def pending() -> Pending:
    return Pending(7, False, CUT_NAMES)


def test_the_executors_answer_names_its_cut_or_final():
    p = pending()
    p.answer(ExecutionResult(request_id=7, label=4, confidence=0.9, exit_cut=2, stages_run=3))
    assert p.done.is_set() and (p.outcome.exit_cut, p.outcome.exit_name, p.outcome.label) == (2, "b", 4)
    q = pending()
    q.answer(ExecutionResult(request_id=7, label=6, confidence=0.7, exit_cut=-1, stages_run=8))
    assert (q.outcome.exit_cut, q.outcome.exit_name, q.outcome.stages_run) == (-1, "final", 8)


def test_only_the_first_answer_counts():
    p = pending()
    p.answer(ExecutionResult(request_id=7, label=4, confidence=0.9, exit_cut=2, stages_run=3))
    p.answer(ExecutionResult(request_id=7, label=1, confidence=0.9, exit_cut=0, stages_run=1))
    assert (p.outcome.exit_cut, p.outcome.label) == (2, 4)


def test_an_executor_error_or_cancel_becomes_the_request_error():
    p = pending()
    p.answer(ExecutionResult(request_id=7, error="executor is draining"))
    assert p.done.is_set() and p.outcome is None and p.error == "executor is draining"
    q = pending()
    q.answer(ExecutionResult(request_id=7, cancelled=True, error=""))
    assert q.outcome is None and "stopped" in q.error


# ---- issue 14: bounds and typed errors on every input -------------------------------------------

@pytest.mark.parametrize("tensor, message", [
    # 2^64 bytes: an int64 count wraps to 0 and would match the empty data (then reshape failed, untyped)
    (Tensor(shape=[65536] * 4, dtype="uint8", data=b""), f"needs {2 ** 64} bytes, got 0"),
    (Tensor(shape=[1] * 9, dtype="uint8", data=b"\0"), "9 dimensions"),
    (Tensor(shape=[-1, 4], dtype="uint8", data=b""), "negative dimension"),
    (Tensor(shape=[4], dtype="object", data=b"\0" * 4), "dtype 'object'"),
])
def test_tensors_whose_shape_cannot_be_held_are_invalid_input(tensor, message):
    with pytest.raises(InvalidInput, match=message):
        from_tensor(tensor)
    with pytest.raises(InvalidInput):  # and the front door says the same about such a request
        SPEC.decode(Request(tensor=tensor))


def test_a_clients_deadline_is_capped_and_a_missing_one_is_the_default():
    assert deadline_s(2 ** 31 - 1, 5000, 30000) == 30.0   # ~24.8 days asked: 30 s given
    assert deadline_s(200, 5000, 30000) == 0.2
    assert deadline_s(None, 5000, 30000) == deadline_s(0, 5000, 30000) == deadline_s(-5, 5000, 30000) == 5.0


def _steps(n: int) -> list[Step]:
    return [Step(lambda x: x, k + 1, k if k < n else None, f"cut{k}" if k < n else "") for k in range(n + 1)]


class _Verdicts:
    """Cut k answers `plan[k]`: a Verdict, or None (its predictor gave none)."""
    def __init__(self, plan: dict[int, Verdict | None]):
        self.plan, self.asked = plan, []

    def ask(self, cut, x):
        self.asked.append(cut)
        return Done(self.plan[cut])


@pytest.mark.parametrize("lookahead", [0, 1])
def test_after_a_missing_verdict_the_full_model_answers_and_the_answer_says_so(lookahead):
    hit = Verdict(2, label=5, confidence=0.99, hit=True)
    source = _Verdicts({0: Verdict(0, 1, 0.1, False), 1: None, 2: hit, 3: hit})
    trace = run_cascade(torch.tensor([0]), _steps(4), source, lookahead, lambda x: (3, 0.6))
    # the hit at cut 2 was certified for requests cut 1 missed, not for the ones it would have taken
    assert trace.answer.exit_cut is None and trace.answer.label == 3 and trace.answer.missing == (1,)
    assert source.asked == [0, 1, 2][:2 + lookahead]  # no cut asked once a verdict is known missing
    # a hit before the missing cut answers as the certified cascade does, not degraded
    early = run_cascade(torch.tensor([0]), _steps(4), _Verdicts({0: hit, 1: None}), 0, lambda x: (3, 0.6))
    assert early.answer.exit_cut == 2 and early.answer.missing == ()


def test_samples_are_checked_whole_at_the_retrainers_door():
    feats, logits = np.ones((1, 8), np.float32), np.zeros(4, np.float32)

    def sample(features=feats, label=2, base_logits=logits) -> Sample:
        return Sample(cut=1, features=to_tensor(features), base_label=label,
                      base_logits=None if base_logits is None else to_tensor(base_logits))

    ok = check_sample(sample(), (8,), 4)
    assert ok.features.shape == (8,) and ok.label == 2 and ok.logits.shape == (4,)
    assert check_sample(sample(base_logits=None), (8,), 4).logits is None
    bad = {
        "dtype": sample(features=feats.astype(np.float64)),
        "shape": sample(features=np.ones((2, 4), np.float32)),
        "nonfinite": sample(features=np.full((8,), np.nan, np.float32)),
        "label": sample(label=4),
        "logits": sample(base_logits=np.zeros(5, np.float32)),
    }
    for reason, s in bad.items():
        with pytest.raises(BadSample) as e:
            check_sample(s, (8,), 4)
        assert e.value.reason == reason
    with pytest.raises(BadSample, match="NaN") as e:
        check_sample(sample(base_logits=np.full(4, np.inf, np.float32)), (8,), 4)
    assert e.value.reason == "logits"
    broken = Sample(cut=1, features=Tensor(shape=[8], dtype="float32", data=b"\0"), base_label=0)
    with pytest.raises(BadSample, match="needs 32 bytes") as e:
        check_sample(broken, (8,), 4)
    assert e.value.reason == "malformed"


def test_the_index_refuses_what_passes_its_bounds_and_keeps_nothing_of_it():
    index = IndexHandler(bounds=IndexConfig("127.0.0.1", 0, max_keys=2, max_vectors=10, max_dim=16))

    def vectors(n: int, d: int = 8):
        return to_tensor(np.ones((n, d), np.float32)), to_tensor(np.zeros(n, np.int64))

    index.add("a@v0", *vectors(6))
    for key, args, bound in (("a@v0", vectors(5), "max_vectors"), ("b@v0", vectors(1, d=17), "max_dim")):
        with pytest.raises(InvalidRequest, match=bound):
            index.add(key, *args)
    index.add("b@v0", *vectors(10))
    with pytest.raises(InvalidRequest, match="max_keys 2"):
        index.add("c@v0", *vectors(1))
    assert (index.size("a@v0"), index.size("b@v0"), index.size("c@v0")) == (6, 10, 0)
    refused = index.metrics.refused
    assert [refused.labels(b)._value.get() for b in ("max_vectors", "max_dim", "max_keys")] == [1, 1, 1]
    index.reset("a@v0")  # room for another key
    index.add("c@v0", *vectors(1))


def test_the_executor_refuses_a_wrong_input_or_a_full_queue_before_queueing(cluster_bundle):
    from gati.bundle import load_bundle
    from gati.rpc.executor import ExecutorHandler, aggregator_pool
    from gati.rpc.transport import Limits
    bundle = load_bundle(cluster_bundle)
    shape = (1, *bundle.info.manifest.input_shape)
    # No worker takes jobs (workers=0), so the one queued stays: the next finds the queue full.
    handler = ExecutorHandler(bundle, {}, aggregator_pool("127.0.0.1", 1, Limits()), 0.1, workers=0, queue_size=1)

    def run(x: np.ndarray) -> None:
        handler.run(RunRequest(request_id=1, input=to_tensor(x), sampled=False, deadline_unix=time.time() + 5))

    for x, message in ((np.zeros((1, 3, 16, 16), np.float32), r"float32 \(1, 3, 32, 32\)"),
                       (np.zeros(shape, np.float64), "float64"),
                       (np.full(shape, np.nan, np.float32), "NaN")):
        with pytest.raises(InvalidRequest, match=message):
            run(x)
    run(np.zeros(shape, np.float32))
    with pytest.raises(Overloaded, match="queue is full"):
        run(np.zeros(shape, np.float32))
