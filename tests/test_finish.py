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


def test_a_repeated_proposal_gets_no_mlflow_run_of_its_own(tmp_path):
    """The integer program with a two-point sweep proposes its best policy again once the sweep is
    over: those repeats are counted on the first run of that policy, not logged as new runs."""
    from mlflow import MlflowClient

    from automl.tracking.tracker import TRIAL_TAG, default_tracking_uri
    from tests.tasks import tiny

    cfg = SearchConfig(task="tests.tasks:tiny", searcher={"name": "ilp", "options": {"sweep": 2}},
                       run={"evaluations": 6, "output": str(tmp_path)}, finetune={"steps": 1})
    result = run_search(cfg, task=tiny(), quiet=True)
    assert result.n_cache_hits >= 1  # the premise: the searcher repeated itself
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("automl-mpq")
    children = [r for r in client.search_runs([exp.experiment_id], max_results=1000) if TRIAL_TAG in r.data.tags]
    assert len(children) == result.n_evaluations == len({r.policy.key() for r in result.records})
    again = {int(c.data.tags[TRIAL_TAG]): c.data.metrics.get("times_proposed_again", 0.0) for c in children}
    assert sum(again.values()) == result.n_cache_hits
