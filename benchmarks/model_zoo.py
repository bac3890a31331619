"""Every network a user brings: the model zoo searched, pruned, priced and exported, family by family.

For each family of :mod:`tests.zoo_support` (torchvision and timm networks, random weights, 3x32x32
inputs, labels from the float model), in one process with one thread:

- ``prunable``: the fraction of Conv/Linear output channels in prunable groups (after the
  canonical rewrite of :mod:`automl.analysis.canonical`);
- ``searchable``: ``automl.search`` (``size<=0.25x``, ``--evaluations``, heuristic sensitivities,
  2 fine-tune steps) ends with both files written;
- ``setup_over_forward``: set-up seconds before sensitivities (the stages analysis, cost model,
  evaluator of ``timings.json``) over one forward pass of the calibration set (2 batches of 32);
- ``overhead_over_eval``: the search stage's seconds outside evaluations per evaluation over one
  evaluation (``(search - evaluations) / evaluations``);
- the searched policy exported again from memory and its ONNX file run in a default ONNX Runtime
  session against the in-memory searched model on 256 inputs (:func:`tests.zoo_support.onnx_agreement`):
  ``argmax`` agreement, ``max_diff``, ``tied`` (samples where some activation code differs: one step at
  a rounding tie) and ``untied`` (samples whose first differing code is anything else); ``self``: the
  in-memory model's own argmax agreement between a batch of 256 and batches of 16 (the same rounding
  ties, decided by torch's own kernels); ``onnx_exact``: untied = 0 and argmax >= 0.99;
- ``priced_exact``: the priced float size equals the BatchNorm-folded model's tensors plus the header and
  the bit-width bytes, and the written ``.ampq`` weighs its price within 2 %.

Prints one row per family and ends with ``RESULT families=<n> searchable=<n> onnx_exact=<n>
priced_exact=<n> prunable_fraction_mean=<x> setup_over_forward_max=<x> overhead_over_eval_max=<x>``.
Needs the ``zoo`` extra (``make setup-zoo``): ``.venv-zoo/bin/python benchmarks/model_zoo.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import automl  # noqa: E402
from automl.cost.model import CostModel  # noqa: E402
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem  # noqa: E402
from automl.export.ampq import container_bytes, export_policy  # noqa: E402
from automl.export.onnx import ampq_to_onnx  # noqa: E402
from automl.quant.engine import fold_batchnorm  # noqa: E402
from automl.timing import pin_threads  # noqa: E402
from search_spaces.policy import Policy  # noqa: E402
from tests.zoo_support import FAMILIES, make_task, onnx_agreement  # noqa: E402

SETUP_STAGES = ("seconds_analysis", "seconds_cost_model", "seconds_evaluator")


def _forward_seconds(task: automl.Task, repeats: int = 3) -> float:
    batches = [x for i, (x, _) in enumerate(task.calib_loader) if i < 2]
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for x in batches:
                task.model(x)
            best = min(best, time.perf_counter() - start)
    return best


def _self_agreement(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        whole = model(x).argmax(dim=1)
        parts = torch.cat([model(chunk) for chunk in x.split(16)]).argmax(dim=1)
    return float((whole == parts).float().mean())


def _search(task: automl.Task, out: Path, evaluations: int) -> tuple[dict[str, float], Policy]:
    automl.search(task, budget=["size<=0.25x"], searcher={"sensitivity": "heuristic"},
                  finetune={"steps": 2, "eval_every": 1}, run={"evaluations": evaluations, "output": str(out)},
                  quiet=True)
    run = next(out.rglob("timings.json")).parent  # the run directory (MLflow's artifact copies lack it)
    if not ((run / "best_model.ampq").is_file() and (run / "best_model.onnx").is_file()):
        raise RuntimeError(f"the search wrote no best_model.ampq/.onnx in {run}")
    timings = json.loads((run / "timings.json").read_text())
    policy = Policy.from_dict(next(iter(json.loads((run / "best_policies.json").read_text()).values()))["policy"])
    return timings, policy


def _check(name: str, task: automl.Task, policy: Policy, out: Path) -> dict[str, Any]:
    problem = Problem.from_task(task)
    ev = Evaluator(problem, EvalConfig())
    policy = problem.space.resolve(policy)
    model = ev.prepare_final(policy)
    x = torch.randn(256, *FAMILIES[name][1], generator=torch.Generator().manual_seed(7))
    export_policy(model, problem.analysis, policy, out / "m.ampq", sample_input=x[:8], float_model=ev.float_model,
                  repeats=1)
    agree = onnx_agreement(model, problem.analysis, policy, ampq_to_onnx(out / "m.ampq").SerializeToString(), x)
    header = container_bytes(task.model, problem.analysis, problem.space, task.sample_input, engine=ev.engine)
    cm = CostModel(problem.analysis, problem.space, container_bytes=header)
    folded, _ = fold_batchnorm(problem.task.model, problem.analysis)
    real = sum(t.numel() * t.element_size() for t in folded.state_dict().values())
    bit_bytes = sum(layer.out_channels for layer in problem.analysis.layers)
    priced_float = cm.float_costs().size_bytes - header - bit_bytes
    file_over_price = (out / "m.ampq").stat().st_size / cm.price(policy).size_bytes
    return {**agree, "self": _self_agreement(model, x), "priced_float": priced_float, "real_float": real,
            "file_over_price": file_over_price,
            "priced_exact": abs(priced_float - real) < 0.5 and abs(file_over_price - 1) <= 0.02}


def run_family(name: str, evaluations: int) -> dict[str, Any]:
    row: dict[str, Any] = {"family": name}
    task = make_task(name)
    problem = Problem.from_task(task)
    layers = problem.analysis.layers
    groups = problem.analysis.groups
    row["prunable"] = (sum(lay.out_channels for lay in layers if groups[lay.out_group].prunable)
                       / sum(lay.out_channels for lay in layers))
    row["forward_s"] = _forward_seconds(problem.task)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        try:
            timings, policy = _search(task, out / "runs", evaluations)
        except Exception as exc:  # noqa: BLE001 - reported as not searchable, with the reason
            row.update(searchable=False, error=f"{type(exc).__name__}: {exc}"[:300])
            traceback.print_exc()
            return row
        row["searchable"] = True
        row["setup_s"] = sum(timings.get(k, 0.0) for k in SETUP_STAGES)
        row["setup_over_forward"] = row["setup_s"] / row["forward_s"]
        evals = timings.get("seconds_evaluations", 0.0)
        row["overhead_over_eval"] = (timings["seconds_search"] - evals) / evals if evals else float("inf")
        try:
            row.update(_check(name, task, policy, out))
        except Exception as exc:  # noqa: BLE001 - the export check failed: reported
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            traceback.print_exc()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--evaluations", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    pin_threads(1)
    rows = []
    print(f"{'family':20s} {'srch':>4s} {'prun':>5s} {'argmax':>6s} {'self':>5s} {'maxdiff':>8s} {'out':>6s} {'tied':>5s} "
          f"{'untied':>6s} {'priced/real float':>22s} {'file/price':>10s} {'setup/fwd':>9s} {'ovh/eval':>8s}", flush=True)
    for name in args.families:
        r = run_family(name, args.evaluations)
        rows.append(r)
        if "argmax" in r:
            print(f"{name:20s} {'yes':>4s} {r['prunable']:5.3f} {r['argmax']:6.3f} {r['self']:5.3f} {r['max_diff']:8.3g} "
                  f"{r['out_scale']:6.3g} {r['tied']:5.3f} {r['untied']:6.3f} {r['priced_float']:>11.0f}/{r['real_float']:<10d} "
                  f"{r['file_over_price']:10.4f} {r['setup_over_forward']:9.1f} {r['overhead_over_eval']:8.3f}", flush=True)
        else:
            print(f"{name:20s} {'yes' if r.get('searchable') else 'no':>4s} {r['prunable']:5.3f}  {r.get('error', '')}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    done = [r for r in rows if r.get("searchable")]
    checked = [r for r in done if "argmax" in r]
    print(f"RESULT families={len(rows)} searchable={len(done)} "
          f"onnx_exact={sum(r['untied'] == 0 and r['argmax'] >= 0.99 for r in checked)} "
          f"priced_exact={sum(bool(r['priced_exact']) for r in checked)} "
          f"prunable_fraction_mean={sum(r['prunable'] for r in rows) / len(rows):.3f} "
          f"setup_over_forward_max={max((r['setup_over_forward'] for r in done), default=float('nan')):.1f} "
          f"overhead_over_eval_max={max((r['overhead_over_eval'] for r in done), default=float('nan')):.3f}")


if __name__ == "__main__":
    main()
