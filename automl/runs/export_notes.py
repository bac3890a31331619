"""What every figure of ``export_report.json`` means, written into the file itself (its ``notes``).

The report is the export's own account (:class:`automl.export.ampq.ExportReport`, the ONNX
timing of :func:`automl.export.onnx.measure_onnx`); these notes are for the person who opens
it next to the deployed files, so each one says what was measured, on what, and in what unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_FIELDS = {
    "path": "the packed .ampq file of the budget's winner (automl-mpq's own format; `automl export` converts it)",
    "file_bytes": "size of the .ampq file on disk in bytes: header_bytes + payload_bytes",
    "payload_bytes": "bytes of the packed tensors: integer codes at each channel's bit-width, per-channel bits and "
                     "scales, biases, and the float rows of 32-bit channels",
    "header_bytes": "bytes of the magic, the format version and the compressed JSON header (graph, modules, tensor table)",
    "predicted_bytes": "the size the cost model priced for this policy during the search (the budget's size); "
                       "real_over_predicted compares it with file_bytes",
    "float_file_bytes": "bytes of torch.save of the float model's state_dict: the baseline of size_ratio",
    "params_float": "parameters of the float model",
    "params_exported": "parameters of the network loaded back from the file (pruned channels removed)",
    "channels_float": "output channels of the quantizable layers of the float model",
    "channels_exported": "output channels of those layers in the file, after pruning",
    "compared_samples": "validation samples on which the file and the in-memory quantized model were compared "
                        "(max_abs_diff, agreement, prediction_agreement) and the torch latencies measured",
    "max_abs_diff": "largest absolute difference of any output value between the network loaded from the file and "
                    "the in-memory quantized model that was evaluated and fine-tuned",
    "agreement": "fraction of compared samples whose outputs match within 1e-4 between the file and the in-memory "
                 "quantized model; a measure of how exactly the file reproduces the model, not an accuracy",
    "prediction_agreement": "fraction of compared samples whose top class (argmax) is the same for the file and the "
                            "in-memory model; null when the output is not one score per class",
    "latency_exported_ms": "median torch forward time of the network loaded from the file, per batch of "
                           "compared_samples, on `threads` threads (torch kernels: a side figure; the ONNX file is "
                           "what deploys)",
    "latency_float_ms": "the same for the float model, timed alternately with it",
    "threads": "intra-op threads of the torch timings",
    "real_over_predicted": "file_bytes / predicted_bytes: how close the cost model's size is to the real file",
    "size_ratio": "file_bytes / float_file_bytes",
    "latency_ratio": "latency_exported_ms / latency_float_ms (torch; below 1 is faster than float)",
    "onnx.onnx_path": "the ONNX file (QDQ int8 where a layer has at most 8 bits and an int8 input, pruned channels "
                      "removed) that ONNX Runtime runs",
    "onnx.onnx_bytes": "size of that ONNX file in bytes",
    "onnx.float_onnx_bytes": "size of the float model exported to ONNX the same way, the baseline",
    "onnx.float_onnx_path": "that float ONNX file, written beside the exported one to compare against in deployment",
    "onnx.batch": "the batch of the *_batch_ms timings (validation samples)",
    "onnx.threads": "ONNX Runtime intra-op threads of the timings",
    "onnx.layers": "convolution and linear nodes of the ONNX file with int8 (QDQ) weights and with float weights",
    "onnx.latency_b1_ms": "best ONNX Runtime time of the exported file at batch 1, in ms (CPU execution provider)",
    "onnx.float_latency_b1_ms": "the same for the float ONNX model, timed round-robin with it",
    "onnx.latency_batch_ms": "best ONNX Runtime time of the exported file at batch `batch`, in ms",
    "onnx.float_latency_batch_ms": "the same for the float ONNX model",
    "onnx.speedup_b1": "float_latency_b1_ms / latency_b1_ms (above 1: the exported file is faster)",
    "onnx.speedup_batch": "float_latency_batch_ms / latency_batch_ms",
    "onnx.error": "why no ONNX file was written (the .ampq file still was)",
}


def _agreement_note(report: Mapping[str, Any]) -> str:
    agreement, n = report.get("agreement"), report.get("compared_samples")
    if not isinstance(agreement, (int, float)) or not isinstance(n, int) or n <= 0:
        return _FIELDS["agreement"]
    same = round(agreement * n)
    text = (f"{agreement:.3f}: {same} of the {n} compared samples give the same outputs (within 1e-4) from the file as "
            "from the in-memory quantized model.")
    if same < n:
        text += (f" The other {n - same} differ by at most max_abs_diff = {report.get('max_abs_diff', float('nan')):.3g}:"
                 " the file's network (BatchNorm folded, pruned channels removed) adds its floats in another order, so an"
                 " activation that lands on a rounding boundary of its quantizer can round to the neighbouring code and"
                 " move the outputs after it by a quantization step.")
    pa = report.get("prediction_agreement")
    if isinstance(pa, (int, float)):
        text += f" The top class is the same for {pa:.1%} of them (prediction_agreement)."
    return text + " It measures how exactly the file reproduces the model, not its accuracy."


def export_notes(report: Mapping[str, Any]) -> dict[str, str]:
    """One explanation per figure present in ``report`` (``onnx.<key>`` for its ONNX part)."""
    keys = [k for k in report if k not in ("onnx", "notes")]
    keys += [f"onnx.{k}" for k in report.get("onnx") or {}]
    notes = {k: _FIELDS[k] for k in keys if k in _FIELDS}
    if "agreement" in notes:
        notes["agreement"] = _agreement_note(report)
    return notes


def with_notes(report: Mapping[str, Any]) -> dict[str, Any]:
    """``report`` with its ``notes`` added."""
    return {**report, "notes": export_notes(report)}
