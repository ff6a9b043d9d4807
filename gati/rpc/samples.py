"""The retrainer's door: every sample is checked whole before it is stored, or never stored.

A sample is one cut's reduced features with the full model's label and, usually, its logits (the
teacher for distillation). One malformed sample that got in (a wrong logits length, NaN features)
would make every later refit of its cut fail until newer samples pushed it out, so each is checked
here against the cut's cache and the model: the features' dtype, shape and values, the label's
range, the logits' dtype, length and values. `add_samples` is a oneway message, so a refused sample
cannot be answered; `BadSample` names what was wrong, and the retrainer counts it by `reason`
(`gati_retrainer_samples_dropped_total{reason}`) and logs it.
"""
from __future__ import annotations

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
