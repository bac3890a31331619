"""benchmarks/gpu_check.py: refuses a machine without CUDA in one line, and its CPU-vs-CPU dry path agrees exactly."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_exits_2_with_one_message_not_a_traceback(capsys):
    assert _module().main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "gpu_check: needs a CUDA GPU" in err and "--device cpu --compare-device cpu" in err
    assert "Traceback" not in err


def test_a_bad_task_list_exits_2(capsys):
    assert _module().main(["--device", "cpu", "--compare-device", "cpu", "--tasks", "imagenet"]) == 2
    assert "--tasks must name some of" in capsys.readouterr().err


def test_comparison_counts_leading_identical_policies_and_the_largest_score_gap():
    compare = _module().compare
    a = {"trials": [["p1", 0.90], ["p2", 0.80], ["p3", 0.70]], "best": "p1"}
    b = {"trials": [["p1", 0.9001], ["p2", 0.795], ["p9", 0.60]], "best": "p1"}
    out = compare(a, b)
    assert out["same_leading_policies"] == 2 and out["common_policies"] == 2 and out["same_best"]
    assert out["max_score_diff_points"] == pytest.approx(0.5)


def test_the_cpu_child_sees_no_gpu_and_a_numbered_gpu_becomes_the_childs_first():
    env = _module().child_env
    assert env("cpu")["CUDA_VISIBLE_DEVICES"] == ""
    assert env("cuda:1")["CUDA_VISIBLE_DEVICES"] == "1"
    assert str(ROOT) in env("cuda")["PYTHONPATH"]


@pytest.mark.slow
def test_the_dry_path_on_the_cpu_proposes_the_same_policies_with_equal_scores(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--compare-device", "cpu", "--quick",
                           "--tasks", "cifar", "--evaluations", "3", "--finetune-steps", "2", "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = re.search(r"^RESULT gpu=(\S+) eval_over_forward=([\d.]+) search_s=([\d.]+) cpu_gpu_max_score_diff=([\d.]+)$",
                       proc.stdout, re.M)
    assert result is not None, proc.stdout
    assert result.group(1) == "cpu" and float(result.group(4)) == 0.0
    assert re.search(r"cifar: cpu \(cpu\) vs cpu \(cpu\): (\d+)/\1 leading policies identical", proc.stdout), proc.stdout
