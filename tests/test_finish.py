"""The end of a search: one fine-tune per distinct winner, the float ONNX file beside the exported
one, and float against the winner side by side in the summary."""

from __future__ import annotations

import json

import automl.runs.results as results
from automl.runs.config import SearchConfig
from automl.runs.runner import run_search


def test_a_policy_best_for_several_constraints_is_fine_tuned_once(tmp_path, monkeypatch, capsys):
    from tests.tasks import tiny

    calls = []
    real = results._final

    def counting(ev, r, *args, **kwargs):
        calls.append(r.number)
        return real(ev, r, *args, **kwargs)

    monkeypatch.setattr(results, "_final", counting)
    # Loose limits on two metrics: the most accurate policy meets both, so it wins all three labels
    # (the whole budget and each constraint alone).
    cfg = SearchConfig(task="tests.tasks:tiny", budget=("size<=0.9x", "bitops<=0.9x"), searcher={"name": "random"},
                       run={"evaluations": 5, "output": str(tmp_path)}, finetune={"steps": 2})
    run_search(cfg, task=tiny(), quiet=False)
    out = capsys.readouterr().out
    run_dir = next((tmp_path / "runs").iterdir())
    best = json.loads((run_dir / "best_policies.json").read_text())
    trials = [v["trial"] for v in best.values()]
    assert len(best) == 3 and len(set(trials)) < len(trials), trials  # a trial shared by labels (seeded run)
    assert sorted(calls) == sorted(set(trials)), (calls, trials)  # one fine-tune per distinct trial
    by_trial = {}
    for v in best.values():  # the labels that share a trial share its test accuracy and fine-tune
        by_trial.setdefault(v["trial"], set()).add((v["test_accuracy"], json.dumps(v["finetune"], sort_keys=True)))
    assert all(len(s) == 1 for s in by_trial.values())
    assert "its fine-tune for" in out
    # The float network's ONNX file is written beside the exported one, and the summary compares them.
    assert (run_dir / "best_model.onnx").is_file() and (run_dir / "best_model.float.onnx").is_file()
    report = json.loads((run_dir / "export_report.json").read_text())["onnx"]
    assert report["float_onnx_path"] == str(run_dir / "best_model.float.onnx")
    assert "| deployment | float | exported winner | |" in out
    assert "| test accuracy |" in out and "ONNX Runtime ms, batch 1" in out


def test_the_summary_says_why_a_file_is_slower():
    report = {"batch": 64, "speedup_b1": 0.7, "speedup_batch": 1.2}
    why = results.slower_reason(report, {"size": 1000.0})
    assert "slower than float at batch 1:" in why and "latency<=" in why
    assert "batch 64" not in why
    assert "re-measure the profile" in results.slower_reason(report, {"latency@ort-cpu": 1.0})
    assert results.slower_reason({"batch": 64, "speedup_b1": 1.1, "speedup_batch": 1.0}, {"size": 1.0}) == ""
