"""Live agreement: anytime-valid confidence bounds on the agreement of every request served, and the fallback rule.

The server answers a request with a hit (a cache was confident: early exit) or a miss (the full model ran, so
the answer is exactly the base model's). For every hit it flips its own coin s_t ~ Bernoulli(p_t), secret and
independent of the content, and when it comes up 1 finishes the request with the full model in the background;
that reveals w_t = 1 if the answer given differed from the base model's answer, else 0. Misses have w_t = 0.

The bounds (`LiveAgreement`). Let w_t and p_t be fixed before the coin s_t is drawn: they may depend on the
content, on everything served before and even on earlier coins, but not on s_t. Let W_t = sum_i w_i (wrong
answers so far, unknown) and D_t = sum_i s_i w_i (wrong answers among the sampled hits, seen). For a real
lambda != 0 let a_i(lambda) = -log(1 - p_i + p_i e^-lambda). Given the past and w_i,

    E[exp(a_i(lambda) w_i - lambda s_i w_i)] = 1     (w_i = 0: trivially; w_i = 1: (1 - p_i + p_i e^-lambda) e^a_i = 1)

so M_t(lambda) = exp(sum_i a_i(lambda) w_i - lambda D_t) is a nonnegative martingale with M_0 = 1, and so is a
mixture sum_j pi_j M_t(lambda_j) over a fixed grid with weights summing to 1. By Ville's inequality, with
probability at least 1 - alpha the mixture stays below 1 / alpha at every t at once, whatever the order of
requests, bursts, drift, or an adversary who chooses which hits are wrong: the only randomness used is the
server's coin. The confidence set is every w consistent with what was seen (sampled hits known, misses right,
each unsampled hit possibly wrong) whose mixture is below 1 / alpha.

- Upper bound on W_t (lambda > 0, where 0 < a_i < lambda and M grows with every unknown w_i, least where p_i is
  smallest since a_i grows with p_i): mark unsampled hits wrong in order of increasing p for as long as the
  mixture stays below 1 / alpha. It never marks more than there are, so W_t <= hits_t is built in. With one p
  throughout the mixture is sum_j pi_j exp(a(lambda_j) W_t - lambda_j D_t), the same statistic in closed form.
  `lower_bound` = 1 - W_upper / t bounds the agreement of all t requests served so far from below.
- Lower bound on W_t (lambda < 0: M shrinks with every unknown w_i, most where p_i is largest): the fewest
  unsampled hits, marked in order of decreasing p, that bring the mixture below 1 / alpha. `upper_bound` =
  1 - W_lower / t. Each bound holds at level alpha; both at once at level 2 alpha.

Both p constant and p changing between requests are supported (e.g. sampling more after a fallback), as long as
p_t is set before its coin is drawn: the statistic keeps one count per distinct p (few in practice). The grid:
|lambda_j| = -log((j - 1/2) / 16), j = 1..16, equal weights; geometric grids of 20-40 points gave slightly looser
bounds on the same counts. Anytime validity has a price: the exact binomial bound on W_t is tighter but valid at
one request fixed in advance only, and checked at every request it fails far more often than alpha (a test shows
it). `point_estimate` is Horvitz-Thompson: 1 - (sum over sampled wrong hits of 1 / p_i) / t, clipped to [0, 1].

Observe requests in the order they were served. A sampled hit whose background check is still running may be
observed when the check completes, provided its coin stays secret (nothing served in between can depend on it).

The fallback rule (`FallbackController`). Certification gives a fixed sequence of threshold vectors, index 0 = no
early exits, each later one more aggressive; the bundle serves the last certified one. The bound covers all
requests since the start, so it needs samples to reach the target: with no wrong answer, after roughly
W_upper(0) / (1 - target) requests, W_upper(0) being about 4.4 / p at alpha = 0.05 (before that it is high only
while few hits have been served, as W_t <= hits_t). So:
- The controller is armed once the lower bound stands `headroom` sampled wrong answers (default `HEADROOM`, 3) above the
  target, with the samples rather than the count of hits setting it (`bound_from_samples`). Arming at the
  target itself would make the first wrong answer after it a fallback, even for a vector that keeps the promise
  easily (`experiments/live_agreement.py` measures false fallbacks and detection against p and headroom).
- After a request that follows a sampled wrong answer not yet acted on, it steps back `step` vectors (at most to
  0, no early exits) when it is armed and one more sampled wrong answer would put the lower bound below the
  target (about to fall), or when the upper bound is below the target: the agreement so far is below it with
  confidence 1 - alpha. The second catches a vector that is bad from the start, before the lower bound could
  reach the target; it waits until the target's budget, (1 - target) * requests, admits `headroom` wrong
  answers, since before that one wrong answer puts the few requests so far below any target.
- Every step back thus needs a new sampled wrong answer: a burst steps back once per wrong answer seen while the
  bound stays at risk, never on the silence after it. The controller returns to a faster vector only when told
  a new certificate exists (`recertified`), never on its own.
- Every transition is recorded with its request count: detection (the first fallback minus the onset of errors)
  and recovery (from the fallback until one more wrong answer would no longer put the bound below the target:
  `RECOVERED`) can be reported.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from gati.errors import GuaranteeError

GRID_SIZE = 16
LAMBDAS = -np.log((np.arange(1, GRID_SIZE + 1) - 0.5) / GRID_SIZE)  # the |lambda_j|, all > 0
LOG_WEIGHTS = np.full(GRID_SIZE, -math.log(GRID_SIZE))

FALLBACK, RECOVERED, RECERTIFIED = "fallback", "recovered", "recertified"
ALPHA = 0.05  # the live bound's level, unless configured
HEADROOM = 3  # the controller arms once the lower bound stands this many sampled wrong answers above the target


def _check_probability(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise GuaranteeError(f"sampling probability p must be in (0, 1], got {p!r}")
    return float(p)


def _check_int(name: str, value: int, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        limits = f">= {low}" if high is None else f"in {low}..{high}"
        raise GuaranteeError(f"{name} must be an integer {limits}, got {value!r}")
    return value


def _check_level(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise GuaranteeError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


# --- the statistic -----------------------------------------------------------------------------------------------
# Per grid point j the upper side keeps log pi_j + sum (a(lambda_j) w_i - lambda_j s_i w_i) at lambda = +|lambda_j|;
# the lower side the same at lambda = -|lambda_j|, written with b = -a(-|lambda_j|) > 0 so that each unknown wrong
# answer adds +rise (upper) or -fall (lower) and each sampled wrong answer adds rise - |lambda| or |lambda| - fall.


@dataclass(frozen=True)
class _Tilts:
    """Per grid point: what one unsampled wrong hit at sampling probability p adds to log M, on either side."""

    p: float
    rise: np.ndarray  # a(+|lambda|) = -log(1 - p + p e^-|lambda|), in (0, |lambda|)
    fall: np.ndarray  # -a(-|lambda|) = log(1 - p + p e^|lambda|), in (0, |lambda|)


@functools.lru_cache(maxsize=256)
def _tilts(p: float) -> _Tilts:
    rise, fall = -np.log1p(-p * -np.expm1(-LAMBDAS)), np.log1p(p * np.expm1(LAMBDAS))
    rise.setflags(write=False)
    fall.setflags(write=False)
    return _Tilts(p, rise, fall)


def _seen(wrong_by_p: list[tuple[int, _Tilts]]) -> tuple[np.ndarray, np.ndarray]:
    """The part of log M fixed by the sampled wrong answers: (upper side, lower side)."""
    upper, lower = LOG_WEIGHTS.copy(), LOG_WEIGHTS.copy()
    for wrong, tilts in wrong_by_p:
        upper += wrong * (tilts.rise - LAMBDAS)
        lower += wrong * (LAMBDAS - tilts.fall)
    return upper, lower


def _log_sum_exp(x: np.ndarray) -> float:
    top = float(x.max())
    return top + math.log(float(np.exp(x - top).sum()))


def _first(predicate: Callable[[int], bool]) -> int:
    """The smallest m >= 0 where a monotone predicate (false, ..., false, true, ...) holds; it must hold eventually."""
    if predicate(0):
        return 0
    low, high = 0, 1  # predicate(low) is false
    while not predicate(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if predicate(mid) else (mid, high)
    return high


@functools.lru_cache(maxsize=8192)
def _most_unseen(log_mass: bytes, rise: bytes, threshold: float) -> int:
    """The most unknown answers (each adding `rise`) that keep log M below the threshold; log M starts below it."""
    base, step = np.frombuffer(log_mass), np.frombuffer(rise)
    return _first(lambda m: _log_sum_exp(base + m * step) >= threshold) - 1


@functools.lru_cache(maxsize=8192)
def _fewest_unseen(log_mass: bytes, fall: bytes, threshold: float) -> int:
    """The fewest unknown answers (each subtracting `fall`) that bring log M below the threshold."""
    base, step = np.frombuffer(log_mass), np.frombuffer(fall)
    return _first(lambda m: _log_sum_exp(base - m * step) < threshold)


def wrong_bounds(sampled_wrong: np.ndarray, unsampled_hits: np.ndarray, p: float,
                 alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) confidence bounds on the wrong answers W_t for whole arrays of counts at one sampling p.

    The bounds `LiveAgreement` keeps (for one p), vectorised for simulations and recorded streams: elementwise,
    `sampled_wrong` = D_t and `unsampled_hits` = hits_t - sampled hits_t.
    """
    p, alpha = _check_probability(p), _check_level("alpha", alpha)
    sampled_wrong, unsampled_hits = np.asarray(sampled_wrong, np.int64), np.asarray(unsampled_hits, np.int64)
    if sampled_wrong.shape != unsampled_hits.shape or (sampled_wrong < 0).any() or (unsampled_hits < 0).any():
        raise GuaranteeError("sampled_wrong and unsampled_hits must be non-negative counts of the same shape")
    tilts, threshold = _tilts(p), math.log(1.0 / alpha)
    values, inverse = np.unique(sampled_wrong, return_inverse=True)
    seen = [_seen([(int(d), tilts)]) for d in values]
    most = np.array([_most_unseen(up.tobytes(), tilts.rise.tobytes(), threshold) for up, _ in seen])
    fewest = np.array([_fewest_unseen(low.tobytes(), tilts.fall.tobytes(), threshold) for _, low in seen])
    shape = sampled_wrong.shape
    return (sampled_wrong + np.minimum(fewest[inverse].reshape(shape), unsampled_hits),
            sampled_wrong + np.minimum(most[inverse].reshape(shape), unsampled_hits))


# --- the live bounds ---------------------------------------------------------------------------------------------


@dataclass
class _Level:
    """Counts of hits served while sampling with one probability p."""

    tilts: _Tilts
    sampled_wrong: int = 0
    unsampled_hits: int = 0


@dataclass(frozen=True)
class AgreementSnapshot:
    """What a metrics endpoint exports."""

    requests: int
    hits: int
    sampled_hits: int
    sampled_wrong: int
    point_estimate: float
    lower_bound: float
    upper_bound: float
    alpha: float
    sampling_probability: float


class LiveAgreement:
    """Anytime-valid confidence bounds on the agreement of all requests served so far (see the module docstring).

    O(1) amortised per `observe`; the bounds are solved lazily when read and cached until the next observation.
    Not thread-safe: a server with many workers calls it under one lock.
    """

    def __init__(self, p: float = 0.05, alpha: float = ALPHA) -> None:
        self.alpha = _check_level("alpha", alpha)
        self._threshold = math.log(1.0 / self.alpha)
        self._p = _check_probability(p)
        self._levels: dict[float, _Level] = {}  # in the order the p were first used
        self.requests = 0
        self.hits = 0
        self.sampled_hits = 0
        self.sampled_wrong = 0
        self._inverse_p_wrong = 0.0  # sum of 1 / p_i over sampled wrong hits
        self._seen = _seen([])
        self._bounds: tuple[int, int] | None = None

    @property
    def p(self) -> float:
        """The probability with which the next hit is sampled."""
        return self._p

    def set_sampling_probability(self, p: float) -> None:
        """Sample later hits with probability p; call it before the coin of the request it applies to is drawn."""
        self._p = _check_probability(p)

    def draw_coin(self, rng: np.random.Generator) -> bool:
        """The server's coin for one hit. Seed `rng` from the OS, never from anything a request carries."""
        return bool(rng.random() < self._p)

    def observe(self, hit: bool, sampled: bool, wrong: bool | None = None) -> None:
        """Count one served request: `wrong` only for a sampled hit (whether its answer differed from the base's)."""
        for name, value in (("hit", hit), ("sampled", sampled)):
            if not isinstance(value, (bool, np.bool_)):
                raise GuaranteeError(f"{name} must be a bool, got {value!r}")
        if hit and sampled:
            if not isinstance(wrong, (bool, np.bool_)):
                raise GuaranteeError(f"a sampled hit needs wrong=True or False, got {wrong!r}")
        elif wrong is not None:
            what = "an unsampled hit" if hit else "a miss (always right)"
            raise GuaranteeError(f"wrong is known only for sampled hits, got wrong={wrong!r} for {what}")
        self.requests += 1
        self._bounds = None
        if not hit:
            return
        self.hits += 1
        level = self._levels.setdefault(self._p, _Level(_tilts(self._p)))
        if not sampled:
            level.unsampled_hits += 1
            return
        self.sampled_hits += 1
        if wrong:
            self.sampled_wrong += 1
            level.sampled_wrong += 1
            self._inverse_p_wrong += 1.0 / self._p
            self._seen = _seen([(lv.sampled_wrong, lv.tilts) for lv in self._levels.values()])

    @property
    def wrong_bounds(self) -> tuple[int, int]:
        """(lower, upper) confidence bounds on the wrong answers among all requests served so far."""
        if self._bounds is None:
            upper_seen, lower_seen = self._seen
            self._bounds = (self._fewest_wrong(lower_seen), self._most_wrong(upper_seen, self.sampled_wrong))
        return self._bounds

    @property
    def lower_bound(self) -> float:
        """Lower confidence bound on the agreement of all requests served so far (0 before the first)."""
        return 1.0 - self.wrong_bounds[1] / self.requests if self.requests else 0.0

    @property
    def upper_bound(self) -> float:
        """Upper confidence bound on the agreement of all requests served so far (1 before the first)."""
        return 1.0 - self.wrong_bounds[0] / self.requests if self.requests else 1.0

    @property
    def point_estimate(self) -> float:
        """Horvitz-Thompson estimate of the agreement so far (1 before the first request)."""
        return min(1.0, max(0.0, 1.0 - self._inverse_p_wrong / max(self.requests, 1)))

    def would_fall_below(self, target: float, more: int = 1) -> bool:
        """Would `more` further requests, each a sampled wrong hit (the worst a request can be), put the lower bound
        below `target`?"""
        target, more = _check_level("target", target), _check_int("more", more, 1)
        wrong = {p: level.sampled_wrong for p, level in self._levels.items()}
        wrong[self._p] = wrong.get(self._p, 0) + more
        upper_seen, _ = _seen([(d, _tilts(p)) for p, d in wrong.items()])
        return 1.0 - self._most_wrong(upper_seen, self.sampled_wrong + more) / (self.requests + more) < target

    @property
    def bound_from_samples(self) -> bool:
        """Do the samples, not the count of hits, set the upper bound on wrong answers? At first every unsampled hit
        may be wrong and the lower bound is 1 - hits / requests, high only because few hits were served yet."""
        return self.wrong_bounds[1] < self.hits - self.sampled_hits + self.sampled_wrong

    def known_below(self, target: float) -> bool:
        """Is the agreement so far below `target` with confidence 1 - alpha (the upper bound below it)?"""
        return self.upper_bound < _check_level("target", target)

    def to_state(self) -> dict:
        """The counts, as plain values (a state directory keeps them, so that the bound survives a restart)."""
        return {"p": self._p, "alpha": self.alpha, "requests": self.requests, "hits": self.hits,
                "sampled_hits": self.sampled_hits, "sampled_wrong": self.sampled_wrong,
                "inverse_p_wrong": self._inverse_p_wrong,
                "levels": [[p, lv.sampled_wrong, lv.unsampled_hits] for p, lv in self._levels.items()]}

    @classmethod
    def from_state(cls, state: dict) -> "LiveAgreement":
        """The tracker `to_state` described, counts and all."""
        try:
            live = cls(float(state["p"]), float(state["alpha"]))
            for p, wrong, unsampled in state["levels"]:
                live._levels[_check_probability(float(p))] = _Level(_tilts(float(p)), int(wrong), int(unsampled))
            live.requests, live.hits = int(state["requests"]), int(state["hits"])
            live.sampled_hits, live.sampled_wrong = int(state["sampled_hits"]), int(state["sampled_wrong"])
            live._inverse_p_wrong = float(state["inverse_p_wrong"])
        except (KeyError, TypeError, ValueError) as e:
            raise GuaranteeError(f"not a saved live-agreement state: {type(e).__name__}: {e}") from e
        live._seen = _seen([(lv.sampled_wrong, lv.tilts) for lv in live._levels.values()])
        return live

    def snapshot(self) -> AgreementSnapshot:
        return AgreementSnapshot(self.requests, self.hits, self.sampled_hits, self.sampled_wrong,
                                 self.point_estimate, self.lower_bound, self.upper_bound, self.alpha, self._p)

    def _most_wrong(self, upper_seen: np.ndarray, sampled_wrong: int) -> int:
        """The seen wrong answers plus the most unsampled hits that can be wrong, marked in order of increasing p."""
        most, log_mass = sampled_wrong, upper_seen
        for level in sorted(self._levels.values(), key=lambda lv: lv.tilts.p):
            free = _most_unseen(log_mass.tobytes(), level.tilts.rise.tobytes(), self._threshold)
            if free < level.unsampled_hits:
                return most + free
            most += level.unsampled_hits
            log_mass = log_mass + level.unsampled_hits * level.tilts.rise
        return most

    def _fewest_wrong(self, lower_seen: np.ndarray) -> int:
        """The seen wrong answers plus the fewest unsampled hits that must be wrong, marked by decreasing p."""
        fewest, log_mass = self.sampled_wrong, lower_seen
        for level in sorted(self._levels.values(), key=lambda lv: -lv.tilts.p):
            needed = _fewest_unseen(log_mass.tobytes(), level.tilts.fall.tobytes(), self._threshold)
            if needed <= level.unsampled_hits:
                return fewest + needed
            fewest += level.unsampled_hits
            log_mass = log_mass - level.unsampled_hits * level.tilts.fall
        return fewest  # even every unsampled hit wrong leaves the mixture high: a 1-in-1/alpha event; W <= hits


# --- the fallback rule -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """One change of the controller's state, at the request count it happened."""

    request: int  # requests observed when it happened
    kind: str  # FALLBACK, RECOVERED or RECERTIFIED
    from_index: int
    to_index: int
    lower_bound: float


class FallbackController:
    """Which certified threshold vector to serve with (index 0 = no early exits); see the module docstring.

    It decides an index and nothing else: the engine applies `vectors[controller.index]`.
    """

    def __init__(self, live: LiveAgreement, target: float, vectors: int, start: int | None = None,
                 step: int = 1, headroom: int = HEADROOM) -> None:
        self.live = live
        self.target = _check_level("target", target)
        self.vectors = _check_int("vectors (certified vectors, no early exits included)", vectors, 1)
        self.step = _check_int("step", step, 1)
        self.headroom = _check_int("headroom", headroom, 1)
        self._index = self._checked_index(vectors - 1 if start is None else start)
        self.transitions: list[Transition] = []
        self.armed = False  # the lower bound has stood `headroom` sampled wrong answers above the target
        self._wrong_acted_on = 0  # sampled wrong answers seen at the last fallback
        self._awaiting_recovery = False

    @property
    def index(self) -> int:
        """The vector to serve the next request with."""
        return self._index

    def observe(self, hit: bool, sampled: bool, wrong: bool | None = None) -> int:
        """Count one served request (as `LiveAgreement.observe`); returns the index for the next request."""
        live, target = self.live, self.target
        live.observe(hit, sampled, wrong)
        self.armed = self.armed or (live.bound_from_samples and not live.would_fall_below(target, self.headroom))
        tested = (1.0 - target) * live.requests >= self.headroom  # the target's budget admits `headroom` wrong answers
        if (self._index > 0 and live.sampled_wrong > self._wrong_acted_on
                and ((self.armed and live.would_fall_below(target)) or (tested and live.known_below(target)))):
            self._wrong_acted_on = live.sampled_wrong
            self._awaiting_recovery = True
            self._move(FALLBACK, max(0, self._index - self.step))
        elif self._awaiting_recovery and not live.would_fall_below(target):
            self._awaiting_recovery = False
            self._move(RECOVERED, self._index)
        return self._index

    def recertified(self, index: int, vectors: int | None = None) -> None:
        """A new certificate exists for vector `index` (after retraining): serve with it from the next request.
        `vectors`: the new certificate's sequence has this many vectors (no early exits included)."""
        if vectors is not None:
            self.vectors = _check_int("vectors (certified vectors, no early exits included)", vectors, 1)
        self._move(RECERTIFIED, self._checked_index(index))

    def to_state(self) -> dict:
        """Where the controller stands, as plain values (the live counts are `LiveAgreement.to_state`'s)."""
        return {"index": self._index, "vectors": self.vectors, "armed": self.armed,
                "wrong_acted_on": self._wrong_acted_on, "awaiting_recovery": self._awaiting_recovery,
                "transitions": [[t.request, t.kind, t.from_index, t.to_index, t.lower_bound]
                                for t in self.transitions]}

    def restore(self, state: dict) -> None:
        """Stand where `to_state` said (over this controller's live tracker)."""
        try:
            self.vectors = _check_int("vectors", int(state["vectors"]), 1)
            self._index = self._checked_index(int(state["index"]))
            self.armed, self._awaiting_recovery = bool(state["armed"]), bool(state["awaiting_recovery"])
            self._wrong_acted_on = int(state["wrong_acted_on"])
            self.transitions = [Transition(int(r), str(k), int(a), int(b), float(lb))
                                for r, k, a, b, lb in state["transitions"]]
        except (KeyError, TypeError, ValueError) as e:
            raise GuaranteeError(f"not a saved fallback state: {type(e).__name__}: {e}") from e

    def _move(self, kind: str, to_index: int) -> None:
        self.transitions.append(Transition(self.live.requests, kind, self._index, to_index, self.live.lower_bound))
        self._index = to_index

    def _checked_index(self, index: int) -> int:
        return _check_int("vector index", index, 0, self.vectors - 1)
