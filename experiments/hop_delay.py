"""Where cross-machine placement stops paying off: the local cluster with an injected per-hop delay.

For each delay, writes a copy of deploy/local.yaml with `hop_delay_ms` set (the transport sleeps
that long before every message a client sends and before reading a reply, i.e. one network hop
each way), starts the cluster as local processes, replays `--limit` test:eval images through
`gati bench` at each `--concurrency`, and stops it. The in-process engine is measured by the same tool
in the same run, so rows compare side by side.

    python experiments/hop_delay.py --bundle bundles/r18 --data-dir ../shared/data --delays 0 0.2 1.0
    python experiments/hop_delay.py --delays 0 --concurrency 1 8      # in-process vs cluster
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GATI = [sys.executable, "-m", "gati.cli"]


def bench(bundle: str, data_dir: str, limit: int, endpoint: str | None, concurrency: list[int]) -> dict:
    """`gati bench --json`: one measurement per concurrency level, and the environment."""
    cmd = GATI + ["bench", "--bundle", bundle, "--data-dir", data_dir, "--limit", str(limit), "--concurrency",
                  ",".join(map(str, concurrency)), "--json"] + (["--endpoint", endpoint] if endpoint else [])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout)


def cluster_config(bundle: str, delay_ms: float, folder: Path, base_port: int) -> Path:
    cfg = yaml.safe_load((REPO / "deploy" / "local.yaml").read_text())
    cfg["bundle"] = str(Path(bundle).resolve())
    cfg["log_dir"] = str(folder / "logs")
    cfg["secret_file"] = str(folder / "secret")  # created by the launch, private to this run
    cfg["state_dir"] = str(folder / "state")  # private too: another run's versions must not serve this one
    cfg["hop_delay_ms"] = delay_ms
    services = cfg["services"]
    services["retrainer"].update(refit_every=0, refit_seconds=0)  # the bundle's caches throughout the measurement
    cfg.pop("tier", None)  # and no online tier learning beside them
    ports = iter(range(base_port, base_port + 20))
    for service in [services[name] for name in ("aggregator", "executor", "index", "retrainer")] + services["predictors"]:
        service["port"], service["http_port"] = next(ports), next(ports)
    services["aggregator"]["internal_port"] = next(ports)
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", default="bundles/r18")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.2, 1.0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1])
    p.add_argument("--base-port", type=int, default=29400)
    a = p.parse_args()
    in_process = bench(a.bundle, a.data_dir, a.limit, None, a.concurrency)
    rows = [{"placement": "in-process", "hop_delay_ms": None, **m} for m in in_process["measurements"]]
    for delay in a.delays:
        with tempfile.TemporaryDirectory() as tmp:
            config = cluster_config(a.bundle, delay, Path(tmp), a.base_port)
            local = [sys.executable, str(REPO / "deploy" / "local.py")]
            subprocess.run(local + ["start", "--config", str(config)], check=True, capture_output=True, cwd=REPO)
            try:
                endpoint = f"127.0.0.1:{a.base_port}"
                cluster = bench(a.bundle, a.data_dir, a.limit, endpoint, a.concurrency)
                rows += [{"placement": "cluster", "hop_delay_ms": delay, **m} for m in cluster["measurements"]]
            finally:
                subprocess.run(local + ["stop", "--config", str(config)], capture_output=True, cwd=REPO)
    print(json.dumps({"environment": in_process["environment"], "rows": rows}))


if __name__ == "__main__":
    main()
