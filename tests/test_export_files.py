"""The deployment files as a user meets them: modes of their umask, a silent ONNX Runtime load,
and an export report that explains every figure it holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from automl.cli import main
from automl.paths import new_file_mode
from automl.runs.export_notes import export_notes
from tests.test_onnx_export import _ampq, _setup


@pytest.fixture
def run_dir(tiny_resnet, tmp_path):
    problem, ev, _ = _setup(tiny_resnet)
    run = tmp_path / "run"
    _ampq(problem, ev, problem.space.uniform(4, 8, sparsity=0.25), run / "best_model.ampq")
    return run


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_exported_files_take_the_users_umask(run_dir, tmp_path, capsys, mask, mode):
    old = os.umask(mask)
    try:
        assert main(["export", str(run_dir), "--output", str(tmp_path / "m.onnx")]) == 0
        assert main(["export", str(run_dir), "--format", "ampq", "--output", str(tmp_path / "m.ampq")]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    for path in (tmp_path / "m.onnx", tmp_path / "m.ampq"):
        assert path.stat().st_mode & 0o777 == mode, (path.name, oct(path.stat().st_mode & 0o777))


def test_the_exported_onnx_loads_without_a_runtime_warning(run_dir, tmp_path, capsys):
    """ONNX Runtime warns `Removing initializer ...` for every unused constant; the file holds none."""
    assert main(["export", str(run_dir), "--output", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    code = textwrap.dedent("""
        import onnxruntime as ort
        ort.InferenceSession("m.onnx")  # a default session: default logging, default optimisations
        print("loaded")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "loaded", done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_every_figure_of_the_report_is_explained():
    report = {"path": "x.ampq", "file_bytes": 2395, "payload_bytes": 1049, "header_bytes": 1346, "predicted_bytes": 2336.0,
              "float_file_bytes": 38971, "params_float": 5142, "params_exported": 918, "channels_float": 94,
              "channels_exported": 48, "max_abs_diff": 0.031, "agreement": 0.65625, "latency_exported_ms": 11.5,
              "latency_float_ms": 11.8, "threads": 1, "prediction_agreement": 1.0, "real_over_predicted": 1.03,
              "size_ratio": 0.06, "latency_ratio": 0.98, "compared_samples": 32,
              "onnx": {"onnx_path": "x.onnx", "onnx_bytes": 15808, "float_onnx_bytes": 24451, "batch": 24, "threads": 1,
                       "layers": {"int8": 8, "float": 2}, "latency_b1_ms": 0.07, "float_latency_b1_ms": 0.05,
                       "latency_batch_ms": 1.0, "float_latency_batch_ms": 0.9, "speedup_b1": 0.7, "speedup_batch": 0.9}}
    notes = export_notes(report)
    assert set(notes) == {k for k in report if k != "onnx"} | {f"onnx.{k}" for k in report["onnx"]}
    why = notes["agreement"]
    assert why.startswith("0.656: 21 of the 32 compared samples give the same outputs")
    assert "The other 11 differ by at most max_abs_diff = 0.031" in why and "rounding boundary" in why
    assert "100.0%" in why and "not its accuracy" in why
    assert set(export_notes({"onnx": {"error": "no ONNX form"}})) == {"onnx.error"}


def test_a_search_writes_the_report_with_its_notes(tmp_path, capsys):
    from tests.test_cli_errors import TINY

    assert main(["search", *TINY, "--evaluations", "2", "--output", str(tmp_path)]) == 0
    capsys.readouterr()
    (run,) = tmp_path.glob("runs/*")
    report = json.loads((run / "export_report.json").read_text())
    figures = {k for k in report if k != "notes" and k != "onnx"} | {f"onnx.{k}" for k in report["onnx"]}
    assert figures <= set(report["notes"]), figures - set(report["notes"])
    assert report["compared_samples"] > 0 and report["prediction_agreement"] is not None
    assert report["notes"]["agreement"].startswith(f"{report['agreement']:.3f}: ")
    for name in ("best_model.ampq", "best_model.onnx"):
        assert (run / name).stat().st_mode & 0o777 == new_file_mode()
