"""The architectures GATI knows, their default cut points, and loading checkpoints into them.

A checkpoint is a plain `state_dict` (as `torch.save(model.state_dict(), path)` writes it); float16 tensors are cast
to the model's dtype. Loading is strict, and a checkpoint that does not fit says why and, when another known
architecture (or class count) fits it exactly, which one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from gati.errors import CheckpointError, GatiError
from gati.models.resnet import RESNET_SPECS, ResNet
from gati.models.vgg import VGG, vgg_cuts

ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16")

# Keys of the final linear layer, whose first dimension gives a checkpoint's class count.
_HEAD_KEYS = ("linear.weight", "classifier.weight")
# How many names an error message lists before it says "(+N more)".
_LIST_AT_MOST = 5


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise GatiError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")


def build_model(arch: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model of `arch` (one of ARCHS) with `num_classes` outputs."""
    _check_arch(arch)
    if num_classes < 1:
        raise GatiError(f"num_classes must be at least 1, got {num_classes}")
    if arch == "vgg16":
        return VGG(num_classes=num_classes)
    return ResNet(RESNET_SPECS[arch], num_classes=num_classes)


def default_cuts(arch: str) -> list[str]:
    """Module paths after which a cache may sit, in forward order (ResNets: stem ReLU, then every block)."""
    _check_arch(arch)
    if arch == "vgg16":
        return vgg_cuts()
    return RESNET_SPECS[arch].cuts()


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks so large checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Load the plain state_dict at `path` into `model` (strict); return the file's SHA-256 hex digest."""
    path = Path(path)
    state = _read_state_dict(path)
    problems = _mismatches(_shapes(model.state_dict()), _shapes(state))
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit the model ({_describe(model.state_dict())}): "
                              + "; ".join(problems) + _suggestion(state))
    target = model.state_dict()
    cast = {k: v.to(target[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(cast, strict=True)
    return sha256_file(path)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, RuntimeError) for a bad file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(state)[:_LIST_AT_MOST] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} is not a plain state_dict of tensors (found {found}); "
                              "save it with torch.save(model.state_dict(), path)")
    return state


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _listed(names: list[str]) -> str:
    more = len(names) - _LIST_AT_MOST
    return ", ".join(names[:_LIST_AT_MOST]) + (f" (+{more} more)" if more > 0 else "")


def _mismatches(model: dict[str, tuple[int, ...]], ckpt: dict[str, tuple[int, ...]]) -> list[str]:
    """Human-readable differences between a model's and a checkpoint's keys and shapes; empty when they fit."""
    problems = []
    missing = [k for k in model if k not in ckpt]
    unexpected = [k for k in ckpt if k not in model]
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    # The head comes first: its shape tells the class count and the final width, the clearest clue to a mix-up.
    for k in sorted(model, key=lambda k: k not in _HEAD_KEYS):
        if k in ckpt and model[k] != ckpt[k]:
            problems.append(f"shape mismatch for {k}: checkpoint {ckpt[k]} vs model {model[k]}")
            if len(problems) > _LIST_AT_MOST:
                problems.append("(more shape mismatches left out)")
                break
    return problems


def _which_arch(state: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """The known architecture and class count whose state-dict keys and shapes equal `state`'s, if any."""
    head = next((state[k] for k in _HEAD_KEYS if k in state and state[k].dim() == 2), None)
    if head is None:
        return None
    num_classes = int(head.shape[0])
    shapes = _shapes(state)
    for arch in ARCHS:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            candidate = _shapes(build_model(arch, num_classes).state_dict())
        if not _mismatches(candidate, shapes):
            return arch, num_classes
    return None


def _describe(model_state: dict[str, torch.Tensor]) -> str:
    found = _which_arch(model_state)
    return f"{found[0]}, {found[1]} classes" if found else "not a known architecture"


def _suggestion(state: dict[str, torch.Tensor]) -> str:
    found = _which_arch(state)
    return f". The checkpoint fits build_model({found[0]!r}, num_classes={found[1]})" if found else ""
