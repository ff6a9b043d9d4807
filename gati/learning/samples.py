"""Samples: requests that ran to the end, kept (bounded) for refitting caches and re-certifying the cascade.

A request that ran to the end (a miss, or a sampled hit finished by its shadow check) reveals the base model's
logits, so it can teach the caches (distillation) and grade any cascade on it. Each sample keeps the reduced
features every plan cache reads (by cut, float16 like the build's training features), the base logits, and the
neighbour tier's verdict as it stood *before* the request was stored in it (the tier cannot be replayed later: it
changes with every request).

`coin` marks the samples the server's coin chose (with probability p, whatever the request's outcome). Only those
form a sample of the traffic: misses alone over-represent what the caches found hard, so they may teach but never
grade. Re-certification uses coin samples only; fitting uses all.

`SampleBook` holds the most recent `capacity` samples (older ones drop out first) and is thread-safe;
`SampleSet` is a column-wise snapshot of some of them, what the pure refit and re-certify functions read.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from gati.errors import GatiError
from gati.learning.neighbours import TierVerdict


@dataclass(frozen=True)
class Sample:
    request: int  # its place in the served stream (0, 1, ...)
    coin: bool  # chosen by the server's coin: may grade a cascade
    features: dict[int, np.ndarray]  # cut -> the plan cache's reduced features there, flat float16
    logits: np.ndarray  # the base model's logits, float32 [classes]
    tier: TierVerdict  # the tier's verdict before this request was stored in it

    @property
    def label(self) -> int:
        return int(np.argmax(self.logits))


@dataclass
class SampleSet:
    """Samples column by column (row i of every array is one sample)."""

    requests: np.ndarray  # int64 [n]
    coin: np.ndarray  # bool [n]
    features: dict[int, np.ndarray]  # cut -> float16 [n, features]
    logits: np.ndarray  # float32 [n, classes]
    tier_label: np.ndarray  # int64 [n]; -1: the tier was empty or not asked
    tier_confidence: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def labels(self) -> np.ndarray:
        """The base model's answers."""
        return self.logits.argmax(axis=1)

    def subset(self, rows: np.ndarray) -> SampleSet:
        return SampleSet(self.requests[rows], self.coin[rows], {c: f[rows] for c, f in self.features.items()},
                         self.logits[rows], self.tier_label[rows], self.tier_confidence[rows])

    @classmethod
    def of(cls, samples: list[Sample], cuts: list[int], num_classes: int) -> SampleSet:
        n = len(samples)
        features = {c: np.stack([s.features[c] for s in samples]) if n else np.zeros((0, 0), np.float16)
                    for c in cuts}
        return cls(np.array([s.request for s in samples], np.int64), np.array([s.coin for s in samples], bool),
                   features, np.stack([s.logits for s in samples]) if n else np.zeros((0, num_classes), np.float32),
                   np.array([s.tier.label for s in samples], np.int64),
                   np.array([s.tier.confidence for s in samples], np.float32))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for an .npz file (`from_arrays` reads them back)."""
        arrays = {"requests": self.requests, "coin": self.coin, "logits": self.logits,
                  "tier_label": self.tier_label, "tier_confidence": self.tier_confidence}
        arrays.update({f"features_{c}": f for c, f in self.features.items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SampleSet:
        try:
            features = {int(k.removeprefix("features_")): v for k, v in arrays.items() if k.startswith("features_")}
            result = cls(arrays["requests"].astype(np.int64), arrays["coin"].astype(bool), features,
                         arrays["logits"].astype(np.float32), arrays["tier_label"].astype(np.int64),
                         arrays["tier_confidence"].astype(np.float32))
        except (KeyError, ValueError) as e:
            raise GatiError(f"saved samples are incomplete: {e}") from e
        n = len(result.requests)
        if any(len(a) != n for a in (result.coin, result.logits, result.tier_label, result.tier_confidence,
                                     *features.values())):
            raise GatiError("saved samples have columns of different lengths")
        return result

    def samples(self) -> list[Sample]:
        return [Sample(int(self.requests[i]), bool(self.coin[i]), {c: f[i] for c, f in self.features.items()},
                       self.logits[i], TierVerdict(int(self.tier_label[i]), float(self.tier_confidence[i])))
                for i in range(len(self))]


class SampleBook:
    """The most recent `capacity` samples; thread-safe."""

    def __init__(self, capacity: int, cuts: list[int], num_classes: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise GatiError(f"sample capacity must be an integer >= 1, got {capacity!r}")
        self.capacity, self.cuts, self.num_classes = capacity, list(cuts), num_classes
        self._samples: deque[Sample] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.added = 0  # samples ever added (dropped ones included)

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: Sample) -> None:
        missing = set(self.cuts) - set(sample.features)
        if missing:
            raise GatiError(f"a sample lacks features at cuts {sorted(missing)}")
        with self._lock:
            self._samples.append(sample)
            self.added += 1

    def snapshot(self, upto: int | None = None, after: int | None = None, coin_only: bool = False) -> SampleSet:
        """The samples of requests in (after, upto] (either end open when None), optionally coin samples only."""
        with self._lock:
            chosen = [s for s in self._samples if (upto is None or s.request <= upto)
                      and (after is None or s.request > after) and (s.coin or not coin_only)]
        return SampleSet.of(chosen, self.cuts, self.num_classes)

    def count(self, after: int, coin_only: bool = True) -> int:
        """How many samples of requests after `after` (coin samples only by default) the book holds."""
        with self._lock:
            return sum(1 for s in self._samples if s.request > after and (s.coin or not coin_only))

    def restore(self, saved: SampleSet) -> None:
        with self._lock:
            self._samples.clear()
            self._samples.extend(saved.samples()[-self.capacity:])
            self.added = len(self._samples)
