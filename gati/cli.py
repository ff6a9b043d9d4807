"""The `gati` command (also `python -m gati`): parse arguments and delegate to the library.

Exit codes:
    0    success
    1    a runtime failure: a typed error such as a missing bundle or data set, a port in use, a
         configuration that does not parse, an unreachable server, or (predict) an image that
         was not classified; the message names what is wrong, without a traceback
    2    a usage error: an unknown option, a missing or malformed argument
    130  interrupted (Ctrl-C)
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from gati import __version__
from gati.errors import GatiError
from gati.rpc.commands import register as register_cluster_commands
from gati.runtime.plan import MODES

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# ---- commands: each parses nothing, delegates, prints ------------------------------------------

def _build(a: argparse.Namespace) -> None:
    from gati.bundle import read_manifest
    from gati.cache import VARIANTS, hparams_for
    from gati.pipeline.build import BuildConfig, build
    from gati.pipeline.planner import plan_report
    variants = _list(a.variants) or list(VARIANTS)
    cfg = BuildConfig(checkpoint=Path(a.checkpoint), dataset=a.dataset, data_dir=Path(a.data_dir), out=Path(a.out),
                      arch=a.arch, model_module=a.model_module, cuts=_list(a.cuts), num_classes=a.num_classes,
                      target=a.target, device=a.device, variants=variants,
                      train_limit=a.train_limit or None, augment=a.augment, calib_limit=a.calib_limit,
                      memory_mb=a.memory_mb, batch_size=a.batch_size, seed=a.seed, force=a.force, drafts=a.drafts,
                      preprocess=_preprocess(a), cache_hparams=hparams_for(variants, a.cache_param))
    out = build(cfg)
    print(plan_report(read_manifest(out)))
    print(f"bundle written to {out}")


def _preprocess(a: argparse.Namespace):
    """The preprocessing the user gave (gaps filled from the data set's), or None: the data set's own."""
    if a.mean is None and a.std is None and a.input_size is None and a.channels is None:
        return None
    from gati.data import preprocess_for
    return preprocess_for(a.dataset, Path(a.data_dir), mean=a.mean, std=a.std, size=a.input_size, channels=a.channels)


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
    from gati.measure.workloads import parse_workload, workload_help
    if a.workload == "help":
        print(workload_help())
        return
    from gati.bundle import load_bundle
    from gati.data import load_split
    from gati.measure.environment import environment
    from gati.measure.evaluate import evaluate, format_table
    workload = parse_workload(a.workload) if a.workload else None
    online = _online_config(a)
    bundle = load_bundle(a.bundle, a.device)
    data = load_split(bundle.manifest.dataset, a.data_dir, a.split, limit=a.limit, seed=a.seed)
    result = evaluate(bundle, data, seed=a.seed, mode=a.mode, progress=not a.json, workload=workload, online=online,
                      state_dir=a.state_dir, records=a.records)
    print(json.dumps({**result.to_dict(), "environment": environment()}) if a.json else format_table(result))


def _online_config(a: argparse.Namespace):
    """The learner's settings from `gati eval`'s (or `bench`'s) options, or None (frozen caches) without --online /
    --guard."""
    if not (a.online or a.guard):
        for given, name in ((a.state_dir, "--state-dir"), (a.sample_rate, "--sample-rate"),
                            (a.refit_every, "--refit-every"), (a.certify_samples, "--certify-samples")):
            if given is not None:
                raise GatiError(f"{name} needs --online (or --guard)")
        return None
    from gati.learning.online import OnlineConfig
    deterministic = getattr(a, "deterministic", False)
    given = {"sample_rate": a.sample_rate, "refit_every": a.refit_every, "certify_samples": a.certify_samples}
    return OnlineConfig(learn=not a.guard, background=not deterministic, coin_seed=a.seed if deterministic
                        else None, **{k: v for k, v in given.items() if v is not None})


def _bench(a: argparse.Namespace) -> None:
    from gati.measure.bench import BenchConfig, format_table, run_bench
    cfg = BenchConfig(bundle=Path(a.bundle), data_dir=Path(a.data_dir), split=a.split, limit=a.limit,
                      concurrency=tuple(a.concurrency), rate=tuple(a.rate or ()), requests=a.requests,
                      duration_s=a.duration, max_threads=a.max_threads, endpoint=a.endpoint, dataset=a.dataset,
                      warmup=a.warmup, timeout_s=a.timeout, seed=a.seed,
                      records=Path(a.records) if a.records else None, online=_online_config(a),
                      state_dir=Path(a.state_dir) if a.state_dir else None)
    result = run_bench(cfg, progress=lambda m: print(
        f"{'rate' if m.rate is not None else 'concurrency'} {m.rate if m.rate is not None else m.concurrency}: "
        f"{m.throughput_rps:.1f} req/s, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, {m.errors} errors",
        file=sys.stderr))
    print(json.dumps(result.to_dict()) if a.json else format_table(result))


def _train_base(a: argparse.Namespace) -> None:
    from gati.pipeline.train_base import TrainConfig, train_base
    device = a.device or ("cuda" if _cuda() else "cpu")
    cfg = TrainConfig(arch=a.arch, dataset=a.dataset, data_dir=Path(a.data_dir), out=Path(a.out), epochs=a.epochs,
                      batch_size=a.batch_size, lr=a.lr, train_limit=a.train_limit, device=device, seed=a.seed,
                      yes=a.yes)
    print(json.dumps(train_base(cfg)))


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _learning_options(parser: argparse.ArgumentParser, where: str = "") -> None:
    """The learner's options, shared by `eval` and `bench` (`_online_config` reads them)."""
    learning = parser.add_mutually_exclusive_group()
    learning.add_argument("--online", action="store_true", help=f"learn while serving{where}: live bound and "
                          "fallback, neighbour tier, caches refitted and re-certified on the traffic")
    learning.add_argument("--guard", action="store_true", help="the live bound and fallback only (frozen caches)")
    parser.add_argument("--state-dir", help="online: keep versions, samples and the live bound here; resume from it")
    parser.add_argument("--sample-rate", type=fraction, help="online: share of requests the server's coin samples "
                        "(default 0.1)")
    parser.add_argument("--refit-every", type=positive_int, help="online: samples between refits (default 1000)")
    parser.add_argument("--certify-samples", type=positive_int, help="online: fresh coin samples that certify a "
                        "refit (default 1000; at a 0.99 target they admit 3 wrong answers)")


# ---- argument types: a malformed value is a usage error (exit 2) -------------------------------

def _list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def positive_ints(text: str) -> list[int]:
    """'1,2,4,8' -> [1, 2, 4, 8]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers >= 1, got {text!r}")
    return values


def positive_floats(text: str) -> list[float]:
    """'50,100' -> [50.0, 100.0]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    return _one(positive_ints(text), text)


def positive_float(text: str) -> float:
    return _one(positive_floats(text), text)


def non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def _one(values: list, text: str):
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one number, got {text!r}")
    return values[0]


def floats(text: str) -> tuple[float, ...]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.5,0.5,0.5; got {text!r}") \
            from None


def size(text: str) -> tuple[int, int]:
    """'98x40' -> (98, 40)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 32x32 or 98x40; got {text!r}") from None
    return height, width


def fraction(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), e.g. 0.97; got {text!r}")
    return value


# ---- the parser ---------------------------------------------------------------------------------

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples as written; every option's help ends with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and not action.required and "%(default)" not in text \
                and not any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def _verbose_flag(default: object) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="log progress details to stderr")
    return p


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gati", formatter_class=HelpFormatter, parents=[_verbose_flag(False)],
                                description="Prediction serving with learned caches: early answers for deep networks.",
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--version", action="version", version=f"gati {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # -v may also come after the command; SUPPRESS keeps the top-level value when it does not
    common = [_verbose_flag(argparse.SUPPRESS)]

    def command(name: str, summary: str, examples: str, func) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=summary, description=summary, parents=common, formatter_class=HelpFormatter,
                           epilog="example:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()))
        c.set_defaults(func=func)
        return c

    b = command("build", "fit, profile, plan and calibrate caches for a model; write a bundle", """
gati build --arch resnet18 --checkpoint ../shared/models/cifar10_resnet18.pt \\
           --dataset cifar10 --data-dir ../shared/data --target 0.97 --out bundles/r18""", _build)
    b.add_argument("--arch", help="built-in architecture: resnet18/34/50/101/152 or vgg16 (or --model-module)")
    b.add_argument("--model-module", help="your own model: 'pkg.module:factory', called with num_classes")
    b.add_argument("--cuts", help="comma-separated module names to cut after (default: the arch's)")
    b.add_argument("--checkpoint", required=True, help="state_dict file of the trained base model")
    b.add_argument("--dataset", required=True,
                   help="cifar10, cifar100, speechcommands, tinyimagenet100 or imagefolder")
    b.add_argument("--data-dir", required=True, help="where the data set is (folder or archive)")
    b.add_argument("--num-classes", type=positive_int, help="default: the data set's class count")
    b.add_argument("--mean", type=floats, help="per-channel mean the model was trained with, on pixels / 255, "
                   "e.g. 0.5,0.5,0.5 (default: the data set's)")
    b.add_argument("--std", type=floats, help="per-channel std the model was trained with (default: the data set's)")
    b.add_argument("--input-size", type=size, help="HxW the model takes, e.g. 32x32; images of another size are "
                   "resized to it, bilinear (default: the data set's image size)")
    b.add_argument("--channels", type=int, choices=(1, 3), help="input channels the model takes: 1 (greyscale) or 3 "
                   "(RGB); images are converted (default: the data set's)")
    b.add_argument("--target", type=fraction, default=0.97, help="agreement with the base model to keep")
    b.add_argument("--device", default="cpu", help="where to extract, fit and profile: cpu, cuda, cuda:N")
    b.add_argument("--variants", help="comma-separated cache variants to consider (default: all: "
                                      "linear,mlp,fc,convfc,knn)")
    b.add_argument("--train-limit", type=int, default=0,
                   help="class-balanced training images used to fit caches (default 0: all)")
    b.add_argument("--cache-param", action="append", default=[], metavar="[VARIANT.]NAME=VALUE",
                   help="a cache hyper-parameter, for every variant that has it or for one (repeatable), e.g. "
                        "temperature=1 or mlp.hidden=512 (each variant's Params in gati/cache/; the bundle's cache configs "
                        "record them)")
    b.add_argument("--augment", type=non_negative_int, default=0,
                   help="shifted and flipped copies of each training image the caches also learn the base "
                        "model's answers on (spectrograms: shifted in time)")
    b.add_argument("--no-drafts", dest="drafts", action="store_false",
                   help="fit every cache at full size; by default cheaper drafts are fitted first and only those "
                        "the draft plan chooses are refitted at full size (conv heads: narrower, or if narrow "
                        "already fitted for 3 epochs)")
    b.add_argument("--calib-limit", type=positive_int, help="class-balanced subset of test:calib (default: all)")
    b.add_argument("--memory-mb", type=positive_float, default=float("inf"),
                   help="memory budget for the plan's caches")
    b.add_argument("--batch-size", type=positive_int, help="images per extraction pass (default: 16 on a CPU, "
                                                            "256 on CUDA)")
    b.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    b.add_argument("--force", action="store_true", help="replace an existing bundle")
    b.add_argument("--out", required=True, help="the bundle folder to write")

    c = command("calibrate", "re-target a bundle's thresholds (no retraining)",
                "gati calibrate --bundle bundles/r18 --target 0.99 --out bundles/r18-99", _calibrate)
    c.add_argument("--bundle", required=True, help="the bundle folder")
    c.add_argument("--target", type=fraction, required=True, help="agreement with the base model to keep")
    c.add_argument("--memory-mb", type=positive_float, help="new memory budget (default: the bundle's)")
    c.add_argument("--out", help="write a new bundle instead of updating in place")

    pl = command("plan", "re-profile a bundle on a device and re-plan it",
                 "gati plan --bundle bundles/r18 --device cuda --out bundles/r18-gpu", _plan)
    pl.add_argument("--bundle", required=True, help="the bundle folder")
    pl.add_argument("--device", default="cpu", help="the serving device: cpu, cuda, cuda:N")
    pl.add_argument("--memory-mb", type=positive_float, help="new memory budget (default: the bundle's)")
    pl.add_argument("--out", help="write a new bundle instead of updating in place")

    k = command("compact", "store a bundle's dense caches in bfloat16, then re-score and re-plan",
                "gati compact --bundle bundles/r18 --data-dir ../shared/data --out bundles/r18-bf16", _compact)
    k.add_argument("--bundle", required=True, help="the bundle folder")
    k.add_argument("--data-dir", required=True, help="where the bundle's calibration images are")
    k.add_argument("--out", help="write a new bundle instead of updating in place")

    e = command("eval", "replay a split through base and GATI side by side",
                "gati eval --bundle bundles/r18 --data-dir ../shared/data --split test:eval --json", _eval)
    e.add_argument("--bundle", required=True, help="the bundle folder")
    e.add_argument("--data-dir", required=True, help="where the data set is")
    e.add_argument("--split", default="test:eval", help="train, test, test:calib or test:eval")
    e.add_argument("--limit", type=positive_int, help="deterministic class-balanced subset of N requests")
    e.add_argument("--seed", type=int, default=0, help="seed of the subset and the replay order")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    e.add_argument("--mode", choices=MODES, help="override the plan's engine mode")
    e.add_argument("--workload", help="the request stream, NAME or NAME:KEY=VALUE,... (iid, zipf, bursty, repeat, "
                   "drift, trace; 'help' lists their parameters); default: the split shuffled, iid")
    _learning_options(e)
    e.add_argument("--deterministic", action="store_true", help="online: learn between requests, not beside "
                   "them, with the coin seeded by --seed (repeatable runs; timings then miss the learning's cost)")
    e.add_argument("--records", help="write one JSON line per request to this file (fields: gati.measure.evaluate)")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")

    t = command("train-base", "train a base model for users who bring none",
                "gati train-base --arch resnet18 --dataset cifar10 --data-dir ../shared/data --out base.pt",
                _train_base)
    t.add_argument("--arch", required=True, help="built-in architecture: resnet18/34/50/101/152 or vgg16")
    t.add_argument("--dataset", required=True, help="cifar10, cifar100, speechcommands, tinyimagenet100 or imagefolder")
    t.add_argument("--data-dir", required=True, help="where the data set is")
    t.add_argument("--out", required=True, help="the checkpoint file to write")
    t.add_argument("--epochs", type=positive_int, default=30, help="passes over the training split")
    t.add_argument("--batch-size", type=positive_int, default=256, help="images per step")
    t.add_argument("--lr", type=positive_float, default=0.1, help="peak learning rate")
    t.add_argument("--train-limit", type=positive_int, help="class-balanced training subset (default: all)")
    t.add_argument("--device", help="default: cuda when present, else cpu")
    t.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    t.add_argument("--yes", action="store_true", help="start a long CPU run without asking")

    bench = command("bench", "load-test the in-process engine or a cluster with real images", """
gati bench --bundle bundles/r18 --data-dir ../shared/data --concurrency 1,2,4,8
gati bench --bundle bundles/r18 --data-dir ../shared/data --endpoint 127.0.0.1:9090 \\
           --rate 50,100 --duration 30 --records runs/bench.jsonl""", _bench)
    bench.add_argument("--bundle", required=True, help="reference answers (and the engine without --endpoint)")
    bench.add_argument("--endpoint", help="an aggregator's HOST:PORT (needs thrift); omitted: the in-process engine")
    bench.add_argument("--data-dir", required=True, help="where the data set is")
    bench.add_argument("--dataset", help="default: the data set the bundle was built for")
    bench.add_argument("--split", default="test:eval", help="the images sent")
    bench.add_argument("--limit", type=positive_int, default=500, help="class-balanced subset of the split")
    bench.add_argument("--concurrency", type=positive_ints, default="1",
                       help="closed loop: clients sending one request at a time; a list runs a sweep")
    bench.add_argument("--rate", type=positive_floats,
                       help="open loop: Poisson arrivals per second (a list runs a sweep); replaces --concurrency")
    window = bench.add_mutually_exclusive_group()
    window.add_argument("--requests", type=positive_int, help="requests per measurement (default: each image once)")
    window.add_argument("--duration", type=positive_float, help="seconds per measurement, instead of a count")
    bench.add_argument("--max-threads", type=positive_int, default=64, help="open loop: senders at most")
    bench.add_argument("--warmup", type=int, default=20, help="requests sent before measuring, not counted")
    bench.add_argument("--timeout", type=positive_float, default=30.0, help="seconds per request")
    bench.add_argument("--seed", type=int, default=0, help="seed of the subset and of the arrival times")
    bench.add_argument("--records", help="write one JSON line per request to this file (for plots)")
    bench.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    _learning_options(bench, " (in process)")

    register_cluster_commands(command)  # needs no thrift to register; serve and predict check when run
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # a usage error exits here, with EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        return args.func(args) or EXIT_OK
    except (GatiError, OSError, ValueError) as e:
        print(f"gati {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"gati {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
