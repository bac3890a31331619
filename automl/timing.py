"""Timing helpers shared by benchmarks and hardware profiling (threads pinned, medians)."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

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


class StageTimer:
    """Wall seconds per named stage of a run (``with timer.stage("analysis"): ...``).

    A stage entered twice accumulates. A stage added ``within`` another (the evaluations
    within the search) is a part of it, not counted again in the total. :meth:`metrics`
    gives the ``seconds_<stage>`` values logged to the MLflow parent run, plus
    ``seconds_total`` (since the timer was made) and ``seconds_other`` (the rest);
    :meth:`summary` one line for the terminal.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.within: dict[str, str] = {}
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float, within: str = "") -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)
        if within:
            self.within[name] = within

    def total(self) -> float:
        return time.perf_counter() - self.started

    def metrics(self) -> dict[str, float]:
        total = self.total()
        top = sum(v for k, v in self.seconds.items() if k not in self.within)
        out = {f"seconds_{name}": round(value, 4) for name, value in self.seconds.items()}
        out.update(seconds_total=round(total, 4), seconds_other=round(max(0.0, total - top), 4))
        return out

    def summary(self) -> str:
        parts = [f"{name} {value:.1f} s" + (f" (in {self.within[name]})" if name in self.within else "")
                 for name, value in self.seconds.items()]
        return ", ".join(parts) + f"; total {self.total():.1f} s"
