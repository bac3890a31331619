"""Conformance over real architectures: every family of the model zoo searched, exported and run as a user would.

Per family (:mod:`tests.zoo_support`: torchvision and timm networks with random weights, 3x32x32
inputs): ``automl analyse``, a short ``automl search`` (3 evaluations, ``size<=0.25x``), both
``automl export`` formats, then the searched policy's network exported again from memory and its
ONNX file run in a default ONNX Runtime session against the in-memory searched model on 256
inputs, and the written ``.ampq`` weighed against its price.

Needs torchvision (and timm): the ``zoo`` extra, installed beside torch 2.14.1 by ``make test-zoo``
(see the Makefile); skipped where torchvision does not import.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchvision")

from automl.cli import main as cli_main  # noqa: E402
from automl.cost.model import CostModel  # noqa: E402
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem  # noqa: E402
from automl.export.ampq import container_bytes, export_policy  # noqa: E402
from automl.export.onnx import ampq_to_onnx  # noqa: E402
from search_spaces.policy import Policy  # noqa: E402
from tests.zoo_support import FAMILIES, make_task, onnx_agreement  # noqa: E402

pytestmark = pytest.mark.zoo

SEARCH = ["--budget", "size<=0.25x", "--evaluations", "3", "--sensitivity", "heuristic", "--finetune-steps", "2"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# Open bug (issue 30): on these families some inputs leave a default ONNX Runtime session beyond
# the stated bound (a float-path difference that is not a one-step rounding tie). Measured on the
# policies a 3-evaluation search picked, 256 inputs: resnet18 1 input (max diff 0.06 of outputs
# 2.9, argmax 1.0), efficientnet_b0 7 (argmax 0.94), shufflenet_v2_x0_5 1 (argmax 0.996),
# convnext_tiny 4 (argmax 1.0). Expected failures, not strict: whether the search lands on such a
# policy depends on the policy; the other families must pass.
KNOWN_ONNX_MISMATCH = {"resnet18", "efficientnet_b0", "shufflenet_v2_x0_5", "convnext_tiny"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason="ONNX float-path mismatch beyond the bound (open, issue 30)",
                                            strict=False)) if n in KNOWN_ONNX_MISMATCH else n
    for n in FAMILIES])
def test_family_is_searched_exported_and_the_onnx_file_computes_the_searched_model(name, tmp_path, capsys):
    task_ref = f"tests.zoo_support:{name}"
    code, out, err = _cli(capsys, "analyse", "--task", task_ref)
    assert code == 0, err
    assert "layer" in out

    run_root = tmp_path / "runs"
    code, out, err = _cli(capsys, "search", "--task", task_ref, "--output", str(run_root), *SEARCH)
    assert code == 0, err
    (run,) = [p.parent for p in run_root.rglob("timings.json")]  # the run directory, not MLflow's artifact copy
    assert (run / "best_model.ampq").is_file() and (run / "best_model.onnx").is_file()
    for fmt in ("onnx", "ampq"):
        code, _, err = _cli(capsys, "export", str(run), "--format", fmt, "--output", str(tmp_path / f"again.{fmt}"))
        assert code == 0, err
    policy = Policy.from_dict(next(iter(json.loads((run / "best_policies.json").read_text()).values()))["policy"])

    task = make_task(name)
    problem = Problem.from_task(task)
    ev = Evaluator(problem, EvalConfig())
    policy = problem.space.resolve(policy)
    model = ev.prepare_final(policy)
    x = torch.randn(256, *FAMILIES[name][1], generator=torch.Generator().manual_seed(7))
    export_policy(model, problem.analysis, policy, tmp_path / "m.ampq", sample_input=x[:8],
                  float_model=ev.float_model, repeats=1)
    report = onnx_agreement(model, problem.analysis, policy, ampq_to_onnx(tmp_path / "m.ampq").SerializeToString(), x)
    assert report["untied"] == 0.0, report  # every difference starts as a one-step rounding tie
    assert report["argmax"] >= 0.99, report

    cm = CostModel(problem.analysis, problem.space,
                   container_bytes=container_bytes(task.model, problem.analysis, problem.space, task.sample_input,
                                                   engine=ev.engine))
    price = cm.price(policy).size_bytes
    assert abs((tmp_path / "m.ampq").stat().st_size / price - 1) <= 0.02
