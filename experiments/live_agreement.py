"""How the live-agreement bound and the fallback rule behave in simulation (`gati.learning.simulate`).

Part 1, coverage: over many runs per error scenario (i.i.d., bursty, drifting, an adaptive adversary), the share
of runs in which the true number of wrong answers ever left the bounds (above the upper / below the lower): each
must stay at or below alpha. The exact binomial bound, valid at one fixed request only, is shown beside ours.

Part 2, the fallback controller over four vectors (0 = no early exits; hit rates 0/0.5/0.7/0.85, hits wrong
0/0.2/0.4/0.6% before the onset and 0/0.2/15/40% after it, target 0.97): the share of runs that fell back before
the onset (for nothing), the requests from the onset to the first fallback (detection) and from the last
fallback to RECOVERED (recovery), by sampling probability p and headroom.

    python experiments/live_agreement.py --runs 1000 --seeds 100
"""
from __future__ import annotations

import argparse

import numpy as np

from gati.learning.guarantee import FALLBACK, RECOVERED, wrong_bounds
from gati.learning.simulate import (
    adversarial_errors,
    bursty_errors,
    drifting_errors,
    fixed_time_bounds,
    iid_errors,
    miscoverage,
    serve_with_fallback,
)

HIT_RATE = (0.0, 0.5, 0.7, 0.85)
CALM = (0.0, 0.002, 0.004, 0.006)
BURST = (0.0, 0.002, 0.15, 0.4)
SCENARIOS = {"iid": iid_errors, "bursty": bursty_errors, "drift": drifting_errors, "adversary": adversarial_errors}


def coverage(runs: int, requests: int, p: float, alpha: float) -> None:
    print(f"coverage: {runs} runs x {requests} requests, p={p}, alpha={alpha}")
    print(f"{'scenario':>10} {'wrong/req':>9} {'W>upper':>8} {'W<lower':>8} {'fixed-time W>upper':>19}")
    for name, scenario in SCENARIOS.items():
        served = scenario(np.random.default_rng(2024), runs, requests, p)
        ours = miscoverage(served, lambda d, u: wrong_bounds(d, u, p, alpha))
        fixed = miscoverage(served, fixed_time_bounds(p, alpha))
        print(f"{name:>10} {served.wrong.mean():>9.4f} {ours[0]:>8.3f} {ours[1]:>8.3f} {fixed[0]:>19.3f}")


def fallback(seeds: int, requests: int, onset: int) -> None:
    print(f"\nfallback: {seeds} seeds x {requests} requests, onset at {onset}, target 0.97")
    print(f"{'p':>5} {'headroom':>8} {'false':>6} {'detect p50':>10} {'p90':>6} {'recover p50':>11} {'p90':>6}")
    for p in (0.05, 0.1, 0.2):
        for headroom in (1, 3):
            false, detect, recover = 0, [], []
            for seed in range(seeds):
                controller = serve_with_fallback(seed, requests, onset, HIT_RATE, CALM, BURST, p, 0.97,
                                                 headroom=headroom)
                false += _summarise(controller, onset, detect, recover)
            print(f"{p:>5} {headroom:>8} {false / seeds:>6.2f} {_pct(detect, 50):>10} {_pct(detect, 90):>6} "
                  f"{_pct(recover, 50):>11} {_pct(recover, 90):>6}")


def _summarise(controller, onset: int, detect: list[int], recover: list[int]) -> bool:
    fallbacks = [t.request for t in controller.transitions if t.kind == FALLBACK]
    after = [r for r in fallbacks if r >= onset]
    if after:
        detect.append(after[0] - onset)
        recovered = [t.request for t in controller.transitions if t.kind == RECOVERED and t.request > after[-1]]
        if recovered:
            recover.append(recovered[0] - after[-1])
    return any(r < onset for r in fallbacks)


def _pct(values: list[int], q: int) -> str:
    return f"{np.percentile(values, q):.0f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs per coverage scenario")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--p", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, default=100, help="runs per fallback setting")
    args = parser.parse_args()
    coverage(args.runs, args.requests, args.p, args.alpha)
    fallback(args.seeds, requests=16000, onset=8000)


if __name__ == "__main__":
    main()
