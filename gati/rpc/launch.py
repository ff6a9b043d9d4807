"""Start and stop a whole cluster as local processes (`make deploy-local`, the cluster tests).

Each service runs `gati serve --role R --config FILE` in its own process group, logging to
`<log_dir>/<name>.log`. `start_supervised` (`make deploy-local`) creates the deployment secret
(`secret_file`, mode 0600) when it is missing, starts the supervisor (gati/rpc/supervise.py),
which starts the services and restarts any that crash, and waits until every service answers
ping. The supervisor records the supervisor's and the services' pids and each service's restarts in
`<log_dir>/cluster.json`; `stop` signals the supervisor, which stops the services, and then
anything recorded that still runs (SIGTERM, then SIGKILL after a grace period), after checking
that each pid still runs this config's supervisor or `gati serve`. `start` starts the services
without a supervisor (the tests, which kill and restart services themselves).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gati.errors import GatiError
from gati.rpc.auth import Secret, create_secret
from gati.rpc.client import ping
from gati.rpc.config import ClusterConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
PIDFILE = "cluster.json"


@dataclass
class Proc:
    name: str
    role: str
    pid: int
    host: str
    port: int
    log: str
    restarts: int = 0      # by the supervisor

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def answers(self, secret: Secret | None, timeout_s: float = 0.5) -> bool:
        """It answers ping: on the aggregator's public port as anyone, elsewhere with the secret."""
        public = self.role in ("aggregator", "all")
        return ping(self.host, self.port, timeout_s, None if public else secret)


def roles(cfg: ClusterConfig) -> list[tuple[str, str]]:
    """(process name, role) for every configured service."""
    out = [("aggregator", "aggregator")]
    out += [(e.name, "executor") for e in cfg.executors]
    out += [(p.name, "predictor") for p in cfg.predictors]
    out += [("index", "index")] if cfg.index else []
    out += [("retrainer", "retrainer")] if cfg.retrainer else []
    return out


def command(cfg: ClusterConfig, role: str, name: str) -> list[str]:
    cmd = [sys.executable, "-m", "gati.cli", "serve", "--role", role, "--config", str(Path(cfg.path).resolve())]
    return cmd + (["--name", name] if role in ("predictor", "executor") else [])


def spawn(cfg: ClusterConfig, name: str, role: str) -> Proc:
    """Start one service process (not waiting for it to be ready)."""
    log_dir = Path(cfg.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(command(cfg, role, name), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO_ROOT, env=_env(), start_new_session=True)
    ep = cfg.endpoints()[name]
    return Proc(name, role, proc.pid, ep.host, ep.port, str(log))


def wait_ready(procs: list[Proc], timeout_s: float = 180.0, secret: Secret | None = None) -> None:
    """Until every process answers ping (internal ports: signed with `secret`); GatiError naming
    the one that died or hung, with its log tail."""
    deadline = time.monotonic() + timeout_s
    waiting = list(procs)
    while waiting:
        for p in list(waiting):
            if not alive(p.pid):
                raise GatiError(f"{p.name} exited during start-up; last lines of {p.log}:\n{_tail(p.log)}")
            if p.answers(secret):
                waiting.remove(p)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(p.name for p in waiting)
            raise GatiError(f"{names} did not answer ping within {timeout_s:.0f} s; see {waiting[0].log}:\n"
                            f"{_tail(waiting[0].log)}")
        if waiting:
            time.sleep(0.2)


def start(cfg: ClusterConfig, timeout_s: float = 180.0) -> list[Proc]:
    """Every configured service as its own process, unsupervised; returns once all answer ping."""
    pidfile = _prepare(cfg)
    procs = [spawn(cfg, name, role) for name, role in roles(cfg)]
    write_pidfile(pidfile, procs)
    try:
        wait_ready(procs, timeout_s, Secret.load(cfg.secret_file))
    except BaseException:
        stop_procs(procs)
        raise
    return procs


def start_supervised(cfg: ClusterConfig, timeout_s: float = 180.0) -> tuple[int, list[Proc]]:
    """The supervisor, which starts every service and restarts those that crash; returns (its pid,
    the services) once all answer ping."""
    pidfile = _prepare(cfg)
    log_dir = Path(cfg.log_dir)
    with open(log_dir / "supervisor.log", "ab") as out:
        supervisor = subprocess.Popen([sys.executable, "-m", "gati.rpc.supervise", "--config",
                                       str(Path(cfg.path).resolve())], stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not pidfile.exists():  # the supervisor writes it once it has started every service
            if supervisor.poll() is not None or time.monotonic() > deadline:
                raise GatiError(f"the supervisor did not start the services; see {log_dir / 'supervisor.log'}:\n"
                                f"{_tail(str(log_dir / 'supervisor.log'))}")
            time.sleep(0.05)
        procs = read_pidfile(pidfile)
        wait_ready(procs, max(1.0, deadline - time.monotonic()), Secret.load(cfg.secret_file))
    except BaseException:
        _stop_supervisor(supervisor.pid, cfg, grace_s=10.0)
        raise
    return supervisor.pid, procs


def _prepare(cfg: ClusterConfig) -> Path:
    """Refuse to start twice or on ports in use; create the secret; the pid file's path (not yet written)."""
    pidfile = Path(cfg.log_dir) / PIDFILE
    if pidfile.exists():
        supervisor = read_supervisor(pidfile)
        if any(alive(p.pid) and _is_ours(p.pid, cfg) for p in read_pidfile(pidfile)) or \
                (supervisor is not None and _supervising(supervisor, cfg)):
            raise GatiError(f"a cluster from {cfg.path} is already running (see {pidfile}); stop it first")
        pidfile.unlink()
    busy = [f"{n} ({ep.address})" for n, ep in cfg.endpoints().items() if _listening(ep.host, ep.port)]
    if busy:
        raise GatiError(f"something already listens on the configured ports: {', '.join(busy)}")
    Path(cfg.log_dir).mkdir(parents=True, exist_ok=True)
    create_secret(cfg.secret_file)
    return pidfile


def stop(cfg: ClusterConfig, grace_s: float = 10.0) -> list[Proc]:
    """Stop what `start` or `start_supervised` recorded for this config: the supervisor first (so
    that nothing is restarted), then the services; returns the services that were running."""
    pidfile = Path(cfg.log_dir) / PIDFILE
    if not pidfile.exists():
        return []
    running = [p for p in read_pidfile(pidfile) if alive(p.pid) and _is_ours(p.pid, cfg)]
    supervisor = read_supervisor(pidfile)
    if supervisor is not None and _supervising(supervisor, cfg):
        _stop_supervisor(supervisor, cfg, grace_s)
    # Whatever still runs: no supervisor, or one that died; the pid file names the latest pids.
    stop_procs([p for p in read_pidfile(pidfile) if alive(p.pid) and _is_ours(p.pid, cfg)], grace_s)
    pidfile.unlink(missing_ok=True)
    return running


def _stop_supervisor(pid: int, cfg: ClusterConfig, grace_s: float) -> None:
    """SIGTERM: it stops its services (each within `grace_s`) and exits."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 5.0
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        _signal_group(pid, signal.SIGKILL)
    _reap(pid)


def stop_procs(procs: list[Proc], grace_s: float = 10.0) -> None:
    """SIGTERM each process group (services drain), SIGKILL what is left after `grace_s`."""
    for p in procs:
        _signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        while alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(p.pid):
            _signal_group(p.pid, signal.SIGKILL)
        _reap(p.pid)


def _env() -> dict[str, str]:
    """This checkout's gati first on the path of the processes started."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True


def alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive; /proc tells (Linux), elsewhere trust kill(0)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def read_pidfile(path: Path) -> list[Proc]:
    try:
        return [Proc(**p) for p in json.loads(Path(path).read_text())["processes"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GatiError(f"{path} is not a pid file written by deploy-local: {e}") from e


def read_supervisor(path: Path) -> int | None:
    """The supervisor's pid, if the pid file names one."""
    try:
        return json.loads(Path(path).read_text()).get("supervisor")
    except (OSError, ValueError, AttributeError) as e:
        raise GatiError(f"{path} is not a pid file written by deploy-local: {e}") from e


def write_pidfile(path: Path, procs: list[Proc], supervisor: int | None = None) -> None:
    tmp = Path(path).with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"supervisor": supervisor, "processes": [asdict(p) for p in procs]}, indent=2))
    tmp.replace(path)


def _is_ours(pid: int, cfg: ClusterConfig, program: bytes = b"serve") -> bool:
    """The pid still runs `program` (`gati serve`, or the supervisor) with this config (pids get reused)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    return program in args and str(Path(cfg.path).resolve()).encode() in args


def _supervising(pid: int, cfg: ClusterConfig) -> bool:
    return alive(pid) and _is_ours(pid, cfg, b"gati.rpc.supervise")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # each service leads its own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
