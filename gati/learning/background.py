"""Work beside serving (shadow checks, the tier's bookkeeping, refits) runs on the cores serving leaves idle.

`as_background(nice)` makes the calling thread a background worker:

- an OpenMP team of one for its torch and FAISS operations. Serving runs its own team of every core; a second
  thread at the same priority that takes a core stalls that team at each barrier (its other thread spins until
  the descheduled one comes back): measured on this repository's 2 cores, a serving loop of convolutions went
  from p99 2.8 ms alone to 145 ms beside one such thread, and from p50 1.75 to 3.2 ms beside a team of two;
- a lower CPU priority (`nice` added to the thread's niceness, Linux: per thread). At nice 10, the same loop kept
  its p50 (1.75 ms) and a p99 of 5.8 ms, and the background thread got about 4% of what it does alone while the
  loop kept both cores busy: all of it when serving idles.

The OpenMP thread count is the calling thread's own (OpenMP keeps it per thread: the serving threads keep
theirs), set through FAISS's binding to the OpenMP runtime torch shares (as gati.cache.knn does around a search).
Either setting is skipped where the platform does not offer it.
"""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("gati.learning.background")

BACKGROUND_NICE = 10  # the default: see the module docstring


def as_background(nice: int = BACKGROUND_NICE) -> None:
    """Make the calling thread a background worker (see the module docstring); nice 0 keeps its priority."""
    try:
        import faiss
        faiss.omp_set_num_threads(1)
    except ImportError:  # only FAISS exposes the runtime's per-thread setting here; torch's is process-wide
        log.debug("FAISS is not installed: background work keeps the default OpenMP team")
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:  # a platform where a thread's priority is the process's: leave it
        log.debug("could not lower the background thread's priority: %s", e)
