"""Checkpoints as training scripts save them: each layout, made from a model, and what loading it logs."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def older_torch(state: dict) -> dict:
    """A state dict as PyTorch < 0.4.1 saved it, or after a prefix was stripped by hand: no BatchNorm
    `num_batches_tracked`, and no `_metadata` (a new dict)."""
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


# name: (what the file holds, made from the model; what the log says was unwrapped, in order)
LAYOUTS: dict[str, tuple[Callable[[nn.Module], object], list[str]]] = {
    "plain": (lambda m: m.state_dict(), []),
    "state_dict beside metadata": (
        lambda m: {"epoch": 9, "best_acc": 91.5, "arch": "net", "state_dict": m.state_dict(),
                   "optimizer": torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9).state_dict()},
        ["under 'state_dict' (beside it: epoch, best_acc, arch, optimizer)"]),
    "model": (lambda m: {"model": m.state_dict(), "epoch": 9}, ["under 'model'"]),
    "model_state_dict": (lambda m: {"model_state_dict": m.state_dict(), "optimizer_state_dict": {}, "loss": 0.3},
                         ["under 'model_state_dict'"]),
    "DataParallel under state_dict": (lambda m: {"state_dict": nn.DataParallel(m).state_dict(), "epoch": 9},
                                      ["under 'state_dict'", "stripped the prefix 'module.'"]),
    "DataParallel, older torch": (lambda m: {f"module.{k}": v for k, v in older_torch(m.state_dict()).items()},
                                  ["stripped the prefix 'module.'"]),
    "stripped by hand, older torch": (lambda m: older_torch(m.state_dict()), []),
    "torch.compile inside DataParallel": (lambda m: {f"module._orig_mod.{k}": v for k, v in m.state_dict().items()},
                                          ["stripped the prefix 'module.'", "stripped the prefix '_orig_mod.'"]),
}


def assert_same_weights(loaded: nn.Module, source: nn.Module) -> None:
    """Equal tensors, but for the `num_batches_tracked` counters that PyTorch fills with 0 when a file lacks them."""
    for (k, mine), theirs in zip(loaded.state_dict().items(), source.state_dict().values()):
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(mine.cpu(), theirs.cpu()), k
