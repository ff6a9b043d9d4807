"""Accuracy of a base model on one split: checks that a checkpoint, its architecture and the data set's
preprocessing fit together (a plain accuracy check, not a latency measurement).

    python experiments/base_accuracy.py --arch vgg16 --checkpoint ../shared/models/speechcommands_vgg16.pt \
        --dataset speechcommands --data-dir ../shared/data --split test

Prints one JSON object: images, correct, accuracy, the model's input shape and the environment.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from gati.data import SPLITS, load_split, preprocess_for
from gati.measure.environment import environment
from gati.models import ARCHS, build_model, load_checkpoint

BATCH = 64


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", required=True, choices=ARCHS)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", default="test", choices=SPLITS)
    a = p.parse_args()
    started = time.time()
    data = load_split(a.dataset, a.data_dir, a.split)
    pre = preprocess_for(a.dataset, a.data_dir)
    model = build_model(a.arch, len(data.classes), pre.channels).eval()
    load_checkpoint(model, a.checkpoint)
    with torch.inference_mode():
        predicted = np.concatenate([model(pre(data.images[i:i + BATCH])).argmax(1).numpy()
                                    for i in range(0, len(data), BATCH)])
    correct = int((predicted == data.labels).sum())
    print(json.dumps({"arch": a.arch, "dataset": a.dataset, "split": a.split, "input_shape": list(pre.input_shape),
                      "images": len(data), "correct": correct, "accuracy": round(correct / len(data), 4),
                      "seconds": round(time.time() - started, 1), "environment": environment()}))


if __name__ == "__main__":
    main()
