"""The cluster configuration: one YAML file read by every `gati serve --role R` process.

    bundle: ../bundles/r18     # relative paths are relative to the config file's folder
    device: cpu
    log_dir: ../runs/local
    state_dir: ../runs/local/state      # optional: what survives a restart, one folder per service
    secret_file: ../runs/local/secret   # signs every call between services (gati/rpc/auth.py)
    timeouts_ms: {connect: 1000, call: 2000, request: 5000, max_request: 30000, lookup: 200}
    max_message_mb: 64
    hop_delay_ms: 0.0          # injected before every message a client sends (placement studies)
    omp_wait_policy: PASSIVE   # OpenMP threads sleep when idle: services share the host's cores
    connections: {max_open: 1024, idle_s: 120, read_s: 10, workers: 16, buffer_mb: 64}
    services:
      aggregator: {host: 127.0.0.1, port: 9090, internal_port: 9096, http_port: 9100,
                   queue_size: 64, workers: 4, sample_rate: 0.05}
      executors:                 # replicas; `executor: {...}` is one replica named `executor`
        - {name: executor-0, host: 127.0.0.1, port: 9091, http_port: 9101, queue_size: 64}
        - {name: executor-1, host: 127.0.0.1, port: 9097, http_port: 9107}
      predictors:
        - {name: predictor-0, host: 127.0.0.1, port: 9092, cuts: [layer2.1, layer3.0]}
        - {name: predictor-1, host: 127.0.0.1, port: 9093, cuts: auto}
      index:      {host: 127.0.0.1, port: 9094, max_keys: 16, max_vectors: 200000, max_dim: 4096}
      retrainer:  {host: 127.0.0.1, port: 9095, snapshot_s: 60, resync_s: 30, refit_every: 1000}
    tier: {cut: 0, reducer: pool2, capacity: 2048, k: 8}   # optional: the online neighbour tier

`port` is the service's Thrift port; the optional `http_port` serves /health/live, /health/ready
and /metrics (and on the aggregator the Open Inference Protocol, /v2/...). The aggregator's `port`
is the one public Thrift port (predict, ping, status; no authentication); its `internal_port` takes
the executor's callbacks. Every other port is internal: callers prove they hold the secret in
`secret_file` (see gati/rpc/surface.py and auth.py).

Every service's `threads` is its process's OpenMP thread count (torch's, and FAISS's), set before either is
imported together with `omp_wait_policy` (gati/rpc/commands.py): on a shared host the default,
spinning threads on every core, lets one busy neighbour multiply tail latency. A client's
`deadline_ms` is capped at `timeouts_ms.max_request`, so no request holds a worker for long.

Placement (which cuts a predictor serves) is configuration: `placement(plan_cuts)` resolves `auto`
and checks that every cut of the plan is served by exactly one predictor. Unknown keys are errors,
so a typo never silently falls back to a default.

`tier` (optional) gives the cluster the online neighbour tier of gati/learning/neighbours.py, kept by the
index service (gati/rpc/tier.py), which it therefore needs: `cut` is an index into the bundle's cuts (0: the
stem), the other keys `TierConfig`'s. The retrainer certifies its threshold with the rest of the cascade.

`state_dir` (optional) keeps each service's state across restarts in `<state_dir>/<process name>`
(gati/rpc/durable.py): the cache versions a predictor serves and the retrainer deployed, and the
retrainer's samples (snapshotted every `snapshot_s` seconds). Without it every service keeps its
state in memory only: a restarted predictor serves the bundle's caches again (version 0), and a
restarted retrainer starts with no samples (it still learns the predictors' versions when it resyncs,
every `resync_s` seconds and before each deploy).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from gati.errors import GatiError
from gati.learning.tier_config import TierConfig  # not neighbours.py: reading a config must not import torch

AUTO = "auto"
ROLES = ("aggregator", "executor", "predictor", "index", "retrainer", "all")  # `gati serve --role`


class ConfigError(GatiError):
    """A cluster configuration that is missing, malformed or inconsistent with the bundle's plan."""


@dataclass(frozen=True)
class Timeouts:
    connect_ms: float = 1000.0   # opening a connection
    call_ms: float = 2000.0      # one two-way call between services
    request_ms: float = 5000.0   # a client's request end to end (the default deadline)
    max_request_ms: float = 30000.0  # the longest deadline a client may ask for (longer ones are capped)
    lookup_ms: float = 200.0     # how long the executor waits for a cut's verdict before calling it a miss


@dataclass(frozen=True)
class ConnectionLimits:
    """What one listening port may hold (gati/rpc/server.py)."""
    max_open: int = 1024          # connections; at the cap the longest-idle one makes room for a new one
    idle_s: float = 120.0         # a connection silent this long is closed
    read_s: float = 10.0          # a frame (or the handshake) must arrive whole within this of its first byte
    workers: int = 16             # calls processed at once (the public port adds the aggregator's queue_size)
    buffer_mb: float = 64.0       # frames held in memory at once (a single larger frame is still read)

    @property
    def client_idle_s(self) -> float:
        """Clients drop pooled connections idle this long, well before the server closes them."""
        return self.idle_s / 2


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int                         # Thrift
    http_port: int | None = None      # health, metrics (and /v2 on the aggregator); None: no HTTP server
    threads: int = 1                  # OpenMP threads (torch's, FAISS's; the aggregator has none); 0: every core

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.address

    @property
    def internal(self) -> bool:
        """Callers must authenticate (every port but the aggregator's public one)."""
        return True


@dataclass(frozen=True)
class AggregatorConfig(Endpoint):
    model_name: str = ""              # the model's name in the Open Inference Protocol; "": the bundle folder's
    internal_port: int | None = None  # finished/shadowed from the executor (authenticated)
    queue_size: int = 64              # requests admitted (running + waiting); beyond: Overloaded
    workers: int = 4                  # requests running at once
    sample_rate: float = 0.05         # share of requests finished in the background (live agreement)
    max_request_kb: int = 1024        # larger image payloads are refused as InvalidRequest

    @property
    def internal(self) -> bool:
        return False  # `port` is the public one

    @property
    def callbacks(self) -> Endpoint:
        """Where the executor calls back (finished, shadowed)."""
        if self.internal_port is None:
            raise ConfigError("services.aggregator.internal_port is not configured")
        return Endpoint(self.host, self.internal_port)


@dataclass(frozen=True)
class ExecutorConfig(Endpoint):
    name: str = "executor"            # one replica's process name (`gati serve --role executor --name`)
    threads: int = 0                  # the model's stages use every core unless told otherwise
    workers: int = 4                  # requests in the stage loop at once (one computes while another waits)
    queue_size: int = 64              # requests queued for a worker at most; beyond: Overloaded
    lookahead: int = -1               # stages run past an unanswered lookup; -1: the plan's mode (sync 0, async 1)


@dataclass(frozen=True)
class IndexConfig(Endpoint):
    """The neighbour index's bounds: what a caller may make it hold."""
    max_keys: int = 16                # indexes (a kNN cut's versions) held at once
    max_vectors: int = 200_000        # vectors per index
    max_dim: int = 4096               # a vector's dimension
    snapshot_s: float = 60.0          # the online tier's vectors reach state_dir within this many seconds


@dataclass(frozen=True)
class PredictorConfig(Endpoint):
    name: str = ""
    cuts: tuple[str, ...] | str = AUTO   # cut names, or "auto": the plan's cuts placed nowhere else


@dataclass(frozen=True)
class RetrainerConfig(Endpoint):
    holdout: float = 0.25             # share of samples held back to validate a candidate
    max_samples: int = 20000          # per cut; the oldest are dropped first
    max_sample_mb: float = 256.0      # features held, all cuts together (a cut's share caps max_samples)
    min_samples: int = 40             # refuse to retrain a cut with fewer
    # samples reach the state directory at most this long after arriving: a snapshot writes every ring whole
    # (1.1 s for 256 MB, docs/results/retrainer_memory.json), so 10 s kept a core 11% busy under steady traffic
    snapshot_s: float = 60.0
    resync_s: float = 30.0            # how often the predictors' versions are compared with the retrainer's
    # Automatic refits (gati/rpc/autorefit.py), counted in joint samples: sampled requests whose features at every
    # planned cut came in one message. Off when both refit_every and refit_seconds are 0.
    refit_every: int = 1000           # joint samples since the last refit began that start the next; 0: by time only
    refit_seconds: float = 0.0        # or seconds since then, whichever comes first; 0: by count only
    select_samples: int = 300         # the latest joint samples before a fit: build the candidate's thresholds
    certify_samples: int = 1000       # joint samples after the fit that re-certify the whole cascade
    alpha: float = 0.05               # each review's error budget (split between its two tests)
    target: float = 0.0               # the agreement certified; 0: the bundle's target

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or not 0 <= self.target < 1:
            raise ConfigError(f"services.retrainer: alpha must be in (0, 1) and target in [0, 1), got {self.alpha} "
                              f"and {self.target}")


@dataclass(frozen=True)
class ClusterConfig:
    path: Path                        # the file it came from ("" when built in code)
    bundle: Path
    secret_file: Path                 # the deployment's shared secret (hex, mode 0600)
    aggregator: AggregatorConfig
    executors: tuple[ExecutorConfig, ...]   # replicas, each its own process
    predictors: tuple[PredictorConfig, ...]
    index: IndexConfig | None = None
    retrainer: RetrainerConfig | None = None
    tier: TierConfig | None = None    # the online neighbour tier (kept by the index service); None: none
    device: str = "cpu"
    log_dir: Path = Path("runs/local")
    state_dir: Path | None = None     # <state_dir>/<process name> survives restarts; None: state in memory only
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_message_mb: float = 64.0
    hop_delay_ms: float = 0.0
    omp_wait_policy: str = "PASSIVE"   # OpenMP's OMP_WAIT_POLICY for every service; "": leave OpenMP's default
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    def state_folder(self, name: str) -> Path | None:
        """Where the service `name` (its process name) keeps what survives a restart; None: nowhere."""
        return None if self.state_dir is None else self.state_dir / name

    def predictor(self, name: str) -> PredictorConfig:
        return self._named(self.predictors, "predictor", name)

    def executor(self, name: str | None = None) -> ExecutorConfig:
        """The executor replica `name`; without a name, the only one."""
        if name is None:
            if len(self.executors) > 1:
                raise ConfigError(f"{self.path}: {len(self.executors)} executors are configured: name one "
                                  f"(--name {self.executors[0].name})")
            return self.executors[0]
        return self._named(self.executors, "executor", name)

    def _named(self, entries: tuple, kind: str, name: str):
        for e in entries:
            if e.name == name:
                return e
        known = ", ".join(e.name for e in entries) or "none"
        raise ConfigError(f"{self.path}: no {kind} named {name!r} (configured: {known})")

    def placement(self, plan_cuts: list[str]) -> dict[str, list[str]]:
        """Predictor name -> the plan's cut names it serves, in plan order."""
        placed: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        for p in self.predictors:
            if p.cuts == AUTO:
                continue
            for cut in p.cuts:
                if cut not in plan_cuts:
                    raise ConfigError(f"{self.path}: predictor {p.name} serves cut {cut!r}, which the "
                                      f"bundle's plan does not use (plan cuts: {', '.join(plan_cuts) or 'none'})")
                if cut in owner:
                    raise ConfigError(f"{self.path}: cut {cut!r} is placed on both {owner[cut]} and {p.name}")
                owner[cut] = p.name
            placed[p.name] = [c for c in plan_cuts if c in p.cuts]
        rest = [c for c in plan_cuts if c not in owner]
        autos = [p for p in self.predictors if p.cuts == AUTO]
        for i, p in enumerate(autos):  # several auto predictors share the rest round-robin
            placed[p.name] = rest[i::len(autos)]
        if rest and not autos:
            raise ConfigError(f"{self.path}: the plan's cuts {rest} are placed on no predictor; "
                              f"list them under a predictor or give one `cuts: auto`")
        return placed

    def service(self, role: str, name: str | None = None) -> Endpoint:
        """The entry of the process `gati serve --role ROLE [--name NAME]` runs (`all`: the aggregator's)."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        if role == "predictor":
            if not name:
                names = ", ".join(p.name for p in self.predictors)
                raise ConfigError(f"--role predictor needs --name (one of: {names})")
            return self.predictor(name)
        if role == "executor":
            return self.executor(name)
        if role in ("index", "retrainer") and getattr(self, role) is None:
            raise ConfigError(f"{self.path}: services.{role} is not configured")
        return self.endpoints()["aggregator" if role == "all" else role]

    def threads(self, role: str, name: str | None = None) -> int:
        """Torch threads for that process; `all` runs the model in process, with the executor's."""
        return self.executors[0].threads if role == "all" else self.service(role, name).threads

    def endpoints(self) -> dict[str, Endpoint]:
        """Every service by its process name (role, or the predictor's name)."""
        out: dict[str, Endpoint] = {"aggregator": self.aggregator}
        out.update({e.name: e for e in self.executors})
        out.update({p.name: p for p in self.predictors})
        if self.index is not None:
            out["index"] = self.index
        if self.retrainer is not None:
            out["retrainer"] = self.retrainer
        return out


def load_config(path: str | Path) -> ClusterConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cluster config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    return parse_config(raw, path)


def parse_config(raw: Any, path: Path) -> ClusterConfig:
    where = str(path)
    raw = _mapping(raw, where)
    _known(raw, {"bundle", "device", "log_dir", "state_dir", "secret_file", "timeouts_ms", "max_message_mb",
                 "hop_delay_ms", "omp_wait_policy", "connections", "services", "tier"}, where)
    if "bundle" not in raw:
        raise ConfigError(f"{where}: `bundle` (the bundle folder to serve) is required")
    if "secret_file" not in raw:
        raise ConfigError(f"{where}: `secret_file` (the deployment's shared secret, which signs every call "
                          f"between services; `make deploy-local` creates it) is required")
    services = _mapping(raw.get("services"), f"{where}: services")
    _known(services, {"aggregator", "executor", "executors", "predictors", "index", "retrainer"}, f"{where}: services")
    for required in ("aggregator", "predictors"):
        if required not in services:
            raise ConfigError(f"{where}: services.{required} is required")
    base = path.parent
    cfg = ClusterConfig(
        path=path,
        bundle=_resolve(base, raw["bundle"], "bundle", where),
        secret_file=_resolve(base, raw["secret_file"], "secret_file", where),
        device=_typed(raw.get("device", "cpu"), str, "device", where),
        log_dir=_resolve(base, raw.get("log_dir", "runs/local"), "log_dir", where),
        state_dir=_resolve(base, raw["state_dir"], "state_dir", where) if raw.get("state_dir") is not None else None,
        timeouts=_timeouts(raw.get("timeouts_ms", {}), where),
        max_message_mb=_positive(raw.get("max_message_mb", 64), "max_message_mb", where),
        hop_delay_ms=_non_negative(raw.get("hop_delay_ms", 0.0), "hop_delay_ms", where),
        omp_wait_policy=_wait_policy(raw.get("omp_wait_policy", "PASSIVE"), where),
        connections=_connections(raw.get("connections", {}), where),
        aggregator=_service(AggregatorConfig, services["aggregator"], f"{where}: services.aggregator"),
        executors=_executors(services, where),
        predictors=_predictors(services["predictors"], where),
        index=_optional(IndexConfig, services.get("index"), f"{where}: services.index"),
        retrainer=_optional(RetrainerConfig, services.get("retrainer"), f"{where}: services.retrainer"),
        tier=_tier(raw.get("tier"), where),
    )
    _check(cfg)
    return cfg


def _check(cfg: ClusterConfig) -> None:
    names = [e.name for e in (*cfg.executors, *cfg.predictors)]
    clash = sorted({n for n in names if names.count(n) > 1 or n in ("aggregator", "index", "retrainer")})
    if clash:
        raise ConfigError(f"{cfg.path}: every service needs a name of its own (its process and log): {clash}")
    seen: dict[tuple[str, int], str] = {}
    for name, ep in cfg.endpoints().items():
        ports = [ep.port] + ([ep.http_port] if ep.http_port else [])
        if isinstance(ep, AggregatorConfig) and ep.internal_port:
            ports.append(ep.internal_port)
        for port in ports:
            if (ep.host, port) in seen:
                raise ConfigError(f"{cfg.path}: {name} and {seen[(ep.host, port)]} both use {ep.host}:{port}")
            seen[(ep.host, port)] = name
    a = cfg.aggregator
    if a.internal_port is None:
        raise ConfigError(f"{cfg.path}: services.aggregator.internal_port is required: the executor calls "
                          f"back there (finished, shadowed), authenticated; `port` serves clients only")
    if not 0.0 <= a.sample_rate <= 1.0:
        raise ConfigError(f"{cfg.path}: services.aggregator.sample_rate must be in [0, 1], got {a.sample_rate}")
    if a.queue_size < a.workers:
        raise ConfigError(f"{cfg.path}: services.aggregator.queue_size ({a.queue_size}) must be at least "
                          f"workers ({a.workers}): it counts running requests too")
    if cfg.retrainer is not None and not 0.0 < cfg.retrainer.holdout < 1.0:
        raise ConfigError(f"{cfg.path}: services.retrainer.holdout must be in (0, 1)")
    for key in ("snapshot_s", "resync_s", "max_sample_mb"):  # periods are never a busy loop; a budget holds something
        if cfg.retrainer is not None and getattr(cfg.retrainer, key) <= 0:
            raise ConfigError(f"{cfg.path}: services.retrainer.{key} must be positive")
    if cfg.tier is not None and cfg.index is None:
        raise ConfigError(f"{cfg.path}: the online tier (`tier`) is kept by the index service: configure "
                          f"services.index too")
    if cfg.index is not None and cfg.index.snapshot_s <= 0:
        raise ConfigError(f"{cfg.path}: services.index.snapshot_s must be positive")
    t = cfg.timeouts
    if t.request_ms > t.max_request_ms:
        raise ConfigError(f"{cfg.path}: timeouts_ms.request ({t.request_ms:g}) is the default deadline and may not "
                          f"exceed timeouts_ms.max_request ({t.max_request_ms:g}), the longest one allowed")


def _executors(services: dict, where: str) -> tuple[ExecutorConfig, ...]:
    """`executors: [...]` (replicas named executor-0, executor-1, ... unless named), or `executor: {...}`
    (one replica named `executor`)."""
    if ("executor" in services) == ("executors" in services):
        raise ConfigError(f"{where}: give exactly one of services.executor (one replica) or services.executors "
                          f"(a list of replicas)")
    if "executor" in services:
        return (_service(ExecutorConfig, services["executor"], f"{where}: services.executor"),)
    return _named_list(ExecutorConfig, services["executors"], "executors", "executor", where)


def _tier(raw: Any, where: str) -> TierConfig | None:
    """`tier: {cut, reducer, capacity, k}` (gati.learning.tier_config.TierConfig; unnamed keys keep its defaults)."""
    if raw is None:
        return None
    ctx = f"{where}: tier"
    raw = _mapping(raw, ctx)
    fields = {f.name: f for f in dataclasses.fields(TierConfig)}
    _known(raw, set(fields), ctx)
    try:
        return TierConfig(**raw)
    except (GatiError, TypeError) as e:
        raise ConfigError(f"{ctx}: {e}") from e


def _wait_policy(value: Any, where: str) -> str:
    policy = _typed(value, str, "omp_wait_policy", where).upper()
    if policy not in ("PASSIVE", "ACTIVE", ""):
        raise ConfigError(f"{where}: omp_wait_policy must be PASSIVE, ACTIVE or \"\" (OpenMP's default), "
                          f"got {value!r}")
    return policy


def _predictors(raw: Any, where: str) -> tuple[PredictorConfig, ...]:
    return _named_list(PredictorConfig, raw, "predictors", "predictor", where, _cuts)


def _cuts(item: dict, ctx: str) -> None:
    cuts = item.get("cuts", AUTO)
    if cuts != AUTO:
        if not isinstance(cuts, list) or not all(isinstance(c, str) and c for c in cuts):
            raise ConfigError(f"{ctx}: cuts must be a list of cut names or 'auto', got {cuts!r}")
        item["cuts"] = tuple(cuts)


def _named_list(cls: type, raw: Any, key: str, kind: str, where: str,
                prepare: Callable[[dict, str], None] = lambda item, ctx: None) -> tuple:
    """A non-empty list of services of one role, each named (`<kind>-<i>` unless given), names unique."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: services.{key} must be a non-empty list")
    out = []
    for i, item in enumerate(raw):
        ctx = f"{where}: services.{key}[{i}]"
        item = dict(_mapping(item, ctx))
        item.setdefault("name", f"{kind}-{i}")
        prepare(item, ctx)
        out.append(_service(cls, item, ctx))
    names = [e.name for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: {kind} names must be unique, repeated: {dupes}")
    return tuple(out)


def _service(cls: type, raw: Any, ctx: str) -> Any:
    raw = _mapping(raw, ctx)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _known(raw, set(fields), ctx)
    for required in ("host", "port"):
        if required not in raw:
            raise ConfigError(f"{ctx}: `{required}` is required")
    values = {}
    for key, value in raw.items():
        if key in ("host", "name", "model_name"):
            values[key] = _typed(value, str, key, ctx)
        elif key.endswith("port"):
            values[key] = _port(value, key, ctx) if value is not None else None
        elif key == "cuts":
            values[key] = value
        else:
            values[key] = _number(value, type(fields[key].default), key, ctx)
    return cls(**values)


def _optional(cls: type, raw: Any, ctx: str) -> Any:
    return None if raw is None else _service(cls, raw, ctx)


def _timeouts(raw: Any, where: str) -> Timeouts:
    ctx = f"{where}: timeouts_ms"
    raw = _mapping(raw, ctx)
    _known(raw, {"connect", "call", "request", "max_request", "lookup"}, ctx)
    return Timeouts(**{f"{k}_ms": _positive(v, k, ctx) for k, v in raw.items()})


def _connections(raw: Any, where: str) -> ConnectionLimits:
    ctx = f"{where}: connections"
    raw = _mapping(raw, ctx)
    fields = {f.name: f for f in dataclasses.fields(ConnectionLimits)}
    _known(raw, set(fields), ctx)
    values = {k: _number(v, type(fields[k].default), k, ctx) for k, v in raw.items()}
    for key in ("idle_s", "read_s", "buffer_mb"):
        if key in values and values[key] <= 0:
            raise ConfigError(f"{ctx}: {key} must be positive, got {values[key]!r}")
    return ConnectionLimits(**values)


def _mapping(raw: Any, ctx: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{ctx} must be a mapping, got {type(raw).__name__}")
    return raw


def _known(raw: dict, allowed: set[str], ctx: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{ctx}: unknown keys {unknown} (allowed: {', '.join(sorted(allowed))})")


def _typed(value: Any, kind: type, key: str, ctx: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"{ctx}: {key} must be a {kind.__name__}, got {value!r}")
    return value


MINIMUM = {"threads": 0, "lookahead": -1, "refit_every": 0}  # other ints are counts (>= 1), other floats >= 0


def _number(value: Any, kind: type, key: str, ctx: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{ctx}: {key} must be {'an int' if kind is int else 'a number'}, got {value!r}")
    lowest = MINIMUM.get(key, 1 if kind is int else 0)
    if value < lowest:
        raise ConfigError(f"{ctx}: {key} must be at least {lowest}, got {value!r}")
    return kind(value)


def _positive(value: Any, key: str, ctx: str) -> float:
    v = _non_negative(value, key, ctx)
    if v == 0:
        raise ConfigError(f"{ctx}: {key} must be positive, got {value!r}")
    return v


def _non_negative(value: Any, key: str, ctx: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{ctx}: {key} must be a non-negative number, got {value!r}")
    return float(value)


def _port(value: Any, key: str, ctx: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"{ctx}: {key} must be a port number in 1..65535, got {value!r}")
    return value


def _resolve(base: Path, value: Any, key: str, ctx: str) -> Path:
    p = Path(_typed(value, str, key, ctx))
    return p if p.is_absolute() else (base / p).resolve()
