"""Learning's threads work on the cores serving leaves idle (gati.learning.background): lower priority, one
OpenMP thread, both for the calling thread alone."""
from __future__ import annotations

import os
import threading

import pytest
import torch

from gati.errors import GatiError
from gati.learning.background import as_background
from gati.learning.online import OnlineConfig

faiss = pytest.importorskip("faiss")


def test_a_background_thread_is_niced_and_single_threaded_and_serving_is_not():
    main_threads, main_nice = faiss.omp_get_max_threads(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def worker():
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        as_background(5)
        seen.update(before=before, after=os.getpriority(os.PRIO_PROCESS, tid), threads=faiss.omp_get_max_threads())
        torch.ones(4, 4) @ torch.ones(4, 4)  # torch runs there, on its team of one

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["threads"] == 1 and seen["after"] == min(19, seen["before"] + 5)
    assert faiss.omp_get_max_threads() == main_threads  # per thread: the serving threads keep their team
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice


def test_the_learners_niceness_is_checked():
    assert OnlineConfig(background_nice=0).background_nice == 0
    for bad in (-1, 20, 2.5, True):
        with pytest.raises(GatiError, match="background_nice"):
            OnlineConfig(background_nice=bad)
