"""Which distillation settings fit the caches best? Refit a bundle's caches at some cuts on every training image,
once per setting and seed, and count on `test:calib` how many requests each answers before its W+1-th wrong
answer (W = 10, 25, 50, 100, 200; `gati.measure.coverage`), beside the bundle's own cache. A setting is a cache
hyper-parameter override (`temperature`, `hard_weight`, `epochs`, ...: the variant's Params; an empty one is the
defaults), and a few seeds say how much of a difference is the fit's own noise.

    python experiments/distill_settings.py --bundle bundles/sweep/resnet18-cifar10-cpu --data-dir ../shared/data \\
        --cuts 1,3,6 --variant convfc --setting temperature=2 --setting temperature=1 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from gati.bundle import load_bundle
from gati.cache import hparams_of, make_cache
from gati.data import load_split
from gati.measure.coverage import WRONG, answered_within
from gati.pipeline.extract import extract, extraction_batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--cuts", required=True, help="comma-separated cut indices")
    p.add_argument("--variant", required=True)
    p.add_argument("--setting", action="append", required=True,
                   help="name=value[,name=value] (repeat; as gati build's --cache-param; '' is the defaults)")
    p.add_argument("--seeds", default="0", help="comma-separated offsets to the bundle's training seed")
    a = p.parse_args()
    bundle = load_bundle(a.bundle)
    m = bundle.manifest
    cuts, seeds = [int(c) for c in a.cuts.split(",")], [int(s) for s in a.seeds.split(",")]
    shapes = {c: tuple(m.cut_shapes[c]) for c in cuts}
    # parsed before the minutes of extraction, so a mistyped setting fails at once
    settings = {text: hparams_of(a.variant, text) for text in a.setting}
    wanted = {c: {a.variant: make_cache(a.variant, shapes[c], m.num_classes).reducer_key} for c in cuts}
    batch = extraction_batch("cpu")
    calib = load_split(m.dataset, a.data_dir, m.calibration.split)
    train = load_split(m.dataset, a.data_dir, "train")
    calib_feats, calib_logits = extract(bundle.staged, calib, bundle.preprocess, wanted, "cpu", batch, "calib")
    train_feats, train_logits = extract(bundle.staged, train, bundle.preprocess, wanted, "cpu", batch, "train")
    base = calib_logits.argmax(1)
    print(f"requests answered with at most {'/'.join(map(str, WRONG))} wrong, of {len(calib)} {calib.split} "
          f"images; caches fitted on {len(train)} training images")
    for cut in cuts:
        key = wanted[cut][a.variant]
        shipped = bundle.info.load_cache(cut, a.variant)
        print(f"cut {cut} {m.cuts[cut]} {a.variant}: bundle {answered_within(shipped, calib_feats[(cut, key)], base)}")
        for text, hparams in settings.items():
            runs = []
            for seed in seeds:
                started = time.time()
                cache = make_cache(a.variant, shapes[cut], m.num_classes, **hparams)
                cache.fit(train_feats[(cut, key)].float(), train_logits, seed=m.train.seed + seed)
                runs.append(answered_within(cache, calib_feats[(cut, key)], base))
                print(f"  {text or 'defaults'} seed +{seed}: {runs[-1]} ({time.time() - started:.0f} s)", flush=True)
            print(f"  {text or 'defaults'} mean: {[round(x) for x in np.mean(runs, axis=0)]}", flush=True)


if __name__ == "__main__":
    main()
