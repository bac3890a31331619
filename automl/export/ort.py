"""Running and timing ONNX models in ONNX Runtime (the CPU provider, threads pinned, or a GPU provider).

Imports neither torch nor the rest of automl-mpq, so what it measures is what a deployment
that has only ``onnxruntime`` and ``numpy`` runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np

CPU = "CPUExecutionProvider"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def session(model: bytes | str | os.PathLike[str], threads: int = 1,
            providers: Sequence[str] = (CPU,)):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime session of ``model`` (bytes or a path) on ``threads`` intra-op threads.

    ``providers`` are ONNX Runtime execution provider names in order of preference (e.g.
    ``("CUDAExecutionProvider", "CPUExecutionProvider")``); nodes the first cannot run fall to the next.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=list(providers))


def runner(sess, x: np.ndarray) -> Callable[[], object]:
    """A call running ``sess`` on ``x`` (its single input).

    On a GPU provider the input is copied to the GPU once and the output stays there (I/O
    binding), so a call times the network, not the host-device copies; ``Run`` returns once
    the GPU has finished.
    """
    name = sess.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(x, dtype=np.float32)}
    if sess.get_providers()[0] not in GPU_PROVIDERS:
        return lambda: sess.run(None, feed)
    import onnxruntime as ort

    gpu = int(sess.get_provider_options().get(sess.get_providers()[0], {}).get("device_id", 0))
    binding = sess.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(feed[name], "cuda", gpu))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda", gpu)
    return lambda: sess.run_with_iobinding(binding)


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


def predict(model: bytes | str | os.PathLike[str], x: np.ndarray, threads: int = 1, batch: int = 256,
            providers: Sequence[str] = (CPU,)) -> np.ndarray:
    """The model's outputs on ``x``, run in chunks of ``batch`` samples (on ``providers``, see :func:`session`)."""
    sess = session(model, threads, providers)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: np.ascontiguousarray(x[i:i + batch], dtype=np.float32)})[0]
            for i in range(0, len(x), batch)]
    return np.concatenate(outs)
