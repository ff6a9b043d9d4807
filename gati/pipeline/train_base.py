"""`gati train-base`: train a base classifier for users who bring none.

The recipe of the shared checkpoints (SGD with Nesterov momentum, one-cycle learning rate, label
smoothing 0.1, random crop with 4-pixel reflect padding and horizontal flips), on the GPU when
there is one. On a CPU it first prints an estimate from timing a few images and, before a long run, asks.
The checkpoint is a plain float32 state_dict in the layout `gati build --arch` loads.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gati.data import load_split, preprocess_for
from gati.errors import GatiError
from gati.models import build_model

LONG_CPU_RUN_S = 15 * 60
# Images per timed pass of the estimate: a full batch of a deep model (ResNet-152: about 80 MB of activations per
# 32x32 image kept for the backward pass) would need more memory than the run itself should be allowed to find out.
PROBE_IMAGES = 8


@dataclass
class TrainConfig:
    arch: str
    dataset: str
    data_dir: Path
    out: Path
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.1
    train_limit: int | None = None
    device: str = "cpu"
    seed: int = 0
    yes: bool = False


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel reflect-padded crops and horizontal flips, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def train_base(cfg: TrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = load_split(cfg.dataset, cfg.data_dir, "train", limit=cfg.train_limit, seed=cfg.seed)
    pre = preprocess_for(cfg.dataset, cfg.data_dir)
    x_all, y_all = pre(data.images), torch.as_tensor(data.labels)
    model = build_model(cfg.arch, len(data.classes), pre.channels).to(cfg.device)
    steps_per_epoch = max(1, len(data) // cfg.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    step = _make_step(model, opt, sched, cfg.device)
    _confirm_duration(cfg, model, x_all, y_all, gen, steps_per_epoch)
    started, loss, first = time.time(), float("nan"), None
    model.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(data), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for b in bar:
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss = step(augment(x_all[idx], gen), y_all[idx])
            first = loss if first is None else first
            bar.set_postfix(loss=f"{loss:.3f}")
    _save(model, cfg.out)
    return {"out": str(cfg.out), "epochs": cfg.epochs, "images": len(data), "first_loss": first, "final_loss": loss,
            "seconds": round(time.time() - started, 1), "device": cfg.device}


def _make_step(model, opt, sched, device):
    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = F.cross_entropy(model(x.to(device)), y.to(device), label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return float(loss.detach())
    return step


def _confirm_duration(cfg, model, x_all, y_all, gen, steps_per_epoch) -> None:
    """Time forward/backward passes of a few images (no optimiser step) and extrapolate; ask before a long CPU run."""
    if cfg.device != "cpu":
        return
    n = min(cfg.batch_size, PROBE_IMAGES)

    def one_pass() -> None:
        idx = torch.randint(0, len(x_all), (n,), generator=gen)
        F.cross_entropy(model(augment(x_all[idx], gen)), y_all[idx]).backward()

    one_pass()  # the first pass pays for allocations the others reuse
    start = time.time()
    for _ in range(2):
        one_pass()
    model.zero_grad(set_to_none=True)
    estimate = (time.time() - start) / (2 * n) * cfg.batch_size * steps_per_epoch * cfg.epochs
    print(f"estimated CPU training time: {estimate / 60:.1f} min ({cfg.epochs} epochs x {steps_per_epoch} batches "
          f"of {cfg.batch_size}, from timing {n} images; a GPU takes minutes)", file=sys.stderr)
    if estimate > LONG_CPU_RUN_S and not cfg.yes:
        if not sys.stdin.isatty() or input("continue? [y/N] ").strip().lower() != "y":
            raise GatiError("long CPU training run not confirmed (pass --yes, or use a GPU)")


def _save(model: torch.nn.Module, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
             for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, out)


