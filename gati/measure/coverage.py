"""How many requests a cache answers, most confident first, before a given number of wrong answers.

The measure behind the fitting experiments (`experiments/train_size.py`, `experiments/distill_settings.py`): a
cache is worth what it answers at a fixed number of wrong answers, which is how a threshold path spends them.
"""
from __future__ import annotations

import torch

from gati.cache import Cache

WRONG = (10, 25, 50, 100, 200)


def answered_within(cache: Cache, feats: torch.Tensor, base: torch.Tensor,
                    wrong: tuple[int, ...] = WRONG) -> list[int]:
    """For each W in `wrong`: how many of the requests (`feats`, whose base answers are `base`) the cache answers,
    most confident first, before its W+1-th answer that differs from the base model's."""
    label, conf = cache.predict(feats.float())
    order = torch.argsort(conf, descending=True)
    errors = torch.cumsum((label[order] != base[order]).int(), 0)
    return [int((errors <= w).sum()) for w in wrong]
