"""Do the early caches need more training images? Refit a bundle's caches at some cuts on the
class-balanced 20,000-image subset that `gati build` uses by default and on the whole training set,
then count on `test:calib` how many requests each cache answers with at most W wrong answers
(W = 10, 25, 50, 100), beside the bundle's own cache. With `--augment K`, also on each of those sets
followed by K augmented copies of it (gati/pipeline/augment.py: shifted, flipped; the base model's logits on
each copy are its teacher), so that augmented distillation is measured at equal wrong answers before a build
uses it.

    python experiments/train_size.py --bundle bundles/r50-20k --data-dir ../shared/data \
        --cuts 1,2,3 --variants fc,mlp > docs/results/train-size.txt
    python experiments/train_size.py --bundle bundles/sweep/resnet18-cifar10-cpu --data-dir ../shared/data \
        --cuts 1,3,6 --variants fc,convfc --augment 1 > docs/results/train-size-augment-r18.txt
"""
from __future__ import annotations

import argparse

import torch

from gati.bundle import load_bundle
from gati.cache import make_cache
from gati.data import load_split, select_ids
from gati.measure.coverage import answered_within
from gati.pipeline.augment import augmented
from gati.pipeline.extract import extract, extraction_batch

WRONG = (10, 25, 50, 100)  # the columns of this experiment's recorded outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--cuts", required=True, help="comma-separated cut indices")
    p.add_argument("--variants", required=True, help="comma-separated cache variants")
    p.add_argument("--subset", type=int, default=20000)
    p.add_argument("--augment", type=int, default=0, help="augmented copies of each training set (0: none)")
    a = p.parse_args()
    bundle = load_bundle(a.bundle)
    m = bundle.manifest
    cuts, variants = [int(c) for c in a.cuts.split(",")], a.variants.split(",")
    shapes = {c: tuple(m.cut_shapes[c]) for c in cuts}
    wanted = {c: {v: make_cache(v, shapes[c], m.num_classes).reducer_key for v in variants} for c in cuts}
    batch = extraction_batch("cpu")
    calib = load_split(m.dataset, a.data_dir, m.calibration.split)
    train = load_split(m.dataset, a.data_dir, "train")
    subset = load_split(m.dataset, a.data_dir, "train", limit=a.subset, seed=m.train.seed)
    row = {image_id: i for i, image_id in enumerate(train.ids)}
    rows = torch.tensor([row[i] for i in subset.ids])
    calib_feats, calib_logits = extract(bundle.staged, calib, bundle.preprocess, wanted, "cpu", batch, "calib")
    train_feats, train_logits = extract(bundle.staged, train, bundle.preprocess, wanted, "cpu", batch, "train")
    base = calib_logits.argmax(1)
    sets = [(f"refit on {len(rows)}", rows), (f"refit on {len(train)}", torch.arange(len(train)))]
    extra = {}  # set name -> features and logits of its augmented copies
    for name, chosen in sets if a.augment else ():
        copies = augmented(select_ids(train, [train.ids[i] for i in chosen]), a.augment, m.train.seed)
        copies = select_ids(copies, copies.ids[len(chosen):])  # the copies only: the originals are extracted
        extra[name] = extract(bundle.staged, copies, bundle.preprocess, wanted, "cpu", batch, f"augment {name}")
    print(f"requests answered with at most {'/'.join(map(str, WRONG))} wrong, of {len(calib)} {calib.split} images")
    for cut in cuts:
        for variant, key in wanted[cut].items():
            feats = train_feats[(cut, key)]
            shipped = bundle.info.load_cache(cut, variant)
            print(f"cut {cut} {m.cuts[cut]} {variant}")
            print(f"  bundle ({m.train.n} images): {answered_within(shipped, calib_feats[(cut, key)], base, WRONG)}")
            fits = [(name, feats[chosen], train_logits[chosen]) for name, chosen in sets]
            fits += [(f"{name} + {a.augment} augmented cop{'y' if a.augment == 1 else 'ies'}",
                      torch.cat([feats[chosen], extra[name][0][(cut, key)]]),
                      torch.cat([train_logits[chosen], extra[name][1]])) for name, chosen in sets if name in extra]
            for name, x, y in fits:
                cache = make_cache(variant, shapes[cut], m.num_classes)
                cache.fit(x.float(), y, seed=m.train.seed)
                print(f"  {name}: {answered_within(cache, calib_feats[(cut, key)], base, WRONG)}", flush=True)


if __name__ == "__main__":
    main()
