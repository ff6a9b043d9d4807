"""The cluster's live guarantee, kept at the front door: an anytime-valid lower bound on the agreement of every
answer the aggregator gave, and the fallback it asks for.

The aggregator's coin (secret, drawn per request before anything about its answer is known) sends a share p of
requests to be finished by the full model in the background; a sampled hit whose answer differed from the full
model's is a wrong answer seen. Misses are the full model's answer, right by construction. These are exactly the
observations of the in-process learner, so the same `LiveAgreement` bounds the agreement of all requests served
so far, under bursts, drift or adversarial order (gati/learning/guarantee.py proves it), and the same
`FallbackController` decides when that bound is about to fall below the target.

Observations arrive out of order: an unsampled request when it is answered, a sampled one when its full-model
run is back (the coin stays secret meanwhile, which the bound allows). A sampled hit whose full-model run never
comes back (an executor died, the result was lost) is counted as a wrong answer seen: the bound can only be lower
for it.

When the controller falls back, the aggregator asks the retrainer for no early exits (`Retrainer.fallback`); the
cluster climbs back only when a review re-certifies thresholds on fresh samples (gati/rpc/autorefit.py). The
aggregator does not see which thresholds the predictors serve, so after asking it watches on from the same state:
while no early exits are served every answer is a miss and the bound can only recover, and the next wrong hit it
sees (from a version a review certified since) is judged like the first one was.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gati.learning.guarantee import AgreementSnapshot, FallbackController, LiveAgreement

log = logging.getLogger("gati.rpc.live")

SERVING, NO_EARLY_EXITS = 1, 0  # the controller's two vectors: what the cluster serves, and the full model
ASK_EVERY_S = 1.0  # a push to every predictor takes milliseconds: wrong answers in flight meanwhile do not ask again


class LiveGuard:
    """Thread-safe: the aggregator's workers observe concurrently. `on_fallback(reason)` is called outside the
    lock, once per fallback, and at most once every `ask_every_s` (the retrainer takes a while to push; hits in
    flight meanwhile may still be wrong): a fallback within that time of the last ask is counted, not asked."""

    def __init__(self, sample_rate: float, target: float, alpha: float, headroom: int,
                 on_fallback: Callable[[str], None], ask_every_s: float = ASK_EVERY_S):
        self.live = LiveAgreement(sample_rate, alpha)
        self.controller = FallbackController(self.live, target, vectors=2, headroom=headroom)
        self.on_fallback, self.ask_every_s = on_fallback, ask_every_s
        self.fallbacks = 0  # times the controller fell back
        self.asked = 0      # times on_fallback was called
        self._last_ask = -float("inf")
        self._lock = threading.Lock()

    def observe(self, hit: bool, sampled: bool, wrong: bool | None = None) -> None:
        """One answered request; `wrong` only for a sampled hit whose full-model answer is known."""
        with self._lock:
            if self.controller.observe(hit, sampled, wrong) == SERVING:
                return
            self.controller.recertified(SERVING)  # watch on from the same state (see the module docstring)
            self.fallbacks += 1
            now = time.monotonic()
            if now - self._last_ask < self.ask_every_s:
                return
            self._last_ask, self.asked = now, self.asked + 1
            s = self.live.snapshot()
        reason = (f"live lower bound {s.lower_bound:.4f} (point estimate {s.point_estimate:.4f}) after "
                  f"{s.requests} requests, {s.sampled_wrong} sampled wrong answers: about to fall below the target "
                  f"{self.controller.target}")
        log.warning("falling back to no early exits: %s", reason)
        self.on_fallback(reason)

    def lost(self, hit: bool) -> None:
        """A sampled request was answered but its full-model run never came back."""
        self.observe(hit, True, True if hit else None)

    def snapshot(self) -> AgreementSnapshot:
        with self._lock:
            return self.live.snapshot()
