"""The `gati` command: parse arguments and delegate to the library. No logic lives here."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from gati.errors import GatiError


def _build(a: argparse.Namespace) -> None:
    from gati.bundle import read_manifest
    from gati.cache import VARIANTS
    from gati.pipeline.build import BuildConfig, build
    from gati.pipeline.planner import plan_report
    cfg = BuildConfig(checkpoint=Path(a.checkpoint), dataset=a.dataset, data_dir=Path(a.data_dir), out=Path(a.out),
                      arch=a.arch, model_module=a.model_module, cuts=_list(a.cuts), num_classes=a.num_classes,
                      target=a.target, device=a.device, variants=_list(a.variants) or list(VARIANTS), train_limit=a.train_limit or None,
                      calib_limit=a.calib_limit, memory_mb=a.memory_mb, batch_size=a.batch_size, seed=a.seed,
                      force=a.force, preprocess=_preprocess(a))
    out = build(cfg)
    print(plan_report(read_manifest(out)))
    print(f"bundle written to {out}")


def _calibrate(a: argparse.Namespace) -> None:
    from gati.pipeline.planner import plan_report
    from gati.pipeline.retarget import retarget
    print(plan_report(retarget(Path(a.bundle), a.target, Path(a.out) if a.out else None, a.memory_mb)))


def _plan(a: argparse.Namespace) -> None:
    from gati.pipeline.planner import plan_report
    from gati.pipeline.retarget import replan_for_device
    print(plan_report(replan_for_device(Path(a.bundle), a.device, Path(a.out) if a.out else None, a.memory_mb)))


def _compact(a: argparse.Namespace) -> None:
    from gati.bundle import read_manifest
    from gati.pipeline.compact import compact
    from gati.pipeline.planner import plan_report
    out = compact(Path(a.bundle), a.data_dir, Path(a.out) if a.out else None)
    print(plan_report(read_manifest(out)))


def _eval(a: argparse.Namespace) -> None:
    from gati.bundle import load_bundle
    from gati.data import load_split
    from gati.measure.evaluate import evaluate, format_table
    bundle = load_bundle(a.bundle, a.device)
    data = load_split(bundle.manifest.dataset, a.data_dir, a.split, limit=a.limit, seed=a.seed)
    result = evaluate(bundle, data, seed=a.seed, mode=a.mode, progress=not a.json)
    print(json.dumps(result.to_dict()) if a.json else format_table(result))


def _train_base(a: argparse.Namespace) -> None:
    from gati.pipeline.train_base import TrainConfig, train_base
    cfg = TrainConfig(arch=a.arch, dataset=a.dataset, data_dir=Path(a.data_dir), out=Path(a.out), epochs=a.epochs,
                      batch_size=a.batch_size, lr=a.lr, train_limit=a.train_limit, device=a.device, seed=a.seed,
                      yes=a.yes)
    result = train_base(cfg)
    print(json.dumps(result))


def _preprocess(a: argparse.Namespace):
    """The preprocessing the user gave (gaps filled from the data set's), or None: the data set's own."""
    if a.mean is None and a.std is None and a.input_size is None and a.channels is None:
        return None
    from gati.data import preprocess_for
    return preprocess_for(a.dataset, Path(a.data_dir), mean=a.mean, std=a.std, size=a.input_size, channels=a.channels)


def _list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.5,0.5,0.5; got {value!r}") \
            from None


def _size(value: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 32x32 or 98x40; got {value!r}") from None
    return height, width


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gati", description="Prediction serving with learned caches.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="fit, profile, plan and calibrate caches for a model; write a bundle")
    b.add_argument("--arch", help="built-in architecture (resnet18/34/50/101/152, vgg16)")
    b.add_argument("--model-module", help="your own model: 'pkg.module:factory' called with num_classes")
    b.add_argument("--cuts", help="comma-separated module names to cut after (default: the arch's)")
    b.add_argument("--checkpoint", required=True, help="state_dict file of the trained base model")
    b.add_argument("--dataset", required=True,
                   help="cifar10, cifar100, speechcommands, tinyimagenet100 or imagefolder")
    b.add_argument("--data-dir", required=True)
    b.add_argument("--num-classes", type=int, help="default: the dataset's class count")
    b.add_argument("--mean", type=_floats, help="per-channel mean the model was trained with, on pixels / 255, "
                   "e.g. 0.5,0.5,0.5 (default: the data set's)")
    b.add_argument("--std", type=_floats, help="per-channel std the model was trained with (default: the data set's)")
    b.add_argument("--input-size", type=_size, help="HxW the model takes, e.g. 32x32; images of another size are "
                   "resized to it, bilinear (default: the data set's image size)")
    b.add_argument("--channels", type=int, choices=(1, 3), help="input channels the model takes: 1 (greyscale) or 3 "
                   "(RGB); images are converted (default: the data set's)")
    b.add_argument("--target", type=float, default=0.97, help="agreement with the base model to keep")
    b.add_argument("--device", default="cpu")
    b.add_argument("--variants", help="comma-separated cache variants to consider (default: all)")
    b.add_argument("--train-limit", type=int, default=20000,
                   help="class-balanced training images used to fit caches (0: all)")
    b.add_argument("--calib-limit", type=int, help="class-balanced subset of test:calib (default: all)")
    b.add_argument("--memory-mb", type=float, default=float("inf"), help="memory budget for the plan's caches")
    b.add_argument("--batch-size", type=int, help="images per extraction pass (default: 16 on a CPU, 256 on CUDA)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--force", action="store_true", help="replace an existing bundle")
    b.add_argument("--out", required=True)
    b.set_defaults(func=_build)

    c = sub.add_parser("calibrate", help="re-target a bundle's thresholds (no retraining)")
    c.add_argument("--bundle", required=True)
    c.add_argument("--target", type=float, required=True)
    c.add_argument("--memory-mb", type=float, help="new memory budget (default: the bundle's)")
    c.add_argument("--out", help="write a new bundle instead of updating in place")
    c.set_defaults(func=_calibrate)

    pl = sub.add_parser("plan", help="re-profile a bundle on a device and re-plan it")
    pl.add_argument("--bundle", required=True)
    pl.add_argument("--device", default="cpu")
    pl.add_argument("--memory-mb", type=float)
    pl.add_argument("--out")
    pl.set_defaults(func=_plan)

    k = sub.add_parser("compact", help="store a bundle's dense caches in bfloat16, then re-score and re-plan")
    k.add_argument("--bundle", required=True)
    k.add_argument("--data-dir", required=True, help="where the bundle's calibration images are")
    k.add_argument("--out", help="write a new bundle instead of updating in place")
    k.set_defaults(func=_compact)

    e = sub.add_parser("eval", help="replay a split through base and GATI side by side")
    e.add_argument("--bundle", required=True)
    e.add_argument("--data-dir", required=True)
    e.add_argument("--split", default="test:eval")
    e.add_argument("--limit", type=int, help="deterministic class-balanced subset of N requests")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu")
    e.add_argument("--mode", choices=("sync", "async"), help="override the plan's engine mode")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    e.set_defaults(func=_eval)

    t = sub.add_parser("train-base", help="train a base model for users who bring none")
    t.add_argument("--arch", required=True)
    t.add_argument("--dataset", required=True)
    t.add_argument("--data-dir", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--train-limit", type=int)
    t.add_argument("--device", default="cuda" if _cuda() else "cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--yes", action="store_true", help="start a long CPU run without asking")
    t.set_defaults(func=_train_base)

    try:  # the cluster commands need thrift; a host that only builds or evaluates may lack it
        from gati.rpc.commands import register
        register(sub)
    except ImportError:
        pass
    return p


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        args.func(args)
    except (GatiError, ValueError, FileNotFoundError) as e:
        print(f"gati {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
