"""The sensitivity stage of a search: per-layer damage tables, measured once, counted, cached.

Before a searcher starts, :func:`run_stage` gives the search's :class:`~agents.objective.Objective`
the per-layer sensitivities that the integer program, the repair, the TPE warm start and
the RL observation use. Methods (``searcher.sensitivity``, ``--sensitivity``):

- ``measured``: one-factor-at-a-time evaluations of the real evaluator at the search
  fidelity, starting from the uniform 8-bit policy (:func:`automl.problem.sensitivity.measure_sensitivities`);
  about 290 evaluations on ResNet-20.
- ``fisher`` / ``hessian``: second-order estimates from the float network's curvature
  (:mod:`automl.evaluation.curvature`); a few backward passes over a validation sample.
- ``heuristic``: :meth:`Sensitivities.heuristic`, every layer alike (no cost).

Tables are cached in a JSON file keyed by (model weights, search space, fidelity,
method, evaluator settings, data), with the number of evaluations and seconds they cost,
so a resumed or repeated search reuses them and counts them once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from automl.errors import ConfigError
from automl.evaluation.curvature import CurvatureConfig, curvature_sensitivities
from automl.problem.metrics import Metrics
from automl.problem.sensitivity import Sensitivities, measure_sensitivities
from automl.runs.config import SENSITIVITY_METHODS
from search_spaces.policy import Policy
from search_spaces.space import SearchSpace

if TYPE_CHECKING:
    from automl.runs.runner import Session

CACHE_FILE = "sensitivities.json"
TABLE_FILE = "sensitivities.csv"


@dataclass(frozen=True)
class SensitivityReport:
    """What the stage produced and what it cost.

    Attributes:
        sensitivities: the tables.
        method: ``measured``, ``fisher``, ``hessian`` or ``heuristic``.
        evaluations: what the tables cost, in evaluations of the search's evaluator:
            distinct policies evaluated (``measured``), or, for the curvature methods, the
            forward-pass work expressed in validation-split evaluations (rounded up).
        seconds: wall time of the measurement when it was made.
        spent: evaluations spent in this call (0 when the tables came from the cache).
        cached: whether the tables came from the cache.
        key: the cache key.
    """

    sensitivities: Sensitivities
    method: str
    evaluations: int
    seconds: float
    spent: int
    cached: bool
    key: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sensitivities"] = self.sensitivities.to_dict()
        return d


def check_method(method: str) -> str:
    if method not in SENSITIVITY_METHODS:
        raise ConfigError(
            f"searcher.sensitivity must be one of {list(SENSITIVITY_METHODS)}, got {method!r}; "
            "use e.g. --sensitivity fisher (cheap) or --sensitivity measured (one evaluation per layer choice)"
        )
    return method


def expected_measurements(space: SearchSpace, reference: Policy) -> int:
    """Evaluations :func:`automl.problem.sensitivity.measure_sensitivities` makes from ``reference`` (at most)."""
    from automl.problem.sensitivity import reference_decision

    ref = {s.name: reference_decision(s, lp) for s, (_, lp) in zip(space.layers, reference, strict=True)}
    n = 1 + sum(len(s.nonzero_bits) - 1 + len(s.act_bits) - 1 for s in space.layers)
    for members in space.coupled().values():
        lead = space.layer(members[0])
        n += sum(1 for lv in lead.sparsity_levels if lv != ref[lead.name][0])
    return n


def _fingerprint(ev: Any, space: SearchSpace, fidelity: int, method: str, extra: Any) -> str:
    h = hashlib.sha1()
    for name, t in sorted(ev.float_model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    xs, ys, _ = ev._split("val")
    for x in xs:
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(ys.detach().cpu().numpy().tobytes())
    config = getattr(ev, "config", None)
    cfg = config.to_dict() if config is not None else {}
    cfg.pop("fidelity", None)
    cfg.pop("seed", None)
    h.update(json.dumps([space.to_dict(), fidelity, method, cfg, extra], sort_keys=True, default=str).encode())
    return h.hexdigest()


def _bar(total: int, desc: str, unit: str, quiet: bool) -> Any:
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def _measure(evaluator: Any, space: SearchSpace, fidelity: int, quiet: bool) -> tuple[Sensitivities, int]:
    reference = space.uniform(8)
    bar = _bar(expected_measurements(space, reference), "sensitivities (measured)", "eval", quiet)
    calls = 0

    def evaluate(policy: Policy) -> Metrics:
        nonlocal calls
        calls += 1
        metrics = evaluator.evaluate(policy, fidelity)
        if bar is not None:
            bar.update(1)
        return metrics

    try:
        sens = measure_sensitivities(evaluate, space, reference, metric="kl")
    finally:
        if bar is not None:
            bar.close()
    return sens, calls


def _curvature(ev: Any, space: SearchSpace, method: str, config: CurvatureConfig, quiet: bool) -> tuple[Sensitivities, int]:
    xs, _, _ = ev._split("val")
    n_val = sum(len(x) for x in xs)
    n = min(config.samples, n_val)
    bar = _bar(n, f"sensitivities ({method})", "sample", quiet)
    try:
        sens, used = curvature_sensitivities(ev.engine, space, xs, method, config,
                                             progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    # cost in evaluations: forward-pass work over the forward passes of one validation evaluation
    return sens, int(-(-config.forward_equivalents(method, used) // n_val))


def sensitivity_stage(
    evaluator: Any,
    space: SearchSpace | Any,
    fidelity: int,
    method: str = "fisher",
    cache_dir: str | Path | None = None,
    *,
    curvature: CurvatureConfig | None = None,
    quiet: bool = True,
) -> SensitivityReport:
    """Sensitivities of ``space`` by ``method``, from the cache when they were made before.

    Args:
        evaluator: an :class:`automl.evaluation.evaluator.Evaluator` or a wrapper of one (a
            :class:`automl.problem.cache.CachedEvaluator`); ``measured`` evaluates through it.
        space: the search space, or anything with a ``space`` attribute (a cost model).
        fidelity: the fidelity ``measured`` evaluates at (part of the cache key for all).
        method: one of ``SENSITIVITY_METHODS``.
        cache_dir: directory of the ``sensitivities.json`` cache; no cache when ``None``.
        curvature: samples/batch/probes of ``fisher`` and ``hessian``.
        quiet: no progress bar.
    """
    check_method(method)
    space = space if isinstance(space, SearchSpace) else space.space
    if method == "heuristic":
        return SensitivityReport(Sensitivities.heuristic(space), method, 0, 0.0, 0, False, "")
    ev = getattr(evaluator, "evaluator", evaluator)
    curvature = curvature or CurvatureConfig(seed=getattr(getattr(ev, "config", None), "seed", 0))
    key = _fingerprint(ev, space, fidelity, method, curvature.to_dict() if method != "measured" else None)
    path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    cache = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    if key in cache:
        entry = cache[key]
        sens = Sensitivities.from_dict(entry["sensitivities"]).check(space)
        return SensitivityReport(sens, method, int(entry["evaluations"]), float(entry["seconds"]), 0, True, key)
    start = time.perf_counter()
    with torch.enable_grad():
        if method == "measured":
            sens, evaluations = _measure(evaluator, space, fidelity, quiet)
        else:
            sens, evaluations = _curvature(ev, space, method, curvature, quiet)
    sens = Sensitivities(sens.layers, sens.source, key)
    report = SensitivityReport(sens, method, evaluations, time.perf_counter() - start, evaluations, False, key)
    if path is not None:
        cache = json.loads(path.read_text()) if path.is_file() else {}  # another process may have written meanwhile
        cache[key] = {"sensitivities": sens.to_dict(), "method": method, "evaluations": evaluations,
                      "seconds": report.seconds, "created": time.time()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(path)
    return report


def sensitivities_for(
    evaluator: Any, space: SearchSpace | Any, fidelity: int, method: str = "fisher", cache_dir: str | Path | None = None,
    **options: Any,
) -> tuple[Sensitivities, int]:
    """``(tables, evaluations spent now)``: :func:`sensitivity_stage` for benchmarks.

    The count is 0 on a cache hit; ``sensitivity_stage(...).evaluations`` is what the
    tables cost when they were made.
    """
    report = sensitivity_stage(evaluator, space, fidelity, method, cache_dir, **options)
    return report.sensitivities, report.spent


def write_table(sens: Sensitivities, path: Path) -> Path:
    """The per-layer table as CSV: one row per layer and decision factor."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer", "factor", "choice", "damage"])
        for ls in sens.layers:
            t = ls.table()
            w0, a0 = ls.weight_bits.index(max(ls.weight_bits)), ls.act_bits.index(max(ls.act_bits))
            base = t[0, w0, a0]
            for i, lv in enumerate(ls.sparsity_levels):
                w.writerow([ls.name, "sparsity", lv, f"{t[i, w0, a0] - base:.6g}"])
            for j, b in enumerate(ls.weight_bits):
                w.writerow([ls.name, "weight_bits", b, f"{t[0, j, a0] - base:.6g}"])
            for k, a in enumerate(ls.act_bits):
                w.writerow([ls.name, "act_bits", a, f"{t[0, w0, k] - base:.6g}"])
    return path


def run_stage(session: Session, resuming: bool, quiet: bool, log: Callable[[str], None] | None = None) -> SensitivityReport:
    """The stage inside ``automl search``: tables for the session's objective, logged once.

    The cache lives in the search's output directory, so a resumed search and a repeated
    search of the same model and space reuse the tables.
    """
    cfg = session.config
    report = sensitivity_stage(session.evaluator, session.problem.space, cfg.evaluation.fidelity, cfg.searcher.sensitivity,
                               cache_dir=cfg.run.output, quiet=quiet)
    session.objective.sensitivities = report.sensitivities
    table = write_table(report.sensitivities, session.run_dir / TABLE_FILE)
    (session.run_dir / "sensitivity_report.json").write_text(
        json.dumps({k: v for k, v in report.to_dict().items() if k != "sensitivities"}, indent=1)
    )
    tracker = session.tracker
    if tracker is not None and not resuming:
        tracker.log_parent_metrics({"sensitivity_evaluations": float(report.evaluations),
                                    "sensitivity_seconds": report.seconds})
        tracker.log_parent_file(table)
    if not quiet:
        origin = "from the cache" if report.cached else f"in {report.seconds:.1f} s"
        (log or (lambda s: print(s, file=sys.stderr)))(
            f"sensitivities ({report.method}): {report.evaluations} evaluations' worth, {origin}"
        )
    return report
