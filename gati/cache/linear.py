"""Dense heads on standardised features, and the simplest of them: a linear head on pooled channels.

Standardisation (mean/std of the fit features) is used while training and then folded into the first
layer, so that `predict` is a few plain `F.linear` calls on the raw reduced features.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gati.cache.base import Cache, check_state, confidence_and_label
from gati.cache.train import DistillSettings, HeadParams, distill


def standardisation(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, inverse std) per column of `x`.

    Columns that (nearly) never vary in the fit data get inverse std 0: they carried nothing to learn
    from, and dividing a later non-zero value by a near-zero std would swamp the head.
    """
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    floor = max(1e-8, 1e-6 * float(std.max()))
    inv_std = torch.where(std > floor, 1.0 / std.clamp_min(floor), torch.zeros_like(std))
    return mean, inv_std


def fold_standardisation(linear: nn.Linear, mean: Tensor, inv_std: Tensor) -> tuple[Tensor, Tensor]:
    """Weight and bias of `linear` applied to (x - mean) * inv_std, as one affine map of x."""
    weight = linear.weight.detach() * inv_std
    bias = linear.bias.detach() - weight @ mean
    return weight.contiguous(), bias.contiguous()


class DenseCache(Cache):
    """Standardised flattened features -> Linear, with ReLU (+ dropout while training) between layers."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, **hparams: Any) -> None:
        super().__init__(in_shape, num_classes, **hparams)
        self._layers: list[tuple[Tensor, Tensor]] = []  # (weight, bias) per layer, folded

    def hidden_dims(self) -> tuple[int, ...]:
        return ()

    def dropout(self) -> float:
        return 0.0

    def _dims(self) -> tuple[int, ...]:
        flat = 1
        for d in self.feat_shape:
            flat *= d
        return (flat, *self.hidden_dims(), self.num_classes)

    def _build(self) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(pairwise(self._dims())):
            if i:
                layers += [nn.ReLU(), nn.Dropout(self.dropout())] if self.dropout() else [nn.ReLU()]
            layers.append(nn.Linear(fan_in, fan_out))
        return nn.Sequential(*layers)

    def _fit(self, feats: Tensor, teacher_logits: Tensor, seed: int) -> tuple[int, float]:
        x = feats.reshape(len(feats), -1)
        mean, inv_std = standardisation(x)
        settings = DistillSettings.of(self.hparams)
        model, agree = distill(self._build, (x - mean) * inv_std, teacher_logits, settings, seed=seed)
        linears = [m for m in model if isinstance(m, nn.Linear)]
        first = fold_standardisation(linears[0], mean, inv_std)
        rest = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in linears[1:]]
        self._layers = self._stored([first, *rest])
        return settings.epochs, agree

    def _stored(self, layers: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        dtype = torch.bfloat16 if self.hparams.bf16 else torch.float32
        return [(w.to(dtype).contiguous(), b.to(dtype)) for w, b in layers]

    def _predict(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        h = feats.reshape(len(feats), -1).to(self._layers[0][0].dtype)
        last = len(self._layers) - 1
        for i, (weight, bias) in enumerate(self._layers):
            h = F.linear(h, weight, bias)
            if i < last:
                h = h.relu_()
        return confidence_and_label(h.float())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self._layers for t in layer)

    def _state(self) -> dict[str, Tensor]:
        state = {}
        for i, (weight, bias) in enumerate(self._layers):
            state[f"weight{i}"], state[f"bias{i}"] = weight, bias
        return state

    def _load_state(self, state: dict[str, Tensor]) -> None:
        shapes = {}
        for i, (fan_in, fan_out) in enumerate(pairwise(self._dims())):
            shapes[f"weight{i}"], shapes[f"bias{i}"] = (fan_out, fan_in), (fan_out,)
        check_state(state, shapes)
        count = len(shapes) // 2
        self._layers = self._stored([(state[f"weight{i}"], state[f"bias{i}"]) for i in range(count)])


class LinearCache(DenseCache):
    """Global-average-pooled channels -> standardise -> Linear(C, num_classes)."""

    variant = "linear"
    reducer_key = "gap"
    Params = HeadParams
