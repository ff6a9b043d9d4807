"""Torch's intra-op thread count for the tests, set for a scope and restored after it."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

# CI has two cores. With two threads instead of one the integration, cache and base-training test files took 174 s
# instead of 246 s (docs/results.md, "Test suite time"); more than two were not tried.
SUITE_THREADS = min(2, torch.get_num_threads())


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch threads, then restore the count it found."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
