"""The learned-cache interface: reduce a cut's activation, predict (label, confidence), fit, save, load.

A cache learns the base model's answers (distillation from its logits, never ground truth). Every
variant is a fixed reducer (gati.cache.reduce) followed by a learned head that reads the reduced
features; `fit` and `predict` take reduced features, `__call__` takes the raw activation.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from gati.cache.reduce import make_reducer
from gati.errors import BundleError, GatiError, InvalidInput
from gati.reducer_names import reduced_shape

FORMAT = "gati-cache/1"
VARIANTS: dict[str, type[Cache]] = {}


@dataclass
class FitReport:
    epochs: int
    train_agreement: float  # share of fit samples where the head's label equals the teacher's argmax
    seconds: float


@dataclass(frozen=True)
class Params:
    """Hyper-parameters of a variant: a frozen dataclass whose fields are ints or floats.

    Subclasses add fields and range checks (`check`); the fields go into `Cache.config()`.
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise GatiError(f"hyper-parameter {f.name} must be an int, got {value!r}")
            if f.type in ("float", float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise GatiError(f"hyper-parameter {f.name} must be a number, got {value!r}")
                object.__setattr__(self, f.name, float(value))
        self.check()

    def check(self) -> None:
        """Raise GatiError for values out of range."""


def require(ok: bool, message: str) -> None:
    """Raise GatiError(message) unless ok: keeps the many hyper-parameter range checks one-liners."""
    if not ok:
        raise GatiError(message)


def check_batch(x: Any, shape: tuple[int, ...], what: str) -> Tensor:
    """`x` as float32 if it is a finite floating tensor of shape N x `shape`, else InvalidInput."""
    if not isinstance(x, Tensor):
        raise InvalidInput(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(shape) + 1 or x.shape[1:] != shape:
        want = " x ".join(str(d) for d in shape)
        raise InvalidInput(f"{what} must have shape N x {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InvalidInput(f"{what} must be a floating-point tensor, got {x.dtype}")
    x = x if x.dtype == torch.float32 else x.float()
    # A finite sum proves every element finite (NaN and inf propagate) and costs a fraction of
    # isfinite(x).all() at batch 1; only a non-finite sum (or an overflow) needs the full check.
    if not math.isfinite(x.sum().item()) and not bool(torch.isfinite(x).all()):
        raise InvalidInput(f"{what} contains NaN or infinite values")
    return x


def check_state(state: dict[str, Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    """GatiError unless `state` holds exactly `shapes`' float tensors of those shapes (-1: any size)."""
    if set(state) != set(shapes):
        raise GatiError(f"state holds {sorted(state)}, expected {sorted(shapes)}")
    for name, want in shapes.items():
        got = state[name]
        fits = isinstance(got, Tensor) and got.dim() == len(want)
        if not fits or any(w not in (-1, g) for w, g in zip(want, got.shape)):
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise GatiError(f"state tensor {name!r} has shape {shape}, expected {want}")


def confidence_and_label(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(label int64, confidence float32): the argmax and the max softmax probability of `logits`."""
    conf, label = torch.softmax(logits, dim=1).max(dim=1)
    return label, conf


class Cache(abc.ABC):
    """One learned cache at one cut: a fixed reducer and a learned head.

    Subclasses set `variant` (their registry name), `Params` (their hyper-parameters) and either a
    class-level `reducer_key` or override `reducer_for` when the reducer depends on the input shape.
    """

    variant: ClassVar[str]
    reducer_key: str
    Params: ClassVar[type[Params]] = Params

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "variant" in cls.__dict__:
            VARIANTS[cls.variant] = cls

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, **hparams: Any) -> None:
        self.in_shape = _check_in_shape(in_shape)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise GatiError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        try:
            self.hparams = self.Params(**hparams)
        except TypeError as exc:
            known = ", ".join(f.name for f in dataclasses.fields(self.Params)) or "none"
            raise GatiError(f"cache variant {self.variant!r}: {exc}; known hyper-parameters: {known}") from None
        self.reducer_key = self.reducer_for(self.in_shape)
        self.feat_shape: tuple[int, ...] = reduced_shape(self.reducer_key, self.in_shape)
        # Calling forward directly skips nn.Module's hook machinery on the per-request path.
        self._reduce_fn = make_reducer(self.reducer_key).forward
        self._fitted = False

    @classmethod
    def reducer_for(cls, in_shape: tuple[int, int, int]) -> str:
        """Which reducer this variant reads for activations of `in_shape` (usable before construction)."""
        return cls.reducer_key

    def reduce(self, act: Tensor) -> Tensor:
        """Apply this cache's reducer to an N x C x H x W activation."""
        if not isinstance(act, Tensor) or act.dim() != 4 or act.shape[1:] != self.in_shape:
            got = tuple(act.shape) if isinstance(act, Tensor) else type(act).__name__
            want = " x ".join(str(d) for d in self.in_shape)
            raise InvalidInput(f"activation must have shape N x {want}, got {got}")
        if not act.is_floating_point():
            raise InvalidInput(f"activation must be a floating-point tensor, got {act.dtype}")
        with torch.inference_mode():
            return self._reduce_fn(act)

    def __call__(self, act: Tensor) -> tuple[Tensor, Tensor]:
        return self.predict(self.reduce(act))

    def lookup(self, act: Tensor) -> tuple[Tensor, Tensor]:
        """`self(act)` for an activation the base model itself produced, inside inference_mode.

        The engine's hot path: no checks, so no host synchronisation (the finiteness check reads a
        value back), which makes the lookup cheap and lets a CUDA graph capture it.
        """
        return self._predict(self._reduce_fn(act))

    def with_params(self, **changes: Any) -> "Cache":
        """A copy of this fitted cache with some hyper-parameters changed and the same learned state
        (e.g. `bf16=1`: the same weights, stored in bfloat16)."""
        if not self._fitted:
            raise GatiError(f"cannot copy an unfitted {self.variant} cache")
        copy = make_cache(**{**self.config(), **changes})
        copy._load_state(self._state())
        copy._fitted = True
        return copy

    def draft(self) -> "Cache | None":
        """A new, unfitted, cheaper-to-fit cache of the same kind, or None where this one is as cheap as its variant
        gets. The build fits drafts first, plans with them, and refits at full size only the drafts the plan chose:
        a draft must rank where its variant can answer, not match its full-size answers."""
        return None

    def to(self, device: str | torch.device) -> "Cache":
        """Move the learned state to `device`, where lookups will run."""
        self._load_state({name: t.to(device) for name, t in self._state().items()})
        return self

    @property
    def graphable(self) -> bool:
        """Whether a lookup runs on the activation's device without host round trips (CUDA graphs)."""
        return True

    def fit(self, feats: Tensor, teacher_logits: Tensor, *, seed: int = 0) -> FitReport:
        """Learn the teacher's answers on reduced features; replaces any earlier fit."""
        start = time.perf_counter()
        x, teacher = self._check_fit(feats, teacher_logits)
        epochs, agreement = self._fit(x, teacher, seed)
        self._fitted = True
        return FitReport(epochs=epochs, train_agreement=agreement, seconds=time.perf_counter() - start)

    def predict(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """(labels int64 [N], confidence float32 [N] in [0, 1]) for reduced features N x feat_shape."""
        if not self._fitted:
            raise GatiError(f"{self.variant} cache is not fitted: call fit() or load_cache() first")
        x = check_batch(feats, self.feat_shape, "features")
        with torch.inference_mode():
            return self._predict(x)

    @abc.abstractmethod
    def _fit(self, feats: Tensor, teacher_logits: Tensor, seed: int) -> tuple[int, float]:
        """Fit on validated float32 data; return (epochs run, train agreement)."""

    @abc.abstractmethod
    def _predict(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """Predict on validated float32 features, already inside inference_mode."""

    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes of the learned state (parameters, buffers, index)."""

    @abc.abstractmethod
    def _state(self) -> dict[str, Tensor]:
        """The learned state as named CPU tensors (what `save` writes)."""

    @abc.abstractmethod
    def _load_state(self, state: dict[str, Tensor]) -> None:
        """Restore `_state()`'s output; raise GatiError if it does not fit this configuration."""

    def config(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "in_shape": self.in_shape,
            "num_classes": self.num_classes,
            **dataclasses.asdict(self.hparams),
        }

    def save(self, path: Path) -> None:
        if not self._fitted:
            raise GatiError(f"cannot save an unfitted {self.variant} cache to {path}")
        config = {**self.config(), "in_shape": list(self.in_shape)}
        torch.save({"format": FORMAT, "config": config, "state": self._state()}, Path(path))

    def _check_fit(self, feats: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        x = check_batch(feats, self.feat_shape, "fit features")
        t = check_batch(teacher_logits, (self.num_classes,), "teacher logits")
        if len(x) != len(t):
            raise InvalidInput(f"{len(x)} feature rows but {len(t)} teacher-logit rows")
        if len(x) < 2:
            raise InvalidInput(f"fitting needs at least 2 samples, got {len(x)}")
        # Features reduced under inference_mode cannot be saved for backward; a plain copy can.
        return (x.clone() if x.is_inference() else x), (t.clone() if t.is_inference() else t)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.hparams).items())
        return f"{type(self).__name__}(in_shape={self.in_shape}, num_classes={self.num_classes}, {hp})"


def _check_in_shape(in_shape: Any) -> tuple[int, int, int]:
    shape = tuple(in_shape) if isinstance(in_shape, (tuple, list, torch.Size)) else ()
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise GatiError(f"in_shape must be three positive ints (C, H, W), got {in_shape!r}")
    return shape  # type: ignore[return-value]


def make_cache(variant: str, in_shape: tuple[int, int, int], num_classes: int, **hparams: Any) -> Cache:
    """A new, unfitted cache of `variant` (a key of VARIANTS)."""
    if variant not in VARIANTS:
        raise GatiError(f"unknown cache variant {variant!r}; known variants: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[variant](tuple(in_shape), num_classes, **hparams)


def hparams_for(variants: list[str], settings: list[str]) -> dict[str, dict[str, int | float]]:
    """Per variant, the hyper-parameters that `settings` give: "NAME=VALUE" sets NAME in every variant of `variants`
    whose Params has it, "VARIANT.NAME=VALUE" in that variant only. A setting no variant takes is an error, so a
    typo never builds silently with the defaults."""
    out: dict[str, dict[str, int | float]] = {}
    for text in settings:
        name, sep, value = text.partition("=")
        variant, _, field = name.rpartition(".")
        if not sep or not field or not value:
            raise GatiError(f"a cache hyper-parameter is NAME=VALUE or VARIANT.NAME=VALUE, got {text!r}")
        try:
            number: int | float = int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise GatiError(f"cache hyper-parameter {name} must be a number, got {value!r}") from None
        if variant and variant not in variants:
            raise GatiError(f"{text!r}: {variant!r} is not among the variants built ({', '.join(variants)})")
        takers = [v for v in ([variant] if variant else variants) if field in _param_names(v)]
        if not takers:
            raise GatiError(f"no cache variant among {', '.join([variant] if variant else variants)} has a "
                            f"hyper-parameter {field!r}")
        for v in takers:
            out.setdefault(v, {})[field] = number
    return out


def hparams_of(variant: str, setting: str) -> dict[str, int | float]:
    """The hyper-parameters of `variant` that one comma-joined setting gives ("NAME=VALUE[,NAME=VALUE]"; "": none)."""
    return hparams_for([variant], [item for item in setting.split(",") if item]).get(variant, {})


# Caches saved before the distillation temperature was a hyper-parameter were all fitted at 2.0; a refit of one
# (online learning, the retrainer) should distil as its first fit did, not at today's default.
LEGACY_TEMPERATURE = 2.0


def _with_legacy_defaults(config: dict[str, Any]) -> dict[str, Any]:
    if "temperature" in config or "temperature" not in _param_names(config.get("variant")):
        return config
    return {**config, "temperature": LEGACY_TEMPERATURE}


def _param_names(variant: Any) -> set[str]:
    """The hyper-parameters a variant takes (none for an unknown one)."""
    return {f.name for f in dataclasses.fields(VARIANTS[variant].Params)} if variant in VARIANTS else set()


def load_cache(path: Path) -> Cache:
    """The cache `Cache.save` wrote to `path`; BundleError naming the path if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"cache file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise BundleError(f"cache file {path} is corrupt or not a GATI cache: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise BundleError(f"cache file {path} is not a {FORMAT} file")
    config, state = blob.get("config"), blob.get("state")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise BundleError(f"cache file {path} lacks its config or state")
    try:
        cache = make_cache(**_with_legacy_defaults(config))
        cache._load_state(state)
    except (GatiError, TypeError) as exc:
        raise BundleError(f"cache file {path} does not hold a valid cache: {exc}") from exc
    cache._fitted = True
    return cache
