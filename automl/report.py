"""Reading results back from the tracking store for `automl best` and `automl show`."""

from __future__ import annotations

import json

from automl.errors import TrackingError
from automl.tracking import BEST_TAG, _quiet_mlflow, check_tracking

COLUMNS = ("accuracy", "size_kb", "bitops_g", "mean_bits", "sparsity")


def _client(uri: str):
    _quiet_mlflow()
    check_tracking(uri)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def best_table(uri: str, experiment: str) -> str:
    """A Markdown table of the child runs tagged ``best=true`` in ``experiment``."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(f"no experiment {experiment!r} at {uri}; run `automl search` first or pass --experiment")
    runs = client.search_runs([exp.experiment_id], f"tags.{BEST_TAG} = 'true'", order_by=["attributes.start_time DESC"])
    if not runs:
        return f"no best policies in experiment {experiment!r} yet"
    lines = ["| run id | best for | searcher | " + " | ".join(COLUMNS) + " |", "|---" * (3 + len(COLUMNS)) + "|"]
    for r in runs:
        m = r.data.metrics
        vals = [f"{m.get(c, float('nan')):.4g}" for c in COLUMNS]
        lines.append(f"| {r.info.run_id} | {r.data.tags.get('best_for', '')} | {r.data.params.get('searcher', '')} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def show_run(uri: str, run_id: str) -> str:
    """One evaluated policy, layer by layer: activation bits, sparsity and channel bits."""
    client = _client(uri)
    try:
        run = client.get_run(run_id)
        text = client.download_artifacts(run_id, "policy.json")
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"run {run_id!r} has no policy at {uri}: {exc}. List runs with `automl best`.") from exc
    policy = json.loads(open(text).read())  # noqa: SIM115
    m = run.data.metrics
    lines = [
        f"run {run_id}: accuracy {m.get('accuracy', float('nan')):.4f}, size {m.get('size_kb', float('nan')):.2f} KB, "
        f"BitOps {m.get('bitops_g', float('nan')):.4f} G",
        f"{'layer':<26}{'act':>4}{'pruned':>8}  weight bits per channel (counts)",
    ]
    for name, lp in policy["layers"].items():
        bits = lp["weight_bits"]
        counts: dict[int, int] = {}
        for b in bits:
            counts[b] = counts.get(b, 0) + 1
        hist = " ".join(f"{b}b x{n}" for b, n in sorted(counts.items()) if b > 0)
        lines.append(f"{name:<26}{lp['act_bits']:>4}{counts.get(0, 0) / len(bits):>8.0%}  {hist}")
    return "\n".join(lines)
