"""A `gati eval --records` file window by window: what learning changed, and when.

Per window of requests: agreement with the base model, hit rate, the levels and versions that served it, the mean
base and GATI milliseconds, the live lower bound at its end, and its most common exits.

    python experiments/learning_windows.py runs/r18-repeat.jsonl --window 1000
"""
from __future__ import annotations

import argparse
import collections
import statistics

from gati.measure.environment import read_records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records")
    p.add_argument("--window", type=int, default=1000)
    a = p.parse_args()
    _, rows = read_records(a.records)
    for start in range(0, len(rows), a.window):
        part = rows[start:start + a.window]
        agree = statistics.fmean(r["answer"] == r["base"] for r in part)
        hits = statistics.fmean(r["hit"] for r in part)
        levels = collections.Counter(r["level"] for r in part).most_common(2)
        versions = sorted({r["version"] for r in part})
        ms = f"{statistics.fmean(r['ms_base'] for r in part):.1f}/{statistics.fmean(r['ms_gati'] for r in part):.1f}"
        lower = "-" if part[-1]["lower"] is None else f"{part[-1]['lower']:.4f}"
        exits = dict(collections.Counter(r["exit"] for r in part).most_common(4))
        print(f"{start:>6}-{start + len(part):<6} agreement {agree:.4f} hits {hits:.3f} levels {levels} "
              f"versions {versions} ms base/gati {ms} lower {lower} exits {exits}")


if __name__ == "__main__":
    main()
