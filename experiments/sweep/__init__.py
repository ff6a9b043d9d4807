"""The latency sweep behind `experiments/latency_sweep.py`: the paper's tables and plots from one command.

    spec.py     the YAML presets as typed rows (model x device x target x workload x deployment x online)
    bundles.py  the bundle each row needs: reused, or made with the `gati` commands (build, calibrate, plan,
                train-base), or a reason and the command that would make the row possible
    replay.py   one row's requests through base and GATI side by side, one record per request: in process,
                `gati.measure.evaluate` (frozen or learning online); or through a cluster
    cluster.py  a local cluster of real processes on free ports, stopped afterwards
    results.py  the JSON lines (one per row, per-request records included) and the summary of a row
    run.py      the loop over rows: resumable, a progress bar, skips reported with their reasons
    figures.py  the seven figures, from the JSON alone
    report.py   the generated blocks of docs/results.md, README.md and docs/aws.md
"""
