"""The distillation loop shared by the learned heads: fit a small module to the base model's logits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gati.cache.base import Params, require

# Rows per forward pass when scoring a fitted head (its train agreement). A conv head's intermediate maps are large,
# and small batches keep them in the CPU's caches: faster than 4,096 rows at 64, 128 and 256 output channels
# (docs/results/build-time/head-costs.txt).
EVAL_BATCH = 256


@dataclass(frozen=True)
class HeadParams(Params):
    """Hyper-parameters every distilled head shares (saved in the cache's config)."""

    # 15 epochs fit a 512-d head on 10,000 samples in a few seconds on one core and converge on
    # CIFAR ResNet cut features; more mostly overfits the distillation set.
    epochs: int = 15
    lr: float = 1e-2
    weight_decay: float = 1e-4
    # 1: keep the fitted weights in bfloat16. Half the memory, and on a CPU a lookup after a stage
    # mostly waits for its weights from DRAM (fp32 4096x256: 157 us cold, bf16: 97 us here). Fitting
    # stays float32; calibration scores the bf16 head, so thresholds hold for what is served.
    bf16: int = 0
    # the distillation loss (`distillation_loss`): softening of both logits, and the weight of the hard term. At 1
    # instead of 2, the plans certified over random re-splits of the calibration images were 7-9% faster for
    # ResNet-18 and 1-2% for ResNet-50 (docs/results.md, "Distilling at temperature 1")
    temperature: float = 1.0
    hard_weight: float = 0.5

    def check(self) -> None:
        require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        require(self.hard_weight >= 0, f"hard_weight must be >= 0, got {self.hard_weight}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(self.bf16 in (0, 1), f"bf16 must be 0 or 1, got {self.bf16}")


@dataclass(frozen=True)
class DistillSettings:
    epochs: int
    lr: float
    weight_decay: float
    temperature: float
    hard_weight: float  # weight of cross-entropy on the teacher's argmax
    batch_size: int = 256

    @classmethod
    def of(cls, params: HeadParams) -> DistillSettings:
        return cls(epochs=params.epochs, lr=params.lr, weight_decay=params.weight_decay,
                   temperature=params.temperature, hard_weight=params.hard_weight)


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float, hard_weight: float) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) + hard_weight * CE(student, argmax teacher)."""
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student, teacher.argmax(dim=1))
    return temperature**2 * soft + hard_weight * hard


def agreement(model: nn.Module, inputs: Tensor, labels: Tensor, batch: int = EVAL_BATCH) -> float:
    """Share of `inputs` where the (eval-mode) model's argmax equals `labels`."""
    model.eval()
    with torch.inference_mode():
        hits = sum(
            int((model(x).argmax(dim=1) == y).sum())
            for x, y in zip(inputs.split(batch), labels.split(batch))
        )
    return hits / len(inputs)


def distill_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: Tensor, teacher_logits: Tensor,
                 settings: DistillSettings) -> None:
    """One optimizer step on one batch of the distillation loss."""
    loss = distillation_loss(model(inputs), teacher_logits, settings.temperature, settings.hard_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def distill(
    build: Callable[[], nn.Module],
    inputs: Tensor,
    teacher_logits: Tensor,
    settings: DistillSettings,
    *,
    seed: int,
) -> tuple[nn.Module, float]:
    """Build a module and fit it to the teacher; return it in eval mode with its train agreement.

    AdamW with a cosine learning-rate decay over all steps. The global RNG is forked and seeded so
    initialisation, shuffling and dropout depend on `seed` only, without disturbing the caller's RNG.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        shuffle = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        steps = settings.epochs * math.ceil(len(inputs) / settings.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        model.train()
        for _ in range(settings.epochs):
            for idx in torch.randperm(len(inputs), generator=shuffle).split(settings.batch_size):
                distill_step(model, optimizer, inputs[idx], teacher_logits[idx], settings)
                schedule.step()
    return model, agreement(model, inputs, teacher_logits.argmax(dim=1))
