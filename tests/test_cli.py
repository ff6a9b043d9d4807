"""The `gati` command: version, help, exit codes (usage error 2, runtime failure 1), no tracebacks
for expected failures, and commands that need an optional package say so instead of vanishing."""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gati import __version__
from gati.cli import EXIT_FAILURE, EXIT_USAGE, main, parser

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_python_m_gati_prints_the_version():
    out = run("-m", "gati", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"gati {__version__}"


def test_commands_that_only_read_a_config_and_talk_to_services_do_not_import_torch():
    # `gati --help`, deploy-local's status and stop, and the supervisor (the shipped config has a tier): importing
    # torch costs seconds of CPU each
    out = run("-c", "import sys, gati.cli, gati.rpc.launch, gati.rpc.supervise, gati.rpc.client, gati.rpc.config; "
                    "assert gati.rpc.config.load_config('deploy/local.yaml').tier is not None; "
                    "print(sorted(m for m in ('torch', 'faiss') if m in sys.modules))")
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_every_command_has_an_example_and_shows_its_defaults():
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"build", "calibrate", "plan", "compact", "eval", "train-base", "bench", "serve", "predict"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert f"example:\n  gati {name} " in text, name
        with_defaults = [a for a in sub._actions if a.option_strings and a.default not in (None, False)
                         and a.default is not argparse.SUPPRESS and a.help is not argparse.SUPPRESS]
        assert text.count("(default:") >= len(with_defaults), name
        assert all(a.help for a in sub._actions), name  # every option says what it is


@pytest.mark.parametrize("argv", [
    ["eval"],                                                                    # required options missing
    ["bench", "--bundle", "b", "--data-dir", "d", "--concurrency", "0,2"],       # not a level
    ["bench", "--bundle", "b", "--data-dir", "d", "--requests", "5", "--duration", "1"],  # one or the other
    ["calibrate", "--bundle", "b", "--target", "1.5"],                           # not a fraction
    ["no-such-command"],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == EXIT_USAGE and "usage:" in capsys.readouterr().err


def test_a_runtime_failure_exits_1_with_a_message_and_v_may_follow_the_command(tmp_path, capsys):
    assert main(["eval", "-v", "--bundle", str(tmp_path / "none"), "--data-dir", str(tmp_path)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "gati eval: error:" in err and "is not a bundle" in err and "Traceback" not in err


def test_a_config_that_is_not_yaml_is_named_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("bundle: [unclosed\nservices: {}\n")
    assert main(["serve", "--role", "all", "--config", str(bad)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and "line" in err and "Traceback" not in err

    aws = tmp_path / "aws.yaml"
    aws.write_text((REPO / "deploy" / "aws.yaml").read_text().replace("roles:", "roles: [", 1))
    out = run("deploy/aws.py", "deploy", "--dry-run", "--config", str(aws), "--bundle", str(tmp_path))
    assert out.returncode == 1 and "is not valid YAML" in out.stderr and "Traceback" not in out.stderr


def config_with(tmp_path: Path, bundle: Path, port: int, http_port: int | None) -> Path:
    path = tmp_path / "all.yaml"
    aggregator = {"host": "127.0.0.1", "port": port, "internal_port": 3} | ({"http_port": http_port} if http_port else {})
    path.write_text(yaml.safe_dump({"bundle": str(bundle), "secret_file": str(tmp_path / "secret"), "services": {
        "aggregator": aggregator, "executor": {"host": "127.0.0.1", "port": 1},
        "predictors": [{"host": "127.0.0.1", "port": 2}]}}))
    return path


@pytest.mark.parametrize("taken", ["http", "thrift"])
def test_a_port_in_use_is_a_message_not_a_traceback(tiny_bundle, tmp_path, taken):
    with socket.socket() as busy, socket.socket() as free:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        free.bind(("127.0.0.1", 0))
        ports = (free.getsockname()[1], busy.getsockname()[1]) if taken == "http" else (busy.getsockname()[1], None)
        free.close()
        out = run("-m", "gati", "serve", "--role", "all", "--config", str(config_with(tmp_path, tiny_bundle, *ports)))
    assert out.returncode == EXIT_FAILURE, out.stderr
    assert "already in use" in out.stderr and "Traceback" not in out.stderr


WITHOUT_THRIFT = """
import contextlib, io, json, sys
sys.modules["thrift"] = None  # as if the package were not installed
from gati.cli import main
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results[name] = {"code": code, "out": out.getvalue(), "err": err.getvalue()}
results["thrift_imported"] = any(m.startswith("gati.rpc.gen") for m in sys.modules)
print(json.dumps(results))
"""


def test_without_thrift_the_in_process_bench_works_and_cluster_commands_say_what_is_missing(tiny_bundle, tiny_data):
    bench = ["bench", "--bundle", str(tiny_bundle), "--data-dir", str(tiny_data[0]), "--dataset", "imagefolder",
             "--limit", "8", "--warmup", "0"]
    runs = {"help": ["--help"], "bench": bench + ["--json"], "remote": bench + ["--endpoint", "127.0.0.1:1"],
            "serve": ["serve", "--role", "all", "--config", "deploy/local.yaml"]}
    out = run("-c", WITHOUT_THRIFT, json.dumps(runs), timeout=240)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["help"]["code"] == 0 and "serve" in r["help"]["out"] and "predict" in r["help"]["out"]
    assert r["bench"]["code"] == 0, r["bench"]["err"]
    assert json.loads(r["bench"]["out"])["measurements"][0]["completed"] == 8 and not r["thrift_imported"]
    for name, command in (("remote", "gati bench --endpoint"), ("serve", "gati serve")):
        assert r[name]["code"] == EXIT_FAILURE
        assert f"{command} needs the Python package 'thrift'" in r[name]["err"] and "pip install" in r[name]["err"]
