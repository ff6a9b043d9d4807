"""Reproduce the paper's Table 6 and plots with one command.

    python experiments/latency_sweep.py --preset quick     # ResNet-18/50 on CIFAR-10, ~30 min once bundles exist
    python experiments/latency_sweep.py --preset speech    # the paper's VGG-16 / Speech Commands row on this CPU
    python experiments/latency_sweep.py --preset paper     # every Table 6 row, CPU and GPU, targets 0.90-0.999
    python experiments/latency_sweep.py --preset quick --report-only   # redraw figures and docs from the JSON

Sweeps models x devices x targets x workloads x deployments (in process, and through a local Thrift cluster) x
online learning, as the preset in experiments/presets/sweep.yaml lists them (`--preset FILE.yaml` for your own).
Per row it builds or reuses the bundle (`gati build` defaults; other targets by `gati calibrate`; under
`--work`), replays the workload through the unsplit model and GATI side by side (in process: `gati eval`'s
replay, frozen or learning online), and appends one JSON line to docs/results/sweep/PRESET.jsonl: the row, its
bundle's promise and profile, the environment and a summary; every request's record goes to a gzipped file per
row under `--work`/records (data: kept out of git; figures 4 and 5 need them). Finished rows are not
measured again unless `--force`; a row that cannot run is recorded as skipped with its reason and the command
that would make it possible. Then it draws the figures (docs/figures/PRESET/*.png) and rewrites the generated
blocks of docs/results.md, README.md and docs/aws.md.

Exit codes: 0 every row measured, 3 some rows skipped or failed (named on stderr and in docs/results.md),
1 the sweep could not start (a bad preset, a missing folder), 2 a usage error.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from experiments.sweep.report import Docs, not_run, publish  # noqa: E402
from experiments.sweep.results import DONE, ResultsFile, records_folder  # noqa: E402
from experiments.sweep.run import SweepRun, run_sweep  # noqa: E402
from experiments.sweep.spec import DEFAULT_FILE, load_models, load_preset  # noqa: E402
from gati.errors import GatiError  # noqa: E402

EXIT_INCOMPLETE = 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", help="a preset of experiments/presets/sweep.yaml, or a YAML file "
                                                      "of your own (default: quick)")
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("GATI_SHARED") or REPO.parent / "shared"),
                   help="the shared data and checkpoints (default: $GATI_SHARED, else ../shared)")
    p.add_argument("--work", type=Path, default=REPO / "bundles" / "sweep",
                   help="where bundles, trained checkpoints and build logs go (default: bundles/sweep)")
    p.add_argument("--root", type=Path, default=REPO, help="the checkout whose docs are rewritten; results and "
                                                            "figures go under its docs/ (default: this checkout)")
    p.add_argument("--force", action="store_true", help="measure finished rows again")
    p.add_argument("--report-only", action="store_true", help="measure nothing: redraw the figures and rewrite the "
                                                              "docs from the results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parser().parse_args(argv)
    command = shlex.join(["python", "experiments/latency_sweep.py", *(x for x in argv if x != "--report-only")])
    try:
        preset = load_preset(a.preset)
        docs = Docs(a.root)
        results = docs.sweep_results / f"{preset.name}.jsonl"
        if not a.report_only:
            run_sweep(SweepRun(preset, a.shared.resolve(), a.work.resolve(), results, command, a.force,
                               progress=not a.quiet))
        records = records_folder(a.work.resolve())
        latest = ResultsFile(results, records).latest()
        rows = [latest[r.key] for r in preset.rows if r.key in latest]
        everything = [r for f in sorted(docs.sweep_results.glob("*.jsonl"))
                      for r in ResultsFile(f, records).latest().values()]
        publish(preset, rows, everything, {**load_models(DEFAULT_FILE), **preset.models}, docs, results, command)
    except GatiError as e:
        print(f"latency_sweep: error: {e}", file=sys.stderr)
        return 1
    measured = sum(r.status == DONE for r in rows)
    print(f"{measured} of {len(preset.rows)} rows measured; results {results}; figures {docs.figures(preset.name)}")
    for g in not_run(rows):
        print(f"  {g.status} ({len(g.keys)} rows): {g.reason}" + (f"\n    to run them: {g.command}" if g.command else ""),
              file=sys.stderr)
    return 0 if measured == len(preset.rows) else EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
