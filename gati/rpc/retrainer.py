"""The retrainer: refits caches on live samples and deploys a new version only if it is no worse.

Two ways a version is made. Automatically (gati/rpc/autorefit.py, on by default): every `refit_every` sampled
requests, all the plan's caches are refitted and go live together only after the whole cascade is re-certified
on later samples. By hand, one cut at a time, with the gate described below (`retrain`, `propose`).

Samples (a cut's reduced features, the full model's label and logits) arrive from the aggregator
for the requests it sampled. `retrain(cut)` fits a fresh copy of the deployed cache (same variant
and hyper-parameters) on the training share of the samples, then compares candidate and deployed
cache on the held-back share at the plan's threshold:

    agreement = share of held-back samples that miss (confidence < threshold) or hit with the
                full model's label: the cut's contribution to end-to-end agreement

A candidate is deployed (pushed as version N+1 to the predictor serving the cut, which swaps it in
atomically) only if its agreement is at least the deployed cache's. `propose(cut, blob)` runs a
cache built elsewhere through the same gate. A candidate that fails is never pushed.

With a state directory (gati/rpc/durable.py) each deployed version (its cache file and the gate's
scores) is written once the predictor accepted it, and the samples are snapshotted every
`snapshot_s` seconds when they changed and when the retrainer drains; a restarted retrainer resumes
both (a SIGKILL loses at most the samples of the last `snapshot_s` seconds and of a snapshot being
written). Versions only grow, on both sides: at start, every `resync_s` seconds and before each
deploy the retrainer reads each predictor's versions (`caches`). A predictor serving an older
version than the retrainer deployed (it lost its state) gets the retrainer's again; one serving a
newer version (the retrainer lost its state, or was killed between the predictor's answer and its
own write) hands over that version's cache (`cache`), which the retrainer adopts as the deployed
one, so that the next deploy is numbered above it and is gated against what is served.

With an online neighbour tier (gati/rpc/tier.py) the retrainer also keeps the tier's verdict on each joint sample
(it comes with the sample), certifies the tier's threshold with the whole cascade, and deploys it to the index
service, numbered and resynchronised like a cut's version (the tier's record in the state directory, `tier.json`).
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gati.bundle import BundleInfo
from gati.cache import Cache, make_cache
from gati.errors import GatiError
from gati.learning.background import as_background
from gati.learning.neighbours import TIER
from gati.learning.atomic import atomic_npz, load_npz
from gati.learning.tier_config import TierConfig
from gati.rpc.autorefit import AutoRefit, AutoRefitConfig, Decision, Serving, plan_layout, step_down
from gati.rpc.cachefile import cache_from_bytes, cache_to_bytes, mismatch
from gati.rpc.config import RetrainerConfig
from gati.rpc.durable import VersionStore, load_samples, save_samples
from gati.rpc.gen.gati_idl.ttypes import (
    CacheUpdate,
    InvalidRequest,
    RetrainResult,
    Sample,
    TierUpdate,
    TierVerdict,
)
from gati.rpc.metrics import RetrainerMetrics
from gati.rpc.periodic import Every
from gati.rpc.samples import BadSample, CheckedSample, SampleArrays, SampleRing, TierVerdictRing, check_sample
from gati.rpc.service import ServiceBase
from gati.rpc.tier import TierRecord
from gati.rpc.transport import WARN_EVERY_S, PeerUnavailable, Pool, Throttle

log = logging.getLogger("gati.rpc.retrainer")
REFIT_POLL_S = 1.0  # how often the automatic refits look whether one is due
TIER_VERDICTS = "tier_verdicts.npz"  # beside the samples: the online tier's verdict on each joint sample
ONE_HOT_LOGIT = 4.0  # teacher logit margin when a sample carries only the label


@dataclass
class Score:
    agreement: float
    hit_rate: float


def score(cache: Cache, feats: torch.Tensor, labels: torch.Tensor, threshold: float) -> Score:
    """Agreement (misses count as right) and hit rate of `cache` on samples at `threshold`."""
    predicted, conf = cache.predict(feats)
    hit = conf >= threshold
    return Score(float((~hit | (predicted == labels)).float().mean()), float(hit.float().mean()))


@dataclass
class CutState:
    cut: int
    cut_name: str
    threshold: float
    cache: Cache                      # the version deployed
    version: int
    predictor: Pool                   # where the cut is served
    samples: SampleRing | None = None  # made by the handler, sized by `sample_capacity`
    lock: threading.Lock = field(default_factory=threading.Lock)
    blob: bytes | None = None         # the deployed version's cache file (None: the bundle's version 0)
    received: int = 0                 # samples appended since start (the snapshots compare it)
    snapshotted: int = 0              # `received` when the last snapshot was taken


@dataclass
class TierState:
    """The online tier as the retrainer deploys it: its threshold's version, kept by the index service."""
    config: TierConfig
    index: Pool
    lookup_ms: float                  # its reduce and search, timed here: its cost in the latency model
    bundle_sha256: str
    version: int = 0
    threshold: float = math.inf       # inf: it answers nothing (until a review certifies a threshold)
    lock: threading.Lock = field(default_factory=threading.Lock)
    verdicts: TierVerdictRing | None = None  # made by the handler, as large as the largest sample ring


def sample_capacity(cfg: RetrainerConfig, feat_shape: tuple[int, ...], n_cuts: int) -> int:
    """Samples one cut may hold: `max_samples`, or fewer when its features would exceed the cut's
    equal share of `max_sample_mb` (a 64x8x8 convfc input is 16 KB, so a count alone would let
    20,000 samples of three such cuts take gigabytes: the 30-minute soak saw the retrainer grow
    ~15 MB a minute)."""
    feature_bytes = 4 * int(np.prod(feat_shape))
    by_memory = int(cfg.max_sample_mb * 2**20 / max(n_cuts, 1) / max(feature_bytes, 1))
    return max(1, min(cfg.max_samples, by_memory))


class RetrainerHandler(ServiceBase):
    role = "retrainer"

    def __init__(self, cuts: dict[int, CutState], cfg: RetrainerConfig, num_classes: int,
                 metrics: RetrainerMetrics | None = None, store: VersionStore | None = None,
                 samples_dir: Path | None = None, info: BundleInfo | None = None, tier: TierState | None = None):
        self.metrics: RetrainerMetrics = metrics or RetrainerMetrics()
        super().__init__(self.metrics)
        self.cuts, self.cfg, self.num_classes = cuts, cfg, num_classes
        self.store, self.samples_dir, self.tier = store, samples_dir, tier
        self._refusals_logged = Throttle()
        self._resync_logged = Throttle()
        self._periodic: list[Every] = []
        # One whole-cascade push at a time, a review's or a live fallback's (a refit's fitting runs outside it, so a
        # fallback never waits for one).
        self._cascade = threading.RLock()
        for st in cuts.values():
            st.samples = SampleRing(sample_capacity(cfg, st.cache.feat_shape, len(cuts)), st.cache.feat_shape,
                                    num_classes)
            st.samples.extend(self._resume_samples(st))
            found = store.latest(st.cut_name, st.cache) if store else None
            if found is not None:
                st.cache, st.version, st.blob = found.cache, found.version, found.blob
                st.threshold = st.threshold if found.record.threshold is None else found.record.threshold
                log.info("cut %s resumes version %d and %d samples", st.cut_name, st.version, len(st.samples))
            self.metrics.version.labels(st.cut_name).set(st.version)
            self.metrics.held.labels(st.cut_name).set(len(st.samples))
        if tier is not None:
            self._resume_tier(tier)
        self.slots, costs = ([], None) if info is None else \
            plan_layout(info, set(cuts), None if tier is None else (tier.config.cut, tier.lookup_ms))
        # The serving version's certified vectors over the slots (conservative first) and the rung served: the
        # live fallback steps down them. At start, the bundle's levels when its chosen vector is what is served.
        self._levels, self._rung = self._bundle_ladder(info)
        auto = None if info is None else AutoRefitConfig.of(cfg, info.manifest.target)
        self.auto = None
        if auto is not None:
            self.auto = AutoRefit(auto, self.slots, costs, {c: st.samples for c, st in cuts.items()}, self._serving,
                                  self._deploy_cascade, tier=None if tier is None else tier.verdicts)

    def start(self) -> RetrainerHandler:
        """The background threads: resync with the predictors, automatic refits, and snapshots of the samples with
        a state directory."""
        self._periodic = [Every("retrainer-resync", self.cfg.resync_s, self.resync)]
        if self.auto is not None:  # refits fit on the cores serving leaves idle (the retrainer may share a host)
            self._periodic.append(Every("retrainer-refit", REFIT_POLL_S, self._auto_step, setup=as_background))
        if self.samples_dir is not None:
            self._periodic.append(Every("retrainer-snapshot", self.cfg.snapshot_s, self.snapshot))
        for p in self._periodic:
            p.start()
        return self

    def close(self) -> None:
        """Stop the background threads; a last snapshot keeps every sample received (a polite stop loses none)."""
        for p in self._periodic:
            p.stop()
        self.snapshot()

    def add_samples(self, samples: list[Sample], tier: TierVerdict | None = None) -> None:
        checked: list[tuple[CutState, CheckedSample]] = []
        for s in samples:
            st = self.cuts.get(s.cut)
            try:
                if st is None:
                    raise BadSample("cut", f"cut {s.cut} has no cache in the plan")
                ok = check_sample(s, st.cache.feat_shape, self.num_classes)  # whole, before it is stored
            except BadSample as e:
                if self._refusals_logged.allow():
                    log.warning("refused a sample (%s): %s (refusals are logged once per %d s)", e.reason, e,
                                WARN_EVERY_S)
                self.metrics.dropped.labels(e.reason).inc()
                continue
            checked.append((st, ok))
        number = self._joint_number(checked)
        if number >= 0 and self.tier is not None:
            self._tier_verdict(number, tier)
        touched: dict[int, CutState] = {}
        for st, ok in checked:
            st.samples.append(ok, number)
            st.received += 1
            self.metrics.samples.labels(st.cut_name).inc()
            touched[st.cut] = st
        for st in touched.values():  # once per cut and batch, not per sample
            self.metrics.held.labels(st.cut_name).set(len(st.samples))

    def _joint_number(self, checked: list[tuple[CutState, CheckedSample]]) -> int:
        """A message that holds every planned cut once, with the base logits, is one sampled request run to the end:
        a joint sample, numbered for the automatic refits (-1: it is not one)."""
        if self.auto is None or sorted(st.cut for st, _ in checked) != sorted(self.cuts) \
                or any(ok.logits is None for _, ok in checked) or len({ok.label for _, ok in checked}) != 1:
            return -1
        self.metrics.joint.inc()
        return self.auto.number()

    def _tier_verdict(self, number: int, verdict: TierVerdict | None) -> None:
        """Keep the tier's verdict on joint sample `number`; a missing or malformed one is no verdict (label -1),
        which the tier slot scores as a miss."""
        label, confidence = -1, 0.0
        if verdict is not None:
            ok = isinstance(verdict.label, int) and -1 <= verdict.label < self.num_classes and \
                isinstance(verdict.confidence, float) and 0.0 <= verdict.confidence <= 1.0
            if ok:
                label, confidence = verdict.label, verdict.confidence
            else:
                self.metrics.dropped.labels("tier").inc()
        self.tier.verdicts.put(number, label, confidence)

    def retrain(self, cut: int) -> RetrainResult:
        with self.gate.enter(lambda: InvalidRequest("the retrainer is shutting down")):
            st = self._state(cut)
            with st.lock:
                feats, labels, teacher = self._arrays(st)
                hold = np.arange(len(labels)) % round(1 / self.cfg.holdout) == 0
                train = ~hold
                candidate = make_cache(**st.cache.config())
                try:
                    candidate.fit(feats[train], teacher[train])
                except GatiError as e:
                    raise InvalidRequest(f"refitting cut {st.cut_name} failed: {e}") from e
                return self._gate_and_deploy(st, candidate, feats[hold], labels[hold], int(train.sum()))

    def propose(self, cut: int, blob: bytes) -> RetrainResult:
        with self.gate.enter(lambda: InvalidRequest("the retrainer is shutting down")):
            st = self._state(cut)
            try:
                candidate = cache_from_bytes(blob)
            except GatiError as e:
                raise InvalidRequest(f"the proposed cache is not readable: {e}") from e
            if candidate.config() != st.cache.config():
                raise InvalidRequest(f"the proposed cache is a {candidate!r}; cut {st.cut_name} serves {st.cache!r}")
            with st.lock:
                feats, labels, _ = self._arrays(st)  # none of them fitted the candidate: all are held back
                return self._gate_and_deploy(st, candidate, feats, labels, 0)

    def fallback(self, reason: str) -> None:
        """The aggregator's live bound is about to fall below the target: one rung down the serving version's
        certified vectors, at once (rung 0: no early exits); only a review climbs back (gati/rpc/autorefit.py).
        Already serving none: nothing to do."""
        reason = str(reason)[:500]
        with self._cascade:
            decision = step_down(self._serving(), self.slots, f"live fallback from the aggregator: {reason}",
                                 {"live": 1.0})
            if decision is None:
                log.info("live fallback asked (%s): no early exits are served already", reason)
                return
            pushed = self._deploy_cascade(decision)
        self.metrics.live_fallbacks.labels("pushed" if pushed else "deploy_failed").inc()

    # ---- state that survives restarts ---------------------------------------------------------

    def _samples_file(self, st: CutState) -> Path | None:
        return None if self.samples_dir is None else self.samples_dir / f"{st.cut_name}.npz"

    def _resume_samples(self, st: CutState) -> SampleArrays:
        path = self._samples_file(st)
        if path is None:
            return SampleArrays.empty(st.cache.feat_shape, self.num_classes)
        return load_samples(path, st.cache.feat_shape, self.num_classes)

    def snapshot(self) -> None:
        """Write the samples of every cut that received some since its last snapshot (and the tier's verdicts on
        the joint samples, when the cluster has a tier)."""
        changed = False
        for st in self.cuts.values():
            path = self._samples_file(st)
            received = st.received
            if path is None or received == st.snapshotted:
                continue
            save_samples(path, st.samples.arrays())  # a copy: add_samples goes on while it is written
            st.snapshotted = received
            changed = True
        if changed and self.tier is not None and self.samples_dir is not None:
            atomic_npz(self.samples_dir / TIER_VERDICTS, self.tier.verdicts.arrays())

    def resync(self) -> None:
        for st in self.cuts.values():
            with st.lock:
                self._resync(st)
        if self.tier is not None:
            with self.tier.lock:
                self._resync_tier()

    def _resync(self, st: CutState) -> None:
        """Make the retrainer's and the cut's predictor's versions agree, the higher one winning (st.lock held)."""
        try:
            info = {c.cut: c for c in st.predictor.call("caches")}.get(st.cut)
            served = None if info is None else info.version
            if served is None or served == st.version:
                return
            if served < st.version:
                st.predictor.call("deploy", CacheUpdate(st.cut, st.version, st.blob, st.threshold))
                action = "pushed"
                log.warning("cut %s: %s served version %d, below the %d deployed; deployed version %d again",
                            st.cut_name, st.predictor.name, served, st.version, st.version)
            else:
                self._adopt(st, served, st.predictor.call("cache", st.cut), info.threshold)
                action = "adopted"
        except (PeerUnavailable, InvalidRequest, GatiError) as e:  # retried at the next resync or deploy
            if self._resync_logged.allow():
                log.warning("cut %s: cannot compare versions with %s: %s", st.cut_name, st.predictor.name,
                            getattr(e, "message", None) or e)
            return
        self.metrics.resyncs.labels(st.cut_name, action).inc()
        self.metrics.version.labels(st.cut_name).set(st.version)

    # ---- the online tier (gati/rpc/tier.py) ----------------------------------------------------

    def _resume_tier(self, tier: TierState) -> None:
        folder = None if self.store is None else self.store.folder.parent
        record = None if folder is None else TierRecord.load(folder, tier.bundle_sha256)
        if record is not None:
            tier.version, tier.threshold = record.version, record.threshold
        capacity = max(st.samples.capacity for st in self.cuts.values()) if self.cuts else 1
        tier.verdicts = TierVerdictRing(capacity)
        saved = None
        if self.samples_dir is not None:
            try:
                saved = load_npz(self.samples_dir / TIER_VERDICTS)
            except GatiError as e:
                log.error("%s; the tier's verdicts on earlier samples are unknown", e)
        if saved is not None:
            try:
                tier.verdicts.restore(saved)
            except (KeyError, ValueError) as e:
                log.error("the tier's saved verdicts are unusable (%s); those on earlier samples are unknown", e)
        self.metrics.version.labels("tier").set(tier.version)

    def _persist_tier(self) -> None:
        if self.store is None:
            return
        t = self.tier
        try:
            TierRecord(t.version, t.threshold, t.bundle_sha256).save(self.store.folder.parent)
        except (OSError, GatiError) as e:  # the index has it: the next resync after a restart adopts it
            log.error("tier version %d is deployed but was not written to %s: %s", t.version,
                      self.store.folder.parent, e)

    def _resync_tier(self) -> None:
        """Make the retrainer's and the index's tier versions agree, the higher one winning (tier.lock held)."""
        t = self.tier
        try:
            served = t.index.call("tier")
            if served.version == t.version:
                return
            if served.version < t.version:
                t.index.call("deploy_tier", TierUpdate(t.version, t.threshold))
                action = "pushed"
                log.warning("the index served tier version %d, below the %d deployed; deployed it again",
                            served.version, t.version)
            else:
                log.warning("the index serves tier version %d, above the %d this retrainer knew; adopted it",
                            served.version, t.version)
                t.version, t.threshold = served.version, served.threshold
                self._persist_tier()
                action = "adopted"
        except (PeerUnavailable, InvalidRequest) as e:  # retried at the next resync or deploy
            if self._resync_logged.allow():
                log.warning("tier: cannot compare versions with the index: %s", getattr(e, "message", None) or e)
            return
        self.metrics.resyncs.labels("tier", action).inc()
        self.metrics.version.labels("tier").set(t.version)

    def _push_tier(self, threshold: float) -> bool:
        t = self.tier
        with t.lock:
            self._resync_tier()
            version = t.version + 1
            try:
                t.index.call("deploy_tier", TierUpdate(version, threshold))
            except (PeerUnavailable, InvalidRequest) as e:
                log.error("tier version %d was not deployed (%s)", version, getattr(e, "message", None) or e)
                return False
            t.version, t.threshold = version, threshold
            self._persist_tier()
        self.metrics.version.labels("tier").set(version)
        return True

    def _adopt(self, st: CutState, served: int, blob: bytes, threshold: float) -> None:
        cache = cache_from_bytes(blob)
        wrong = mismatch(cache, st.cache)
        if wrong:
            raise GatiError(f"version {served} cannot be adopted: {wrong}")
        log.warning("cut %s: %s serves version %d, above the %d this retrainer knew (its state was lost or "
                    "behind); adopted it, the next deploy is version %d", st.cut_name, st.predictor.name, served,
                    st.version, served + 1)
        st.cache, st.version, st.blob, st.threshold = cache, served, blob, threshold
        self._levels, self._rung = (), 1  # a version this retrainer did not certify: its own vector is its ladder
        self._persist(st, {})

    def _persist(self, st: CutState, certificate: dict[str, float]) -> None:
        if self.store is None:
            return
        try:
            self.store.save(st.cut, st.cut_name, st.version, st.cache.variant, st.blob, certificate, st.threshold)
        except (OSError, GatiError) as e:  # the predictor has it: the next resync after a restart adopts it
            log.error("cut %s: version %d is deployed but was not written to %s: %s", st.cut_name, st.version,
                      self.store.folder, e)

    # ---- automatic refits (gati/rpc/autorefit.py) ---------------------------------------------

    def _auto_step(self) -> None:
        outcome = self.auto.step()
        if outcome is None:
            return
        if outcome.decision is None:
            self.metrics.reviews.labels("kept").inc()
            retest = outcome.review.trials[0].result  # the serving cascade re-tested
            self.metrics.review_bound.set(retest.lower_bound if retest.passed else 0.0)
        elif outcome.pushed:
            self.metrics.reviews.labels(outcome.decision.outcome).inc()
            self.metrics.review_bound.set(outcome.decision.lower_bound)
        else:
            self.metrics.reviews.labels("deploy_failed").inc()

    def _serving(self) -> Serving:
        return Serving({c: st.cache for c, st in self.cuts.items()}, {c: st.threshold for c, st in self.cuts.items()},
                       math.inf if self.tier is None else self.tier.threshold, self._levels, self._rung)

    def _bundle_ladder(self, info: BundleInfo | None) -> tuple[tuple[tuple[float, ...], ...], int]:
        """The bundle's certified levels over the slots (the tier at infinity) and the top rung, when what is served
        is the bundle's chosen vector; otherwise none known (a resumed version: its own vector is its only rung)."""
        if info is None or not self.slots:
            return (), 1
        served = [st.threshold for _, st in sorted(self.cuts.items())]
        chosen = [e.threshold for e in info.plan.entries if e.cut in self.cuts]
        tier_off = self.tier is None or math.isinf(self.tier.threshold)
        if served != chosen or not tier_off:
            return (), 1
        by_cut = [e.cut for e in info.plan.entries if e.cut in self.cuts]
        levels = []
        for level in info.plan.levels[1:]:
            thresholds = dict(zip(by_cut, (t for e, t in zip(info.plan.entries, level) if e.cut in self.cuts)))
            levels.append(tuple(math.inf if s.name == TIER else thresholds[s.cut] for s in self.slots))
        return tuple(levels), len(levels)

    def _deploy_cascade(self, decision: Decision) -> bool:
        """Push a cascade, one cut after another in cut order; True when every cut took it."""
        with self._cascade:
            return self._push_cascade(decision)

    def _push_cascade(self, decision: Decision) -> bool:
        for cut in sorted(decision.caches):
            st = self.cuts[cut]
            with st.lock:
                self._resync(st)  # numbered above what the predictor serves
                version, blob = st.version + 1, cache_to_bytes(decision.caches[cut])
                threshold = decision.thresholds[cut]
                try:
                    st.predictor.call("deploy", CacheUpdate(st.cut, version, blob, threshold))
                except (PeerUnavailable, InvalidRequest) as e:
                    log.error("cut %s: version %d (%s) was not deployed (%s); the cascade now mixes versions until "
                              "the next review", st.cut_name, version, decision.outcome,
                              getattr(e, "message", None) or e)
                    return False
                st.cache, st.version, st.blob, st.threshold = decision.caches[cut], version, blob, threshold
                self._persist(st, decision.record)
                self.metrics.version.labels(st.cut_name).set(version)
        if self.tier is not None and decision.tier_threshold != self.tier.threshold \
                and not self._push_tier(decision.tier_threshold):
            return False
        if decision.levels:  # the ladder the cascade now stands on
            self._levels, self._rung = decision.levels, decision.rung
        else:
            self._levels, self._rung = (), 1 if any(math.isfinite(t) for t in decision.thresholds.values()) else 0
        log.info("cascade %s: %s", decision.outcome, decision.summary)
        return True

    # ---- internals ------------------------------------------------------------------------

    def _state(self, cut: int) -> CutState:
        st = self.cuts.get(cut)
        if st is None:
            raise InvalidRequest(f"cut {cut} has no cache in the plan (cuts: {sorted(self.cuts)})")
        return st

    def _arrays(self, st: CutState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        held = st.samples.arrays()
        if len(held) < self.cfg.min_samples:
            raise InvalidRequest(f"cut {st.cut_name} has {len(held)} samples; retraining needs "
                                 f"{self.cfg.min_samples}")
        feats, labels = torch.from_numpy(held.features), torch.from_numpy(held.labels)
        one_hot = torch.nn.functional.one_hot(labels, self.num_classes).float() * ONE_HOT_LOGIT
        teacher = torch.where(torch.from_numpy(held.has_logits)[:, None], torch.from_numpy(held.logits), one_hot)
        return feats, labels, teacher

    def _gate_and_deploy(self, st: CutState, candidate: Cache, feats: torch.Tensor, labels: torch.Tensor,
                         n_train: int) -> RetrainResult:
        self._resync(st)  # gate against, and number above, what the predictor serves
        new, old = (score(c, feats, labels, st.threshold) for c in (candidate, st.cache))
        result = RetrainResult(cut=st.cut, deployed=False, version=st.version, candidate_agreement=new.agreement,
                               deployed_agreement=old.agreement, train_samples=n_train,
                               holdout_samples=len(labels), candidate_hit_rate=new.hit_rate,
                               deployed_hit_rate=old.hit_rate)
        if new.agreement < old.agreement:
            self.metrics.retrains.labels("rejected").inc()
            result.message = (f"rejected: agreement {new.agreement:.4f} on {len(labels)} held-back samples is "
                              f"below the deployed version's {old.agreement:.4f}")
            log.info("cut %s: %s", st.cut_name, result.message)
            return result
        version, blob = st.version + 1, cache_to_bytes(candidate)
        try:
            st.predictor.call("deploy", CacheUpdate(st.cut, version, blob, st.threshold))
        except (PeerUnavailable, InvalidRequest) as e:
            self.metrics.retrains.labels("deploy_failed").inc()
            result.message = f"validated but not deployed: {getattr(e, 'message', None) or e}"
            return result
        st.cache, st.version, st.blob = candidate, version, blob
        self._levels, self._rung = (), 1  # the ladder was certified for the caches this one replaced
        self._persist(st, {"candidate_agreement": new.agreement, "deployed_agreement": old.agreement,
                           "candidate_hit_rate": new.hit_rate, "deployed_hit_rate": old.hit_rate,
                           "holdout_samples": float(len(labels)), "train_samples": float(n_train)})
        self.metrics.retrains.labels("deployed").inc()
        self.metrics.version.labels(st.cut_name).set(version)
        result.deployed, result.version = True, version
        result.message = (f"deployed version {version}: agreement {new.agreement:.4f} >= {old.agreement:.4f}, "
                          f"hit rate {new.hit_rate:.3f} (was {old.hit_rate:.3f})")
        log.info("cut %s: %s", st.cut_name, result.message)
        return result
