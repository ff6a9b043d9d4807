"""What a cache head costs to fit and to score, on random features of a cut's reduced shape.

A build's fitting time is steps x the cost of one step, plus a scoring pass over the training rows (the fit's train
agreement). Both depend on the head's shape, not on the features' values, so random features measure them:

    python experiments/head_costs.py --variant convfc --in-shape 64,32,32 --setting '' --setting channels=64 \\
        --eval-batch 256,1024,4096

prints, per setting, milliseconds per fitting step (batch 256, as `gati.cache.train.distill` runs it) and seconds to
score 10,000 rows at each eval batch. Times are this machine's at this moment: compare settings within one run.
"""
from __future__ import annotations

import argparse
import time

import torch

from gati.cache import hparams_of, make_cache
from gati.cache.train import DistillSettings, agreement, distill_step


def step_ms(cache, feats: torch.Tensor, teacher: torch.Tensor, steps: int) -> float:
    """Milliseconds per fitting step (`distill_step` on batches of the fit's size), after two warm-up steps."""
    model = cache._build().train()
    settings = DistillSettings.of(cache.hparams)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    batches = torch.arange(len(feats)).split(settings.batch_size)
    for rows in batches[:2]:
        distill_step(model, optimizer, feats[rows], teacher[rows], settings)
    started = time.perf_counter()
    for i in range(steps):
        rows = batches[2 + i % (len(batches) - 2)]
        distill_step(model, optimizer, feats[rows], teacher[rows], settings)
    return (time.perf_counter() - started) / steps * 1e3


def score_seconds(cache, feats: torch.Tensor, teacher: torch.Tensor, batch: int) -> float:
    """Seconds for the fit's train-agreement pass (`agreement`) over all of `feats` in batches of `batch`."""
    model = cache._build()
    started = time.perf_counter()
    agreement(model, feats, teacher.argmax(dim=1), batch)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the heads whose module `_build` makes, fitted by `distill` as one torch module
    p.add_argument("--variant", default="convfc", choices=["convfc", "linear"])
    p.add_argument("--in-shape", required=True, help="the cut's activation shape C,H,W")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--setting", action="append", default=None,
                   help="name=value[,name=value] (repeat; as gati build's --cache-param; '' is the defaults)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--eval-batch", default="256,4096", help="comma-separated scoring batch sizes")
    a = p.parse_args()
    in_shape = tuple(int(d) for d in a.in_shape.split(","))
    batches = [int(b) for b in a.eval_batch.split(",")]
    torch.manual_seed(0)
    print(f"{a.variant} at {in_shape}, {torch.get_num_threads()} threads; fitting step: batch 256; "
          f"scoring: {a.rows} rows")
    for text in a.setting or [""]:
        cache = make_cache(a.variant, in_shape, a.classes, **hparams_of(a.variant, text))
        feats = torch.randn(a.rows, *cache.feat_shape)
        teacher = torch.randn(a.rows, a.classes)
        scores = ", ".join(f"batch {b}: {score_seconds(cache, feats, teacher, b):.2f} s" for b in batches)
        print(f"  {text or 'defaults'} ({cache!r}): step {step_ms(cache, feats, teacher, a.steps):.1f} ms; "
              f"scoring {scores}", flush=True)


if __name__ == "__main__":
    main()
