"""numpy arrays <-> the IDL's Tensor {shape, dtype, data}: raw C-order bytes, no copies beyond one."""
from __future__ import annotations

import math

import numpy as np

from gati.errors import InvalidInput
from gati.rpc.gen.gati_idl.ttypes import Tensor

DTYPES = ("uint8", "float32", "int64", "int32", "float64")
MAX_DIMS = 8   # no message between services needs more; numpy refuses over 64


def to_tensor(array: np.ndarray) -> Tensor:
    array = np.ascontiguousarray(array)
    if array.dtype.name not in DTYPES:
        raise InvalidInput(f"cannot send dtype {array.dtype}; supported: {', '.join(DTYPES)}")
    return Tensor(shape=list(array.shape), dtype=array.dtype.name, data=array.tobytes())


def from_tensor(t: Tensor | None, what: str = "tensor") -> np.ndarray:
    """The array a Tensor holds; InvalidInput when shape, dtype and byte count disagree."""
    if t is None:
        raise InvalidInput(f"{what} is missing")
    if t.dtype not in DTYPES:
        raise InvalidInput(f"{what} has dtype {t.dtype!r}; supported: {', '.join(DTYPES)}")
    shape = tuple(t.shape or ())
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"{what} has {len(shape)} dimensions; at most {MAX_DIMS} are accepted")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{what} has a negative dimension in shape {shape}")
    data = t.data or b""
    itemsize = np.dtype(t.dtype).itemsize
    expected = math.prod(shape) * itemsize  # Python ints: a huge shape cannot overflow into a small count
    if len(data) != expected:
        raise InvalidInput(f"{what} of shape {shape} and dtype {t.dtype} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=t.dtype).reshape(shape)
