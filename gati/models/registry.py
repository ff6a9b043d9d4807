"""The architectures GATI knows, their default cut points, and loading checkpoints into them.

Every architecture takes `in_channels` (1 or 3; the shared CIFAR models: 3, the Speech Commands VGG-16: 1). A
checkpoint is read by `checkpoint.read_state_dict` (a plain `state_dict` or one wrapped as training scripts save it)
and loaded exactly as PyTorch's `load_state_dict(strict=True)` loads it, no stricter: float16 tensors are cast to the
model's dtype, and BatchNorm fills the `num_batches_tracked` buffers that checkpoints of older PyTorch versions lack.
A checkpoint that does not fit says why and, when another known architecture (or class count) fits it exactly,
which one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gati.errors import CheckpointError, GatiError
from gati.models.checkpoint import listed, read_state_dict, sha256_file
from gati.models.resnet import RESNET_SPECS, ResNet
from gati.models.vgg import VGG, vgg_cuts

ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16")

# Keys of the final linear layer, whose first dimension gives a checkpoint's class count.
_HEAD_KEYS = ("linear.weight", "classifier.weight")
# Buffers that PyTorch's loading fills in when a checkpoint lacks them; they never tell architectures apart.
_FILLED_BY_TORCH = "num_batches_tracked"
# How many shape mismatches an error message lists.
_LIST_AT_MOST = 5


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise GatiError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")


def build_model(arch: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model of `arch` (one of ARCHS) with `num_classes` outputs and `in_channels` inputs."""
    _check_arch(arch)
    if num_classes < 1:
        raise GatiError(f"num_classes must be at least 1, got {num_classes}")
    if in_channels not in (1, 3):
        raise GatiError(f"in_channels must be 1 or 3, got {in_channels}")
    if arch == "vgg16":
        return VGG(num_classes=num_classes, in_channels=in_channels)
    return ResNet(RESNET_SPECS[arch], num_classes=num_classes, in_channels=in_channels)


def default_cuts(arch: str) -> list[str]:
    """Module paths after which a cache may sit, in forward order (ResNets: stem ReLU, then every block; VGG: every
    conv unit)."""
    _check_arch(arch)
    if arch == "vgg16":
        return vgg_cuts()
    return RESNET_SPECS[arch].cuts()


def load_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Load the checkpoint at `path` into `model` as `load_state_dict(strict=True)` would; return its SHA-256."""
    path = Path(path)
    state = read_state_dict(path)
    model_shapes, ckpt_shapes = _shapes(model.state_dict()), _shapes(state)
    shapes = _shape_mismatches(model_shapes, ckpt_shapes)
    if shapes:  # it cannot load: name every difference (but the buffers PyTorch would fill in)
        missing = [k for k in model_shapes if k not in ckpt_shapes and not k.endswith(_FILLED_BY_TORCH)]
        raise _misfit(model, path, state, _key_problems(missing, [k for k in ckpt_shapes if k not in model_shapes])
                      + shapes)
    try:
        # strict=False, then refuse exactly what strict=True refuses, so that the message can name the keys.
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not load: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise _misfit(model, path, state, _key_problems(result.missing_keys, result.unexpected_keys))
    return sha256_file(path)


def _misfit(model: nn.Module, path: Path, state: dict[str, torch.Tensor], problems: list[str]) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} does not fit the model ({_describe(model.state_dict())}): "
                           + "; ".join(problems) + _suggestion(state))


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _key_problems(missing: list[str], unexpected: list[str]) -> list[str]:
    return ([f"missing keys: {listed(missing)}"] if missing else []) + \
        ([f"unexpected keys: {listed(unexpected)}"] if unexpected else [])


def _shape_mismatches(model: dict[str, tuple[int, ...]], ckpt: dict[str, tuple[int, ...]]) -> list[str]:
    """Keys in both whose shapes differ, the head first: its shape tells the class count and the final width, the
    clearest clue to a mix-up."""
    problems = []
    for k in sorted(model, key=lambda k: k not in _HEAD_KEYS):
        if k in ckpt and model[k] != ckpt[k]:
            problems.append(f"shape mismatch for {k}: checkpoint {ckpt[k]} vs model {model[k]}")
            if len(problems) > _LIST_AT_MOST:
                problems.append("(more shape mismatches left out)")
                break
    return problems


def _same_layout(model: dict[str, tuple[int, ...]], ckpt: dict[str, tuple[int, ...]]) -> bool:
    """Same keys (apart from buffers PyTorch fills in) and the same shapes."""
    def kept(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return {k: v for k, v in shapes.items() if not k.endswith(_FILLED_BY_TORCH)}
    return kept(model) == kept(ckpt)


def _which_arch(state: dict[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """The known architecture, class count and input channels whose state dict has `state`'s keys and shapes."""
    head = next((state[k] for k in _HEAD_KEYS if k in state and state[k].dim() == 2), None)
    first_conv = next((v for v in state.values() if v.dim() == 4), None)
    if head is None or first_conv is None or int(first_conv.shape[1]) not in (1, 3):
        return None
    num_classes, in_channels = int(head.shape[0]), int(first_conv.shape[1])
    shapes = _shapes(state)
    for arch in ARCHS:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            candidate = _shapes(build_model(arch, num_classes, in_channels).state_dict())
        if _same_layout(candidate, shapes):
            return arch, num_classes, in_channels
    return None


def _describe(model_state: dict[str, torch.Tensor]) -> str:
    found = _which_arch(model_state)
    return f"{found[0]}, {found[1]} classes, {found[2]} input channels" if found else "not a known architecture"


def _suggestion(state: dict[str, torch.Tensor]) -> str:
    found = _which_arch(state)
    if not found:
        return ""
    channels = f", in_channels={found[2]}" if found[2] != 3 else ""
    return f". The checkpoint fits build_model({found[0]!r}, num_classes={found[1]}{channels})"
