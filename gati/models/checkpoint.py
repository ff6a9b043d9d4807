"""Reading a checkpoint file into a state dict, in the layouts that training scripts commonly save.

Accepted: a plain `state_dict` (`torch.save(model.state_dict(), path)`), or a dict holding one under `state_dict`,
`model_state_dict` or `model` beside training metadata (epoch, optimiser state, ...); keys may carry the prefix of a
wrapper (`module.` from DataParallel / DistributedDataParallel, `_orig_mod.` from torch.compile). What was unwrapped
is logged at INFO. Files are read with `weights_only=True`: a checkpoint that pickles whole objects (a model, an
argparse Namespace) is refused rather than executed.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from gati.errors import CheckpointError

log = logging.getLogger("gati.models.checkpoint")

# Where training scripts put the model's state dict inside a bigger checkpoint, in the order they are tried.
STATE_DICT_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model")
# Prefixes that wrappers add to every key.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
# How many names a message lists.
_LIST_AT_MOST = 5


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks so large checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model's state dict in the checkpoint at `path`, unwrapped (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, RuntimeError) for a bad file
        raise CheckpointError(f"cannot read checkpoint {path} (read with weights_only=True: tensors, numbers, "
                              f"strings and containers only): {exc}") from exc
    state = _find_state_dict(loaded, path)
    _strip_wrapper_prefixes(state, path)
    return state


def listed(names: list[str]) -> str:
    """At most a few names, then how many more."""
    more = len(names) - _LIST_AT_MOST
    return ", ".join(names[:_LIST_AT_MOST]) + (f" (+{more} more)" if more > 0 else "")


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and len(value) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _find_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if _is_state_dict(loaded):
        return loaded
    if isinstance(loaded, dict):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(loaded.get(key)):
                beside = [str(k) for k in loaded if k != key]
                log.info("checkpoint %s: using the state dict under %r (beside it: %s)", path, key,
                         listed(beside) or "nothing")
                return loaded[key]
    found = sorted(map(str, loaded))[:_LIST_AT_MOST] if isinstance(loaded, dict) else type(loaded).__name__
    raise CheckpointError(f"checkpoint {path} holds no state_dict of tensors (found {found}); expected "
                          "torch.save(model.state_dict(), path), or a dict holding that state_dict under "
                          + " or ".join(repr(k) for k in STATE_DICT_KEYS))


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor], path: Path) -> None:
    """Remove wrapper prefixes that every key carries (repeatedly: `module._orig_mod.`), in place.

    PyTorch's own `consume_prefix_in_state_dict_if_present` does it, so the state dict's `_metadata` (which tells
    `load_state_dict` which version of each module saved it) is renamed along with the keys.
    """
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return
        consume_prefix_in_state_dict_if_present(state, prefix)
        log.info("checkpoint %s: stripped the prefix %r from all %d keys", path, prefix, len(state))
