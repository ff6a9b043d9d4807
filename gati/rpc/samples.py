"""The retrainer's door: every sample is checked whole before it is stored, or never stored.

A sample is one cut's reduced features with the full model's label and, usually, its logits (the
teacher for distillation). One malformed sample that got in (a wrong logits length, NaN features)
would make every later refit of its cut fail until newer samples pushed it out, so each is checked
here against the cut's cache and the model: the features' dtype, shape and values, the label's
range, the logits' dtype, length and values. `add_samples` is a oneway message, so a refused sample
cannot be answered; `BadSample` names what was wrong, and the retrainer counts it by `reason`
(`gati_retrainer_samples_dropped_total{reason}`) and logs it.

`SampleRing` holds a cut's most recent samples in arrays allocated once: a deque of per-sample arrays
let the retrainer's memory creep on after it was full (the allocator kept the freed pieces; the
memory soak in docs/results.md measured it).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from gati.errors import InvalidInput
from gati.rpc.gen.gati_idl.ttypes import Sample
from gati.rpc.tensors import from_tensor

REASONS = ("cut", "malformed", "dtype", "shape", "nonfinite", "label", "logits")


class BadSample(InvalidInput):
    """A sample the retrainer refuses; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CheckedSample:
    features: np.ndarray          # float32, the cut's feat_shape, finite (a copy: the message's buffer is not kept)
    label: int                    # the full model's answer, a class index
    logits: np.ndarray | None     # float32 [num_classes], finite; None: only the label was sent


def check_sample(sample: Sample, feat_shape: tuple[int, ...], num_classes: int) -> CheckedSample:
    features = _array(sample.features, "features")
    if features.dtype != np.float32:
        raise BadSample("dtype", f"features must be float32, got {features.dtype}")
    if features.shape not in (tuple(feat_shape), (1, *feat_shape)):
        raise BadSample("shape", f"features of cut {sample.cut} must be {tuple(feat_shape)} (optionally with a "
                                 f"leading 1), got {features.shape}")
    if not np.isfinite(features).all():
        raise BadSample("nonfinite", "features contain NaN or infinite values")
    if isinstance(sample.base_label, bool) or not isinstance(sample.base_label, int) \
            or not 0 <= sample.base_label < num_classes:
        raise BadSample("label", f"base label {sample.base_label!r} is not a class (0..{num_classes - 1})")
    logits = None
    if sample.base_logits is not None:
        logits = _array(sample.base_logits, "logits")
        if logits.dtype != np.float32 or logits.shape not in ((num_classes,), (1, num_classes)):
            raise BadSample("logits", f"logits must be float32 [{num_classes}], got {logits.dtype} {logits.shape}")
        if not np.isfinite(logits).all():
            raise BadSample("logits", "logits contain NaN or infinite values")
        logits = logits.reshape(num_classes).copy()
    return CheckedSample(features.reshape(feat_shape).copy(), sample.base_label, logits)


def _array(t, what: str) -> np.ndarray:
    try:
        return from_tensor(t, what)
    except InvalidInput as e:
        raise BadSample("malformed", str(e)) from e


@dataclass
class SampleArrays:
    """Samples column by column, oldest first (row i of every array is one sample)."""
    features: np.ndarray          # float32 [n, *feat_shape]
    labels: np.ndarray            # int64 [n]
    logits: np.ndarray            # float32 [n, num_classes]; rows without logits are zeros
    has_logits: np.ndarray        # bool [n]
    requests: np.ndarray          # int64 [n]: the joint sample (sampled request) it belongs to; -1: none

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, feat_shape: tuple[int, ...], num_classes: int) -> SampleArrays:
        return cls(np.zeros((0, *feat_shape), np.float32), np.zeros(0, np.int64),
                   np.zeros((0, num_classes), np.float32), np.zeros(0, bool), np.zeros(0, np.int64))


class SampleRing:
    """The most recent `capacity` samples of one cut, in arrays allocated once (the oldest is overwritten);
    thread-safe. Pages are committed as rows are first written, so an idle ring costs little."""

    def __init__(self, capacity: int, feat_shape: tuple[int, ...], num_classes: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.feat_shape, self.num_classes = capacity, tuple(feat_shape), num_classes
        self._features = np.zeros((capacity, *self.feat_shape), np.float32)
        self._labels = np.zeros(capacity, np.int64)
        self._logits = np.zeros((capacity, num_classes), np.float32)
        self._has_logits = np.zeros(capacity, bool)
        self._requests = np.full(capacity, -1, np.int64)
        self._next = 0   # the row the next sample is written to
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def append(self, s: CheckedSample, request: int = -1) -> None:
        with self._lock:
            i = self._next
            self._features[i] = s.features
            self._labels[i] = s.label
            self._has_logits[i] = s.logits is not None
            self._logits[i] = 0.0 if s.logits is None else s.logits
            self._requests[i] = request
            self._next = (i + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)

    def extend(self, saved: SampleArrays) -> None:
        """Append saved samples in order (a resumed snapshot); only the last `capacity` stay."""
        for i in range(max(0, len(saved) - self.capacity), len(saved)):
            logits = saved.logits[i] if saved.has_logits[i] else None
            self.append(CheckedSample(saved.features[i], int(saved.labels[i]), logits), int(saved.requests[i]))

    def arrays(self) -> SampleArrays:
        """A copy of the samples held, oldest first."""
        with self._lock:
            return self._rows((np.arange(self._size) + self._next - self._size) % self.capacity)

    def joint(self, after: int, upto: int | None = None) -> SampleArrays:
        """A copy of the rows of joint samples numbered in (after, upto] (`upto` None: open), in number order."""
        with self._lock:
            numbers = self._requests[:self._size]
            rows = np.flatnonzero((numbers > after) & (numbers <= (np.iinfo(np.int64).max if upto is None else upto)))
            return self._rows(rows[np.argsort(numbers[rows], kind="stable")])

    def last_request(self) -> int:
        """The highest joint sample number held; -1: none."""
        with self._lock:
            return int(self._requests[:self._size].max(initial=-1))

    def _rows(self, rows: np.ndarray) -> SampleArrays:
        return SampleArrays(self._features[rows], self._labels[rows], self._logits[rows], self._has_logits[rows],
                            self._requests[rows])


class TierVerdictRing:
    """The online tier's verdict on each recent joint sample, by its number (gati/rpc/tier.py): what a review scores
    the tier slot by. Arrays allocated once, the oldest overwritten; thread-safe. A number it does not hold reads
    as label -1, confidence 0: the tier gave no verdict, which no threshold turns into a hit."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._numbers = np.full(capacity, -1, np.int64)
        self._labels = np.full(capacity, -1, np.int64)
        self._confidence = np.zeros(capacity, np.float32)
        self._next = 0
        self._lock = threading.Lock()

    def put(self, number: int, label: int, confidence: float) -> None:
        with self._lock:
            i = self._next
            self._numbers[i], self._labels[i], self._confidence[i] = number, label, confidence
            self._next = (i + 1) % self.capacity

    def get(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64, confidences float32) for `numbers`, in their order."""
        with self._lock:
            held = {int(n): i for i, n in enumerate(self._numbers) if n >= 0}
            rows = np.array([held.get(int(n), -1) for n in numbers], np.int64)
            labels = np.where(rows >= 0, self._labels[rows], -1)
            confidence = np.where(rows >= 0, self._confidence[rows], 0.0).astype(np.float32)
        return labels.astype(np.int64), confidence

    def arrays(self) -> dict[str, np.ndarray]:
        """What a snapshot writes (`restore` reads it back)."""
        with self._lock:
            keep = self._numbers >= 0
            order = np.argsort(self._numbers[keep], kind="stable")
            return {"numbers": self._numbers[keep][order], "labels": self._labels[keep][order],
                    "confidence": self._confidence[keep][order]}

    def restore(self, saved: dict[str, np.ndarray]) -> None:
        numbers, labels, confidence = saved["numbers"], saved["labels"], saved["confidence"]
        if not len(numbers) == len(labels) == len(confidence):
            raise ValueError("a saved tier-verdict ring's arrays differ in length")
        for n, label, conf in list(zip(numbers, labels, confidence))[-self.capacity:]:
            self.put(int(n), int(label), float(conf))
