"""The documentation stays generated: results pages come from saved rows, deterministically, and the
README stays short enough to read."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))  # the benchmarks are scripts that import each other by name

import results  # noqa: E402

STAMP = {"benchmark": "x", "commit": "abc1234", "date": "2026-01-01",
         "machine": {"cpu": "Test CPU", "cores": 2, "torch": "2.13.0", "threads": 1}}
W = ("resnet8", "resnet20", "resnet56", "mobilenetv2")

# One small rows file per converted benchmark, shaped like what its measuring path appends.
FIXTURES: dict[str, list[dict]] = {
    "eval_options": [{"device": "cpu", "policies": 4, "images": 750, "reads_fidelity_1": 3.0, "reads_fidelity_2": 3.0,
                      "reads_hessian": 410, "options": [{"name": "eval_batch_size=64", "batches": 12, "identical": True,
                                                        "max_accuracy_points": 0.0, "max_loss": 0.0, "max_kl": 0.0}]}],
    "bn_samples": [{"arch": "resnet20", "policies": 24, "seconds_per_eval_all": 1.0,
                    "by_samples": [{"samples": 250, "spearman": 0.9, "mean_abs_diff": 0.5, "max_abs_diff": 1.0,
                                    "time_ratio": 0.7, "seconds_per_eval": 0.7}]}],
    "budget_modes": [{"budget": b, "mode": m, "algo": a, "seed": s, "episodes": 4, "feasible": 1.0 - 0.1 * s,
                      "best": 0.1 + 0.01 * s, "last": float("nan") if s else 0.05, "steps_per_s": 100.0}
                     for b in ("size<=0.03x", "bitops<=0.004x") for m, a in (("mask", "PPO"), ("repair", "PPO"))
                     for s in (0, 1)],
    "cost_growth": [{"images": 250, "repeats": 3, "load": [1.0, 1.2],
                     "networks": [{"name": n, "macs": 1e6 * (i + 1) ** 2, "params": 1000 * (i + 1), "layers": 10 + i,
                                   "eval_s": 0.1 * (i + 1), "price_per_layer_us": 4.0 + i, "step_us": 50.0,
                                   "eval_per_gmac_s": 0.05 + 0.01 * i} for i, n in enumerate(W)]}],
    "cost_speed": [{"arch": "resnet20", "policies": 2000, "batch": 50, "rate_profiles": 8000.0,
                    "rate_no_profile": 11000.0, "batch_s": 0.0005, "numpy_op_s": 4e-7}],
    "env_speed": [{"budget": "size<=0.125x", "mode": "mask", "seconds": 5.0, "episodes": 0, "random_init": False,
                   "price_us": 20.0, "steps_per_s": {"layer": 4000.0, "joint": 6000.0, "joint_per_layer": float("nan")},
                   "episodes_per_min": []}],
    "eval_speed": [{"arch": "resnet20", "images": 750, "repeats": 7, "load": [0.5, 0.6], "forward_s": 0.4,
                    "apply_s": 0.002, "eval_s": 0.3, "eval_dense_s": 0.5, "incremental_s": 0.03, "pruned": 0.31,
                    "incremental_share": 0.25, "eval_over_forward": 0.75, "incremental_over_forward": 0.06,
                    "eval_dense_over_forward": 1.2}],
    "finetune_compare": [{"run": "", "rows": [{"policy": p, "recipe": r, "val_before": 0.97, "val_after": 0.98,
                                               "test_after": 0.98 + (0.001 if r == "new" else 0), "seconds": 10.0}
                                              for p in ("winner", "ilp size<=0.03125x") for r in ("old", "new")]}],
    "finetune_recipe": [{"policy": "w2a4", "recipes": {
        name: {"val_before": 0.69, "val_after": 0.98, "best_step": 250, "test": 0.98, "seconds": 60.0}
        for name in ("sgd_lr0.01_300", "adam_lr5e-4_300")}}],
    "latency_fidelity": [{"arch": "resnet20", "batch": 1, "seed": 0, "profile": "ort-cpu", "stated_error": 0.05,
                          "sparsity": [0.1, 0.5, 0.3], "mean_bits": [4.0, 3.0, 8.0],
                          "predicted_ms": [0.4, 0.2, 0.3], "measured_ms": [0.42, 0.21, 0.33]}],
    "methods": ([{"item": "adaquant", "arch": a, "policy": p, "rtn_f1": 0.9, "rtn_f2": 0.95, "ada_f1": 0.96,
                  "ada_f2": 0.95, "mse_ratio": 0.7, "rtn_seconds": 0.5, "ada_seconds": 4.0, "steps": 60}
                 for a in W[:2] for p in ("W4A4", "W3A3", "W2A4")]
                + [{"item": "datafree", "arch": a, "policy": "W4A4", "real": 0.98, "synthetic": 0.979} for a in W[:2]]
                + [{"item": "datafree_synthesis", "arch": a, "seconds": 14.0, "images": 128} for a in W[:2]]
                + [{"item": "nm", "arch": a, "pattern": p, "unstructured": "unstructured:0.5", "nm_float": 0.2,
                    "nm_f2": 0.97, "un_float": 0.6, "un_f2": 0.975, "nm_diversity": 100.0, "un_diversity": 200.0}
                   for a in W[:2] for p in ("2:4", "2:4-T")]
                + [{"item": "psg", "arch": a, "policy": p, "seed": s, "plain": 0.98, "psg": 0.981, "plain_seconds": 20.0,
                    "psg_seconds": 21.0, "steps": 200, "strength": 1.0} for a in W[:2] for p in ("W2A4", "W3A3")
                   for s in (0, 1)]
                + [{"item": "pow2", "arch": a, "policy": p, "arb_f1": 0.98, "arb_f2": 0.98, "p2_f1": 0.979,
                    "p2_f2": 0.978, "mult_us": 60.0, "shift_us": 52.0} for a in W[:2] for p in ("W8A8", "W4A4")]),
    "nm_export_size": [{"arch": "resnet8", "bits": 4, "files": [
        {"label": lab, "nm_layers": n, "file_bytes": b, "priced_bytes": b * 1.001, "max_abs_diff": 0.0}
        for lab, n, b in (("dense", 0, 40000), ("2:4", 6, 30000), ("4:8", 6, 31000), ("2:4-T", 6, 30000))]}],
    "overlap_contention": [{"steps": 50, "ft_alone": 20.0, "ft_thread": 21.0, "ft_process": 20.5, "eval_alone": 0.8,
                            "eval_thread": 0.9, "eval_process": 0.92}],
    "rl_exploration": [{"runs": [{"run": f"runs{s}/runs/r", "distinct": 60, "reference": 0.52, "best": 0.52 + 0.1 * s,
                                  "better": 3 * s, "explored": 59, "changed_vs_reference": 4, "changed_vs_best_before": 3,
                                  "projected": 0, "proposed": ["a", "b", str(s)]} for s in (0, 1, 2)]}],
    "scale_workers": [{"task": "reference:resnet8", "seed": 0, "cores": 2, "searches": [
        {"workers": w, "evaluations": 24, "search_s": 30.0 / w ** 0.5, "evals_per_min": 48.0 * w ** 0.5,
         "steady_per_min": 50.0 * w ** 0.5, "n_processes": w, "wall_s": 60.0 / w ** 0.3, "load_start": 1.0,
         "load_end": 2.0} for w in (1, 2)]}],
    "search_speed": [{"key": "resnet20", "default_searcher": "ilp_tpe", "default_overlap": False, "evaluations": 3,
                      "searches": {f"resnet20/{s}/{o}": {
                          "wall": 50.0, "test_accuracy": 0.985, "val_accuracy": 0.98, "load": [1.0, 1.0],
                          "timings": {"seconds_total": 50.0 + 5 * i, "eval_seconds": 20.0, "n_evaluations": 20,
                                      "n_proposed": 20, "seconds_search": 25.0, "seconds_finetune": 15.0}}
                          for i, (s, o) in enumerate((("ilp_tpe", False), ("ilp", False), ("tpe", False),
                                                      ("ilp_tpe", True)))}}],
    "searcher_learning": [{"problem": "synthetic", "budget": "size<=0.12x", "evaluations": 40, "seed": 0,
                           "fidelity": 1, "optimum": 0.6,
                           "rows": [{"row": r, "best": 40.0 + i, "distinct": 40, "counts": "40/40", "seconds": 1.0}
                                    for i, r in enumerate(("warm_start", "random", "tpe", "ppo"))]}],
    "sensitivity_methods": [{"fidelity": 2, "sampled_entries": 50, "entries": 287, "seconds_per_eval": 2.5,
                             "seconds_measured": 717.5, "tables": {
                                 k: {"spearman": float("nan") if k == "heuristic" else 0.9,
                                     "by_kind": {} if k == "heuristic" else {"weight": 0.57},
                                     "seconds": 0.0 if k == "heuristic" else 30.0, "evaluations": 2,
                                     "ilp": {"size<=0.0625x": 0.94, "size<=0.03125x": 0.5}}
                                 for k in ("fisher", "hessian", "heuristic")}}],
    "study_storage": [{"params": 63, "trials": 20, "memory_ms": 1.8, "sqlite_ms": 44.6, "sqlite_batched_ms": 16.1,
                       "sqlite_stale_pool_ms": 58.1}],
    "uniform_ptq": [{"arch": a, "float_val": 0.98, "float_test": 0.985,
                     "f1": {str(b): 0.9 + b / 100 for b in (8, 6, 4, 3, 2)},
                     "f2": {str(b): 0.95 + b / 200 for b in (8, 6, 4, 3, 2)}} for a in W[:2]],
}
# Benchmarks whose fixture is a file of rows saved by the protocol they summarise.
SAVED = {
    "default_evaluations": "search_quality_default_evaluations_rows.jsonl",
    "finetune_length": "finetune_length_rows.jsonl",
    "proxy_fidelity": "proxy_fidelity_resnet8.jsonl",
    "search_quality_pages": "search_quality_full_rows.jsonl",
}
CONVERTED = sorted([*FIXTURES, *SAVED])


def _rows_file(tmp_path: Path, name: str) -> Path:
    if name in SAVED:
        return results.RESULTS_DIR / SAVED[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({**STAMP, "benchmark": name, **r}) + "\n" for r in FIXTURES[name]))
    return path


def test_every_benchmark_but_the_adopted_four_saves_rows_and_summarises() -> None:
    adopted_later = {"search_quality", "export_check", "model_zoo", "gpu_check", "results"}
    scripts = {p.stem for p in BENCH.glob("*.py")} - adopted_later
    assert scripts == set(CONVERTED)
    for name in CONVERTED:
        text = (BENCH / f"{name}.py").read_text()
        assert "--summarise" in text or "add_arguments" in text, name
        assert "RESULT" in text, f"{name} keeps its closing RESULT line"


@pytest.mark.parametrize("name", CONVERTED)
def test_summarise_renders_a_page_from_rows_without_measuring(name: str, tmp_path: Path, capsys) -> None:
    rows = _rows_file(tmp_path, name)
    page = tmp_path / f"{name}.md"
    assert results.run_script(f"benchmarks/{name}.py", ["--summarise", str(rows), "--page", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# ") and "## Where the rows come from" in text
    result = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1 and "=" in result[0]
    if name not in SAVED:  # the stamp is reported, not invented
        assert "`abc1234`" in text and "Test CPU, 2 cores, torch 2.13.0, 1 thread" in text
    # the same rows give the same page, byte for byte
    again = tmp_path / "again.md"
    results.run_script(f"benchmarks/{name}.py", ["--summarise", str(rows), "--page", str(again)])
    assert again.read_text() == text


def test_append_rows_stamps_commit_and_machine(tmp_path: Path) -> None:
    path = results.append_rows(tmp_path / "r.jsonl", [{"a": 1}, {"a": 2.5}], "demo", threads=3)
    rows = results.load_rows(path)
    assert [r["a"] for r in rows] == [1, 2.5]
    for r in rows:
        assert list(r)[:4] == ["benchmark", "commit", "date", "machine"]
        assert r["benchmark"] == "demo" and r["machine"]["threads"] == 3 and r["machine"]["cores"] >= 1
        assert r["commit"] == "unknown" or len(r["commit"].removesuffix("-dirty")) >= 7


def test_a_page_renders_deterministically_and_labels_unstamped_rows(tmp_path: Path) -> None:
    rows = [{"x": 1.0}, {**STAMP, "x": 2.0}]
    summary = results.Summary((results.md_table(("x",), [[r["x"]] for r in rows]),),
                              results.result_line({"mean_x": 1.5, "n": 2}))
    kwargs = {"title": "Demo", "rows": rows, "summary": summary, "rows_paths": [tmp_path / "demo.jsonl"],
              "command": "python benchmarks/demo.py --summarise demo.jsonl", "sources": tmp_path / "none.yaml"}
    page = results.render_page(**kwargs)
    assert page == results.render_page(**kwargs)
    assert results.UNSTAMPED in page and "`abc1234`" in page
    assert page.rstrip().endswith("Regenerate this page with `python benchmarks/demo.py --summarise demo.jsonl`.")
    assert "RESULT mean_x=1.500 n=2" in page
    assert math.isnan(float(results.result_line({"v": float("nan")}).split("=")[1]))


def test_the_committed_results_pages_are_what_their_rows_give() -> None:
    assert results.generated_pages(), "docs/results holds generated pages"
    assert results.regenerate(check=True) == []



def test_readme_stays_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 400, f"README.md has {len(lines)} lines; move detail into docs/"


def _blocks(text: str, lang: str) -> list[str]:
    parts = text.split(f"```{lang}\n")[1:]
    return [p.split("```")[0] for p in parts]


def test_readme_examples_are_what_the_code_gives() -> None:
    """The README's policy parses as a policy, and its budget lines are what the search prints."""
    import torch

    from automl.analysis import analyse
    from automl.cost import CostModel
    from automl.problem.budget import Budget
    from automl.reference.models import resnet20
    from automl.runs.console import budget_line
    from search_spaces import Policy, SearchSpace

    text = (ROOT / "README.md").read_text()
    policy = json.loads(_blocks(text, "json")[0])
    assert Policy.from_dict(policy).to_dict() == policy
    assert policy["layers"]["2"]["weight_bits"][-1] == 0  # the pruned channel the text points at
    analysis = analyse(resnet20().eval(), torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis)
    cost_model = CostModel(analysis, space)
    printed = [budget_line(Budget.parse([c.strip() for c in line.split("->")[0].split(", ")]).bind(cost_model))
               for line in _blocks(text, "text")[0].splitlines()]
    assert printed == _blocks(text, "text")[0].splitlines()
