"""Running and timing ONNX models in ONNX Runtime (CPU provider, threads pinned).

Imports neither torch nor the rest of automl-mpq, so what it measures is what a deployment
that has only ``onnxruntime`` and ``numpy`` runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np


def session(model: bytes | str | os.PathLike[str], threads: int = 1):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime CPU session of ``model`` (bytes or a path) on ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def runner(sess, x: np.ndarray) -> Callable[[], object]:
    """A call running ``sess`` on ``x`` (its single input)."""
    name = sess.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(x, dtype=np.float32)}
    return lambda: sess.run(None, feed)


def best_ms(fns: Sequence[Callable[[], object]], repeats: int, inner: int = 3, warmup: int = 2) -> list[float]:
    """Milliseconds of each call: the best of ``repeats`` round-robin rounds of ``inner`` calls.

    The same protocol as :func:`automl.export.torch_profile.interleaved_ms` (see it for why the
    minimum): profiles and the benchmarks that check them time alike.
    """
    best = [float("inf")] * len(fns)
    for fn in fns:
        for _ in range(warmup):
            fn()
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            for _ in range(inner):
                start = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - start)
    return [b * 1e3 for b in best]


def predict(model: bytes | str | os.PathLike[str], x: np.ndarray, threads: int = 1, batch: int = 256) -> np.ndarray:
    """The model's outputs on ``x``, run in chunks of ``batch`` samples."""
    sess = session(model, threads)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: np.ascontiguousarray(x[i:i + batch], dtype=np.float32)})[0]
            for i in range(0, len(x), batch)]
    return np.concatenate(outs)
