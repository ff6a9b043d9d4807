"""One row's requests through the unsplit model and GATI, side by side, one record per request.

In process (`replay_in_process`) the row is `gati eval`'s replay, `gati.measure.evaluate.evaluate`, on the row's
stream: the same preprocessed tensor to both, the order swapped on every other request, each timed from its
tensor to its label; frozen caches, or (an online row) `gati.learning.online.OnlineEngine` learning while it
serves (`gati eval --online`) with the server's coin at the preset's sample rate, seeded by the preset's seed.
The adapter only turns evaluate's own per-request records into the sweep's columns (`Records`); an online row's
live lower bound, level and cache version are the ones the learner served with.

Through a cluster (`replay_cluster`) every request is sent as uint8 pixels to the aggregator, as `gati bench`
sends it, and the unsplit model answers the same pixels in this process, preprocessing included on both sides,
alternating in the same way, so the ratio compares what a client waits for. A frozen row's cluster never refits
(its aggregator still samples deploy/local.yaml's share for the retrainer, as a deployment does); an online row's
refits automatically (gati/rpc/autorefit.py). The cluster's coin is its own secret, so a cluster row's live
lower bound is the one below, from a coin drawn here at the same rate.

Frozen rows (in process and cluster) have no coin of their own: nothing is sampled while frozen caches serve. Their
live lower bound is the one a server watching them would export: the server's coin (a seeded Bernoulli draw
per request, independent of content) samples hits, and `gati.learning.guarantee.wrong_bounds` turns the sampled
wrong answers into the anytime-valid bound (`live_lower_bound`).
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from experiments.sweep.results import UNKNOWN, Records
from experiments.sweep.spec import Learning
from gati.bundle import Bundle
from gati.data import Dataset
from gati.learning.guarantee import wrong_bounds
from gati.learning.online import OnlineConfig
from gati.measure.evaluate import WARMUP, Pair, RequestRecord, evaluate, side_by_side
from gati.measure.workloads import Stream
from gati.rpc.client import GatiClient, parse_endpoint
from gati.runtime.engine import Engine

ALPHA = 0.05


def replay_in_process(bundle: Bundle, data: Dataset, stream: Stream, online: bool, sample_rate: float, seed: int,
                      progress: bool = False, background: bool = True, learning: Learning = Learning()
                      ) -> tuple[Records, dict]:
    """`evaluate` on `stream` (generated over `data`), frozen or learning (`online`, as `learning` says; its coin
    `learning.sample_rate`, else `sample_rate`); its records as columns, and what a learning row's learner did
    (reviews, versions deployed and the trial that made each: `gati.learning.refit`; empty when frozen).
    `background=False` (or `learning.between_requests`): the learner learns between requests (repeatable; the
    timings then miss its cost)."""
    sample_rate = (learning.sample_rate or sample_rate) if online else sample_rate
    background = background and not learning.between_requests
    config = OnlineConfig(sample_rate=sample_rate, coin_seed=seed, background=background,
                          refit_every=learning.refit_every, select_samples=learning.select_samples,
                          certify_samples=learning.certify_samples) if online else None
    result = evaluate(bundle, data, seed=seed, progress=progress, online=config, stream=stream)
    learned = {"reviews": result.reviews, "versions_deployed": result.versions_deployed,
               "deployed_by": dict(result.deployed_by)} if online else {}
    return evaluated_records(result.records, online, sample_rate, seed), learned


def evaluated_records(records: list[RequestRecord], online: bool, sample_rate: float, seed: int) -> Records:
    """evaluate's per-request records as the sweep's columns."""
    def column(name: str, dtype: type | None = None) -> np.ndarray:
        return np.array([getattr(r, name) for r in records], dtype=dtype)
    hit, answer, base_label = column("hit", bool), column("answer", int), column("base", int)
    if online:
        # the learner's coin falls on misses too; a sampled miss is the base model's answer, checked by nothing
        sampled, lower, level = hit & column("sampled", bool), column("lower", float), column("level", int)
    else:
        sampled, lower = live_lower_bound(hit, answer != base_label, sample_rate, seed)
        level = np.full(len(records), UNKNOWN)
    return Records(index=column("i", int), source=column("source", int), phase=column("phase", int),
                   label=column("truth", int), base_label=base_label, answer=answer,
                   exit_name=column("exit", object), stages_run=column("stages", int),
                   ms_base=column("ms_base", float), ms_gati=column("ms_gati", float), hit=hit, sampled=sampled,
                   live_lower_bound=lower, fallback_level=level, version=column("version", int))


def replay_cluster(bundle: Bundle, endpoint: str, stream: Stream, sample_rate: float, seed: int,
                   timeout_s: float = 30.0, progress: bool = False) -> Records:
    """Every request of the stream as pixels to the cluster at `endpoint`, beside the unsplit model here; timed
    side by side as evaluate times the in-process engine (`gati.measure.evaluate.side_by_side`)."""
    engine = Engine(bundle)
    client = GatiClient(*parse_endpoint(endpoint), timeout_s=timeout_s)

    def base(image: np.ndarray) -> int:
        return engine.predict_base(bundle.preprocess(image[None]))

    try:
        for image in stream.images[:WARMUP]:
            base(image), client.predict_pixels(image)
        requests = tqdm(stream.images, desc="requests", unit="req", leave=False, disable=not progress)
        pairs = list(side_by_side(requests, base, client.predict_pixels))
    finally:
        client.close()
        engine.close()
    return _cluster_records(stream, pairs, sample_rate, seed)


def _cluster_records(stream: Stream, pairs: list[Pair], sample_rate: float, seed: int) -> Records:
    """The cluster's replies (`gati.rpc.client.Prediction`) and the unsplit model's labels as columns."""
    n = len(pairs)
    answer, base_label = np.array([p.gati.label for p in pairs]), np.array([p.base for p in pairs])
    exit_name = np.array([p.gati.exit_name for p in pairs], dtype=object)
    stages = np.array([UNKNOWN if p.gati.stages_run is None else p.gati.stages_run for p in pairs])
    hit = exit_name != "final"
    sampled, lower = live_lower_bound(hit, answer != base_label, sample_rate, seed)
    return Records(index=np.arange(n), source=stream.sources[:n], phase=stream.phases[:n], label=stream.labels[:n],
                   base_label=base_label, answer=answer, exit_name=exit_name, stages_run=stages,
                   ms_base=np.array([p.ms_base for p in pairs]), ms_gati=np.array([p.ms_gati for p in pairs]),
                   hit=hit, sampled=sampled, live_lower_bound=lower, fallback_level=np.full(n, UNKNOWN),
                   version=np.zeros(n, dtype=int))


def live_lower_bound(hit: np.ndarray, wrong: np.ndarray, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sampled, bound): the server's coin on every hit, and after each request the anytime-valid lower bound on
    the agreement of all requests so far that the sampled hits support (a miss is the base model's answer)."""
    coin = np.random.default_rng([seed, 0x5A17]).random(len(hit)) < p
    sampled = hit & coin
    seen_wrong = np.cumsum(sampled & wrong)
    unseen = np.cumsum(hit & ~sampled)
    _, most_wrong = wrong_bounds(seen_wrong, unseen, p, ALPHA)
    return sampled, 1.0 - most_wrong / np.arange(1, len(hit) + 1)
