"""Learning while serving: the engine with a live guarantee, a neighbour tier and caches refitted on its traffic.

`OnlineEngine` wraps the in-process `Engine` (its stages, input checks and head) and serves each request as follows:

1. The server's coin: with probability p (`sample_rate`), drawn from a generator seeded by the OS, never from the
   request. A sampled request will be known exactly: a miss already is, a sampled hit is finished by the full
   model in the background (its *shadow check*, resumed from the activation where it exited).
2. The cascade (`gati.runtime.cascade.run_cascade`, the one rule): the verdict source asks the neighbour tier
   first at its cut, then the cache at each planned cut, with the thresholds of the level being served; it keeps a
   reference to every planned cut's activation (no copy, no work on the request path) for the samples.
3. The live bound (`gati.learning.guarantee`): misses and unsampled hits are counted at once, sampled hits when
   their shadow check has finished; the fallback controller then picks the level of the next request. Levels are
   rungs of a ladder: 0 is no early exits, rung i the i-th certified vector of the version being served.
4. Learning (off the request path, on a worker thread; or in `settle()` with `background=False`, which makes a run
   deterministic): requests that ran to the end become samples (reduced features at the planned cuts, the base
   logits, the tier's verdict before they were stored) and enter the tier with the base model's answer.
5. Refitting (its own thread): every `refit_every` samples (or `refit_seconds`), fresh copies of the plan's caches
   are fitted on the samples so far, minus the latest `select_samples` coin samples, which build the candidate's
   threshold path. Once `certify_samples` coin samples of *later* requests have come in, `gati.learning.refit.review`
   certifies the whole cascade with the candidate in place (the tier included) and re-tests the serving version on
   them. A candidate that fails, or is slower than the serving version, is never deployed; one that passes becomes
   the next version at once, served from its most aggressive certified level (the controller watches it like any
   other: waiting for the bound to recover first would leave a version that failed serving in its place). A
   fallback returns to faster levels only through such a review: of a new version, or of the serving one when it
   passes again on fresh samples.

With a state directory (`gati.learning.state`) every deployed version, the samples, the tier and the live counts
survive a restart; a restarted engine resumes the latest certified version.

With `learn=False` there is no tier and no refitting: the guarantee alone (coin, shadow checks, live bound,
fallback), and after a fallback the serving version is re-tested on fresh samples before it climbs back.

Thread-safe: `predict` may be called from many threads; the live bound and the controller take one lock.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from gati.bundle import Bundle
from gati.cache import Cache
from gati.errors import GatiError
from gati.learning.background import BACKGROUND_NICE, as_background
from gati.learning.guarantee import (
    ALPHA,
    HEADROOM,
    AgreementSnapshot,
    FallbackController,
    LiveAgreement,
    Transition,
)
from gati.learning.neighbours import EMPTY, TIER, NeighbourTier, TierVerdict
from gati.learning.tier_config import TierConfig
from gati.learning.tier_vector import tier_vector, time_tier
from gati.learning.refit import (
    REFIT,
    Review,
    Slot,
    Trial,
    certificate,
    now,
    order_slots,
    refit_caches,
    review,
)
from gati.learning.samples import Sample, SampleBook, SampleSet
from gati.learning.state import StateDir, VersionRecord, Window
from gati.pipeline.certify import Costs
from gati.runtime.cascade import Answer, Done, Verdict, run_cascade
from gati.runtime.engine import Engine, eager_steps
from gati.runtime.verdicts import Lookup

log = logging.getLogger("gati.learning.online")

Refit = Callable[[dict[int, dict], SampleSet, int], dict[int, Cache]]
MAX_BACKLOG = 256  # unsampled misses waiting to become samples beyond this are dropped (counted)


@dataclass(frozen=True)
class OnlineConfig:
    sample_rate: float = 0.1  # p: the share of requests the server's coin samples
    alpha: float = ALPHA  # the live bound's level, and each review's (split between its two tests)
    target: float | None = None  # None: the bundle's
    learn: bool = True  # False: the guarantee alone (no tier, no refitting)
    tier: TierConfig | None = field(default_factory=TierConfig)  # None: no neighbour tier
    max_samples: int = 4000  # samples kept (the most recent)
    refit_every: int = 1000  # samples since the last refit began that start the next one
    refit_seconds: float | None = None  # or seconds since then, whichever comes first
    select_samples: int = 300  # held-out coin samples from before a fit: build the candidate's threshold path
    # coin samples of later requests that certify it: at a 0.99 target, 1,000 admit 3 wrong answers (0.3%),
    # 2,000 admit 11; 400 admit none (one-sided Clopper-Pearson at alpha / 2)
    certify_samples: int = 1000
    headroom: int = HEADROOM  # the fallback controller's (gati.learning.guarantee)
    background: bool = True  # False: learning runs in settle(), in order (deterministic)
    # the learning threads' niceness above serving's, with one OpenMP thread each (gati.learning.background): they use
    # the cores serving leaves idle; 0: the same priority (learning keeps pace, and slows serving)
    background_nice: int = BACKGROUND_NICE
    coin_seed: int | None = None  # None: from the OS
    fit_seed: int = 0
    save_every: int = 500  # samples between saves to the state directory

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_rate <= 1.0:
            raise GatiError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        for name in ("alpha",) + (("target",) if self.target is not None else ()):
            if not 0.0 < getattr(self, name) < 1.0:
                raise GatiError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("max_samples", "refit_every", "select_samples", "certify_samples", "headroom", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GatiError(f"{name} must be an integer >= 1, got {value!r}")
        if self.refit_seconds is not None and not self.refit_seconds > 0:
            raise GatiError(f"refit_seconds must be > 0, got {self.refit_seconds}")
        nice = self.background_nice
        if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
            raise GatiError(f"background_nice must be an integer in 0..19, got {nice!r}")


@dataclass(frozen=True)
class OnlineAnswer:
    answer: Answer
    exit_name: str  # a cut's name, "tier:<cut name>" (the neighbour tier answered), or "final"
    hit: bool
    sampled: bool  # the server's coin
    level: int  # the rung it was served at (0: no early exits)
    version: int  # the cache version serving it (0: the bundle's)
    request: int  # its index in the served stream

    @property
    def label(self) -> int:
        return self.answer.label


@dataclass
class LearnerStatus:
    """What the learner can say at any moment (metrics, `gati eval`)."""

    requests: int
    live: AgreementSnapshot
    level: int
    levels: int  # rungs of the ladder, no early exits included
    version: int
    versions_deployed: int  # by this engine (a resumed version not counted)
    deployed_by: dict[str, int]  # of those, how many each trial made (gati.learning.refit: retune, refit)
    reviews: int
    transitions: list[Transition]
    samples: int
    samples_dropped: int
    tier_size: int
    tier_bytes: int


@dataclass
class _Version:
    number: int
    caches: dict[int, Cache]  # by plan cut
    levels: list[list[float]]  # certified threshold vectors over the slots, conservative to chosen


@dataclass(frozen=True)
class _Serving:
    """What requests are served with now: swapped whole, read once per request."""

    version: _Version
    rung: int
    lookups: dict[int, Lookup]  # plan cuts whose threshold is finite at this rung
    tier_threshold: float


@dataclass
class _Candidate:
    caches: dict[int, Cache] | None  # None: only the serving version is re-tested
    after: int  # the last request that could be fitted on: fresh samples come after it
    select: SampleSet
    fitted_on: Window


class _RequestSource:
    """One request's verdict source: the tier first at its cut, then the cache; keeps the activations it sees."""

    def __init__(self, online: OnlineEngine, serving: _Serving, coin: bool) -> None:
        self.online, self.serving, self.coin = online, serving, coin
        self.acts: dict[int, Tensor] = {}
        self.tier_vector: np.ndarray | None = None
        self.tier_verdict: TierVerdict = EMPTY
        self.by_tier = False

    def ask(self, cut: int, act: Tensor) -> Done:
        self.acts[cut] = act
        tier, threshold = self.online.tier, self.serving.tier_threshold
        verdict = Verdict(cut, -1, 0.0, False)  # nothing answers here at this rung: a miss, never a missing verdict
        # A tier that does not serve at this rung is judged off the request path (`_learn_from`), for the sample
        if tier is not None and cut == tier.config.cut and math.isfinite(threshold):
            self.tier_vector = tier_vector(tier, act)
            self.tier_verdict = tier.judge(self.tier_vector, threshold)
            verdict = Verdict.judge(cut, self.tier_verdict.label, self.tier_verdict.confidence, threshold)
            if verdict.hit:
                self.by_tier = True
                return Done(verdict)
        lookup = self.serving.lookups.get(cut)
        # A missing verdict (None) would stop every later cut from answering, and from recording its activation
        return Done(verdict if lookup is None else lookup.judge(cut, act))


class OnlineEngine:
    def __init__(self, bundle: Bundle, config: OnlineConfig | None = None, state_dir: str | None = None,
                 refit: Refit = refit_caches, on_checked: Callable[[bool, bool], None] | None = None) -> None:
        """`refit` makes the candidate caches (the default fits fresh copies); `on_checked(hit, agreed)` is told
        of every request the coin sampled once its answer is known to agree with the base model's or not."""
        self.config = cfg = config or OnlineConfig()
        self.bundle, self.refit, self.on_checked = bundle, refit, on_checked
        self.engine = Engine(bundle, "sync", graphs=False)  # lookups inline; the tier searches on the host
        self.target = float(cfg.target if cfg.target is not None else bundle.manifest.target)
        self.tier = self._make_tier(bundle) if cfg.learn and cfg.tier is not None else None
        self._layout(bundle)
        self.samples = SampleBook(cfg.max_samples, self.plan_cuts, bundle.manifest.num_classes)
        self.live = LiveAgreement(cfg.sample_rate, cfg.alpha)
        bundle_levels = [self._over_slots(level) for level in bundle.plan.levels[1:]]
        self._version = _Version(0, dict(bundle.caches), bundle_levels)
        self.controller = FallbackController(self.live, self.target, len(bundle_levels) + 1, headroom=cfg.headroom)
        self._rng = np.random.default_rng(cfg.coin_seed)
        self._lock = threading.Lock()  # the request counter, the coin, the live bound and the controller
        self._requests = 0
        self._deployed: dict[str, int] = {}  # versions deployed by this engine, by the trial that made them
        self._reviews, self._dropped = 0, 0
        self._candidate: _Candidate | None = None
        self._refit_mark = (0, time.monotonic())  # samples added and the time when the last refit began
        self._saved_at = 0
        self.state = StateDir(state_dir) if state_dir is not None else None
        if self.state is not None:
            self._resume()
        self._serve(self._version, self.controller.index)
        self._inline: list[Callable[[], None]] = []
        self._work: queue.Queue | None = queue.Queue() if cfg.background else None
        self._closed, self._wake = threading.Event(), threading.Event()
        self._threads = [threading.Thread(target=loop, name=name, daemon=True) for loop, name in
                         ((self._work_loop, "gati-learn"), (self._refit_loop, "gati-refit"))] if cfg.background else []
        for t in self._threads:
            t.start()

    def _layout(self, bundle: Bundle) -> None:
        """The slots (tier and caches, in the order a request meets them), the steps that stop at each slot's cut,
        and the latency model's costs (the bundle's profile, and the tier's search timed here)."""
        m, entries = bundle.manifest, bundle.plan.entries
        self.slots = order_slots([Slot(e.cut, e.variant) for e in entries]
                                 + ([Slot(self.tier.config.cut, TIER)] if self.tier is not None else []))
        self.steps = eager_steps(self.engine.stages, bundle.staged.cuts, {s.cut for s in self.slots})
        self.plan_cuts = [e.cut for e in entries]
        self.configs = {e.cut: bundle.caches[e.cut].config() for e in entries}
        self.costs = Costs.of(m.profile, [(e.cut, e.variant) for e in entries])
        if self.tier is not None:
            self.costs.lookup_ms[(self.tier.config.cut, TIER)] = time_tier(self.tier)

    # ---- the request path ----------------------------------------------------------------------------------

    def predict(self, x: Tensor, cancel: threading.Event | None = None, coin: bool | None = None) -> OnlineAnswer:
        """One request. `coin`: the server's coin when the caller drew it (an aggregator); else drawn here."""
        x = self.engine.validate(x)
        with self._lock:
            request = self._requests
            self._requests += 1
            sampled = bool(self._rng.random() < self.config.sample_rate) if coin is None else bool(coin)
        serving = self._serving
        source = _RequestSource(self, serving, sampled)
        with torch.inference_mode():
            trace = run_cascade(x, self.steps, source, 0, self.engine.head,
                                stop=cancel.is_set if cancel is not None else None)
        answer = trace.answer
        hit = answer.exit_cut is not None
        if hit and sampled:
            self._defer(lambda: self._shadow(request, source, answer))
        else:
            self._observe(hit, False)
            if not hit:
                self._defer(lambda: self._learn_from(request, sampled, source, trace.output[0]),
                            droppable=not sampled)
                if sampled and self.on_checked is not None:
                    self.on_checked(False, True)
        name = answer.exit_name if not source.by_tier else f"tier:{answer.exit_name}"
        return OnlineAnswer(answer, name, hit, sampled, serving.rung, serving.version.number, request)

    def predict_base(self, x: Tensor) -> int:
        return self.engine.predict_base(x)

    def _observe(self, hit: bool, sampled: bool, wrong: bool | None = None) -> None:
        with self._lock:
            rung = self.controller.observe(hit, sampled, wrong)
            if rung != self._serving.rung:
                self._serve(self._serving.version, rung)

    def _serve(self, version: _Version, rung: int) -> None:
        """Serve from the next request on with `version` at `rung` (one reference swap)."""
        vector = [math.inf] * len(self.slots) if rung == 0 else version.levels[rung - 1]
        lookups, tier_threshold = {}, math.inf
        for slot, threshold in zip(self.slots, vector):
            if slot.name == TIER:
                tier_threshold = threshold
            elif math.isfinite(threshold):
                lookups[slot.cut] = Lookup(version.caches[slot.cut], threshold)
        self._version = version
        self._serving = _Serving(version, rung, lookups, tier_threshold)

    # ---- learning from requests that ran to the end (off the request path) ------------------------------------

    def _shadow(self, request: int, source: _RequestSource, answer: Answer) -> None:
        """Finish a sampled hit with the full model from where it exited; then it counts and teaches."""
        x = source.acts[answer.exit_cut]
        with torch.inference_mode():
            for i in range(answer.exit_cut + 1, len(self.engine.stages)):
                x = self.engine.stages[i](x)
                if self.steps[i].cut is not None:
                    source.acts.setdefault(i, x)
        logits = x[0]
        agreed = int(logits.argmax()) == answer.label
        self._observe(True, True, not agreed)
        if self.on_checked is not None:
            self.on_checked(True, agreed)
        self._learn_from(request, True, source, logits)

    def _learn_from(self, request: int, coin: bool, source: _RequestSource, logits: Tensor) -> None:
        """A request that ran to the end: a sample, and (learning) a new entry in the tier."""
        with torch.inference_mode():
            features = {cut: self.bundle.caches[cut].reduce(source.acts[cut]).reshape(-1).float().cpu().numpy().astype(np.float16)
                        for cut in self.plan_cuts}
            logits_np = logits.float().cpu().numpy()
        vector = None
        if self.tier is not None:
            vector = source.tier_vector if source.tier_vector is not None else \
                tier_vector(self.tier, source.acts[self.tier.config.cut])
            if coin and source.tier_vector is None:
                # The tier did not serve this request: what it would have said, from every request before this one
                # (the queue runs in order), is what a review certifies the tier's rule on
                source.tier_verdict = self.tier.judge(vector, math.inf)
        self.samples.add(Sample(request, coin, features, logits_np, source.tier_verdict))
        if vector is not None:  # learning with a tier
            self.tier.add(vector, int(np.argmax(logits_np)))
        if self.state is not None and self.samples.added - self._saved_at >= self.config.save_every:
            self._save()
        self._wake.set()

    def _defer(self, job: Callable[[], None], droppable: bool = False) -> None:
        if self._work is None:
            self._inline.append(job)
        elif droppable and self._work.qsize() > MAX_BACKLOG:
            self._dropped += 1  # never a sampled request: its check and its sample always run
        else:
            self._work.put(job)

    def settle(self) -> None:
        """Without background threads: run the learning the requests so far left behind, then a refit step.
        With them: wait until the work queued so far is done (the refit thread goes on by itself)."""
        if self._work is not None:
            self._work.join()
            return
        while self._inline:
            jobs, self._inline = self._inline, []
            for job in jobs:
                job()
        self._refit_step()

    def _work_loop(self) -> None:
        assert self._work is not None
        as_background(self.config.background_nice)
        while True:
            job = self._work.get()
            try:
                if job is None:
                    return
                job()
            except Exception:  # a failed job must not stop the learner; the request was already answered
                log.exception("learning from a request failed")
            finally:
                self._work.task_done()

    # ---- refitting and review -------------------------------------------------------------------------------

    def _refit_loop(self) -> None:
        as_background(self.config.background_nice)
        while not self._closed.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self._refit_step()
            except Exception:
                log.exception("refitting failed; the serving version stays")
                self._candidate = None

    def _refit_step(self) -> None:
        """Begin a refit when one is due; review the candidate once enough fresh coin samples came in."""
        if self._candidate is None:
            if self._refit_due():
                self._begin_refit()
        elif self.samples.count(after=self._candidate.after) >= self.config.certify_samples:
            self._review(self._candidate)

    def _refit_due(self) -> bool:
        added, since = self._refit_mark
        if not self.config.learn:  # the guarantee alone: re-test the serving version after a fallback
            return self._serving.rung < len(self._version.levels) and self.samples.added > added
        if self.samples.added - added >= self.config.refit_every:
            return True
        seconds = self.config.refit_seconds
        return seconds is not None and time.monotonic() - since >= seconds and self.samples.added > added

    def _begin_refit(self) -> None:
        after = self._requests - 1
        self._refit_mark = (self.samples.added, time.monotonic())
        pool = self.samples.snapshot(upto=after)
        coins = np.flatnonzero(pool.coin)
        select_rows = coins[-self.config.select_samples:]
        fit_rows = np.setdiff1d(np.arange(len(pool)), select_rows)
        fit = pool.subset(fit_rows)
        caches = None
        if self.config.learn and len(fit) >= 2 and self.plan_cuts:
            caches = self.refit(self.configs, fit, self.config.fit_seed)
        first = int(fit.requests.min()) if len(fit) else 0
        self._candidate = _Candidate(caches, after, pool.subset(select_rows),
                                     Window(first, int(fit.requests.max()) if len(fit) else 0, len(fit)))
        log.info("refit %s on %d samples; certifying on coin samples after request %d",
                 "done" if caches is not None else "skipped", len(fit), after)

    def _review(self, candidate: _Candidate) -> None:
        fresh = self.samples.snapshot(after=candidate.after, coin_only=True)
        incumbent = self._version
        found = review(self.slots, (incumbent.caches, incumbent.levels), candidate.caches, candidate.select, fresh,
                       self.costs, self.target, self.config.alpha, retune=self.config.learn,
                       serving=self._serving.rung)
        self._reviews += 1
        self._candidate = None
        version = None
        if found.deployed is not None:
            number = incumbent.number + 1 if self.state is None else self._next_number()
            version = _Version(number, found.deployed.caches, found.levels)
            self._deployed[found.deployed.name] = self._deployed.get(found.deployed.name, 0) + 1
            if self.state is not None:
                self.state.save_version(self._record(version, found.deployed, candidate, fresh),
                                        found.deployed.caches)
        self._log_review(found, candidate, fresh, version)
        with self._lock:
            if version is not None:
                self.controller.recertified(len(version.levels), len(version.levels) + 1)
                self._serve(version, len(version.levels))
            elif found.incumbent_levels_passed > self.controller.index:
                self.controller.recertified(found.incumbent_levels_passed)
                self._serve(self._version, found.incumbent_levels_passed)
        if self.state is not None:
            self._save()

    def _record(self, version: _Version, trial: Trial, candidate: _Candidate, fresh: SampleSet) -> VersionRecord:
        cert = certificate(trial.result, self.target, fresh, len(candidate.select), self._reviews)
        window = Window(int(fresh.requests.min()), int(fresh.requests.max()), len(fresh))
        fitted = candidate.fitted_on if trial.name == REFIT else Window(0, 0, 0)
        return VersionRecord(version.number, now(), [(s.cut, s.name) for s in self.slots], version.levels, cert,
                             trial.result.hit_rate, trial.expected_ms, fitted, window, self.bundle.sha256,
                             made_by=trial.name)

    def _log_review(self, found: Review, candidate: _Candidate, fresh: SampleSet, version: _Version | None) -> None:
        line = {"review": self._reviews, "created": now(), "version": None if version is None else version.number,
                "deployed": None if found.deployed is None else found.deployed.name, "reason": found.reason,
                "fitted_on": vars(candidate.fitted_on), "certified_on": len(fresh), "select": len(candidate.select),
                "trials": [{"name": t.name, "vectors_passed": len(t.result.passed), "tested": t.result.tested,
                            "agreement": t.result.agreement, "hit_rate": t.result.hit_rate,
                            "wrong_hits": t.result.wrong_hits, "lower_bound": t.result.lower_bound,
                            "expected_ms": t.expected_ms} for t in found.trials],
                "serving": {"version": self._version.number, "levels_passed": found.incumbent_levels_passed,
                            "expected_ms": found.incumbent_ms},
                "base_ms": found.base_ms, "alpha_each": found.alpha, "target": self.target}
        log.info("review %d: %s", self._reviews, found.reason)
        if self.state is not None:
            self.state.append_review(line)

    def _next_number(self) -> int:
        assert self.state is not None
        return max([self._version.number, *self.state.versions()]) + 1

    # ---- the state directory ----------------------------------------------------------------------------------

    def _save(self) -> None:
        assert self.state is not None
        self._saved_at = self.samples.added
        self.state.save_samples(self.samples.snapshot())
        if self.tier is not None:
            self.state.save_tier(self.tier.export())
        with self._lock:
            progress = {"bundle_sha256": self.bundle.sha256, "requests": self._requests,
                        "version": self._version.number, "live": self.live.to_state(),
                        "controller": self.controller.to_state()}
        self.state.save_progress(progress)

    def _resume(self) -> None:
        """Pick up where the state directory says: the latest certified version, samples, tier, live counts."""
        assert self.state is not None
        progress = self.state.load_progress()
        if progress is not None and progress.get("bundle_sha256") != self.bundle.sha256:
            raise GatiError(f"{self.state.path} holds the state of another bundle "
                            f"({str(progress.get('bundle_sha256'))[:12]}...); use another --state-dir")
        versions = self.state.versions()
        if versions:
            record, caches = self.state.load_version(versions[-1])
            if record.bundle_sha256 != self.bundle.sha256 or [tuple(s) for s in record.slots] != \
                    [(s.cut, s.name) for s in self.slots]:
                raise GatiError(f"{self.state.path}: version {record.number} was certified for another bundle "
                                "or another tier; use another --state-dir")
            self._version = _Version(record.number, caches, record.levels)
        saved = self.state.load_samples()
        if saved is not None and sorted(saved.features) == sorted(self.plan_cuts):
            self.samples.restore(saved)
        tier = self.state.load_tier() if self.tier is not None else None
        if tier is not None:
            self.tier.restore(tier)
        levels = len(self._version.levels) + 1
        if progress is not None:
            self.live = LiveAgreement.from_state(progress["live"])
            self.live.set_sampling_probability(self.config.sample_rate)
            self.controller = FallbackController(self.live, self.target, levels, headroom=self.config.headroom)
            if progress.get("version") == self._version.number:
                self.controller.restore(progress["controller"])
            self._requests = max(int(progress["requests"]), int(saved.requests.max()) + 1 if saved is not None
                                 and len(saved) else 0)
        else:
            self.controller = FallbackController(self.live, self.target, levels, headroom=self.config.headroom)
        self._refit_mark = (self.samples.added, time.monotonic())
        self._saved_at = self.samples.added
        log.info("resumed version %d from %s", self._version.number, self.state.path)

    # ---- helpers and status -------------------------------------------------------------------------------------

    def _make_tier(self, bundle: Bundle) -> NeighbourTier:
        config = self.config.tier
        assert config is not None
        shapes = bundle.manifest.cut_shapes
        if config.cut >= len(shapes):
            raise GatiError(f"the tier's cut {config.cut} is not one of the bundle's {len(shapes)} cuts")
        return NeighbourTier(config, tuple(shapes[config.cut]), bundle.manifest.num_classes)

    def _over_slots(self, level: list[float]) -> list[float]:
        """A plan level (one threshold per plan entry) as a vector over the slots (the tier never answers)."""
        by_cut = {e.cut: t for e, t in zip(self.bundle.plan.entries, level)}
        return [math.inf if s.name == TIER else by_cut[s.cut] for s in self.slots]

    @property
    def level(self) -> int:
        return self._serving.rung

    def lower_bound(self) -> float:
        """The live lower bound on the agreement of all requests counted so far."""
        with self._lock:
            return self.live.lower_bound

    @property
    def version(self) -> int:
        return self._serving.version.number

    @property
    def caches(self) -> dict[int, Cache]:
        """The serving version's caches, by plan cut."""
        return self._serving.version.caches

    def status(self) -> LearnerStatus:
        with self._lock:
            live = self.live.snapshot()
            transitions = list(self.controller.transitions)
            requests = self._requests
        serving = self._serving
        return LearnerStatus(requests, live, serving.rung, len(serving.version.levels) + 1, serving.version.number,
                             sum(self._deployed.values()), dict(self._deployed), self._reviews, transitions,
                             len(self.samples),
                             self._dropped, self.tier.size if self.tier else 0,
                             self.tier.nbytes() if self.tier else 0)

    def close(self) -> None:
        """Finish the queued learning, stop the threads, save the state."""
        if self._work is not None and not self._closed.is_set():
            self._work.put(None)
            self._closed.set()
            self._wake.set()
            for t in self._threads:
                t.join()
        self._closed.set()
        self.engine.close()
        if self.state is not None:
            self._save()

    def __enter__(self) -> OnlineEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
