"""Timing helpers shared by benchmarks and hardware profiling (threads pinned, medians)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def pin_threads(threads: int) -> None:
    """Run torch on ``threads`` intra-op threads (the machine is shared: measure, don't assume)."""
    torch.set_num_threads(threads)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
