#!/usr/bin/env python3
"""Run a GATI cluster on AWS: `deploy`, `status`, `destroy` (driven by `make deploy-aws`,
`make status-aws`, `make destroy-aws`; see docs/aws.md). The logic lives in gati/cloud/.

Exit codes: 0 done, 1 a failure (a bad description, an AWS error, a cluster that never became
ready; named on stderr), 2 a usage error."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:   # run as a script from a checkout without installing
    sys.path.insert(0, str(PROJECT))

from gati.cloud.deployment import build_plan, placeholders, render  # noqa: E402
from gati.cloud.hooks import Hooks  # noqa: E402
from gati.cloud.spec import DeploySpec, load_spec  # noqa: E402
from gati.errors import GatiError  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy/aws.py", description=__doc__)
    p.add_argument("command", choices=["deploy", "status", "destroy"])
    p.add_argument("--config", default="deploy/aws.yaml", help="deployment description")
    p.add_argument("--bundle", default="bundles/r18", help="bundle folder to serve")
    p.add_argument("--name", help="deployment name (overrides the file's)")
    p.add_argument("--dry-run", action="store_true",
                   help="deploy: print the full plan without calling AWS; "
                        "destroy: list what would be removed")
    p.add_argument("--inventory-dir", default=".deploy", help="where the inventory goes")
    p.add_argument("--ready-timeout-s", type=float, default=1800.0,
                   help="how long deploy waits for the aggregator to answer ping")
    return p


def main(argv: list[str] | None = None, hooks: Hooks | None = None) -> int:
    args = parser().parse_args(argv)
    hooks = hooks or Hooks()
    try:
        spec = load_spec(args.config, args.name)
        if args.command == "deploy" and args.dry_run:   # no AWS, not even boto3
            hooks.echo(render(build_plan(spec, placeholders(spec))))
            return 0
        return _with_aws(args, spec, hooks)
    except GatiError as exc:  # a bad description: nothing was created
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _with_aws(args: argparse.Namespace, spec: DeploySpec, hooks: Hooks) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return _run(args, spec, hooks)
    except (GatiError, BotoCoreError, ClientError) as exc:   # botocore's messages carry no secrets
        aws = "" if isinstance(exc, GatiError) else "AWS: "
        print(f"error: {aws}{exc}", file=sys.stderr)
        if args.command == "deploy":  # e.g. no capacity for the GPU type, half way through
            print("anything already created carries the deployment's tags: "
                  "`make destroy-aws` removes it", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, spec: DeploySpec, hooks: Hooks) -> int:
    from gati.cloud.aws import deploy, forget_inventory, session_for, status
    from gati.cloud.destroy import destroy

    session = session_for(spec)
    if args.command == "deploy":
        result = deploy(spec, Path(args.bundle), PROJECT, session, hooks,
                        Path(args.inventory_dir), args.ready_timeout_s)
        return 0 if result.ready else 1
    if args.command == "status":
        return 0 if status(spec, session, hooks) else 1
    found = destroy(spec, session, hooks.sleep, args.dry_run, hooks.waiter_delay_s)
    verb = "would remove" if args.dry_run else "removed"
    for line in found.describe() or ["nothing carries this deployment's tags"]:
        hooks.echo(line if found.empty() else f"{verb} {line}")
    if not args.dry_run:
        forget_inventory(spec, Path(args.inventory_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
