"""The ``automl`` command line: an edge that turns arguments into typed configs once.

Every error of the project's own hierarchy is printed as one paragraph with exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from automl.config import SearchConfig, load_config
from automl.errors import AutoMLError

EXIT_USAGE = 2


def _search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a joint prune/quantize policy under a budget")
    p.add_argument("--config", help="YAML file with the same keys as these options (options override it)")
    p.add_argument("--task", help="reference:resnet20 | reference:resnet8 | package.module:function")
    p.add_argument("--budget", action="append", help="constraint, repeatable: size<=0.125x, bitops<=0.5G, latency<=2ms@bitserial")
    p.add_argument("--searcher", help="tpe | nsga2 | random | ilp | ppo | maskable_ppo | sac | td3 | ddpg | cmaes")
    p.add_argument("--evaluations", type=int, help="policies to evaluate")
    p.add_argument("--fidelity", type=int, choices=(1, 2, 3), help="1 PTQ, 2 + BN re-estimation, 3 + short QAT")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads (1 is often fastest on a shared machine)")
    p.add_argument("--workers", type=int, help="parallel workers sharing one Optuna study")
    p.add_argument("--tracking-uri", dest="tracking_uri", help="MLflow URI; default: SQLite store under --output")
    p.add_argument("--storage", help="Optuna storage URL; default: SQLite file under --output")
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("--output", help="run directory (journal, best policies as JSON, stores)")
    p.add_argument("--resume", help="continue a previous search: its MLflow run id or run directory")
    p.add_argument("--profile", dest="profiles", action="append", help="hardware profile name or YAML path, repeatable")
    p.add_argument("--finetune-steps", dest="finetune_steps", type=int, help="QAT steps for the final best policy")
    p.add_argument("--ptq", dest="eval_ptq", choices=("none", "adaquant", "adaquant-final"),
                   help="layer-wise PTQ optimisation after rounding: every evaluation, or only the final policy")
    p.add_argument("--calibration", dest="eval_calibration", choices=("data", "data-free"),
                   help="calibrate on the task's data or on inputs synthesised from BatchNorm statistics")
    p.add_argument("--power-of-two", dest="eval_power_of_two", action="store_true", default=None,
                   help="power-of-two (shift) scales, for shift-only hardware such as --profile bitserial_shift")
    p.add_argument("--psg", dest="finetune_psg", type=float, help="PSG strength in [0, 1] for the fine-tunes (0 = off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl", description="Joint pruning + mixed-precision quantization search.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _search_parser(sub)

    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 against the run store")
    ui.add_argument("--output", default="automl-runs")
    ui.add_argument("--tracking-uri", dest="tracking_uri", default="")
    ui.add_argument("--port", type=int, default=5000)

    best = sub.add_parser("best", help="print the best policies from the tracking store")
    best.add_argument("--output", default="automl-runs")
    best.add_argument("--tracking-uri", dest="tracking_uri", default="")
    best.add_argument("--experiment", default="automl-mpq")

    show = sub.add_parser("show", help="print one evaluated policy layer by layer")
    show.add_argument("run_id")
    show.add_argument("--output", default="automl-runs")
    show.add_argument("--tracking-uri", dest="tracking_uri", default="")

    tr = sub.add_parser("train-reference", help="train and cache a reference network")
    tr.add_argument("--arch", default="resnet20", choices=("resnet8", "resnet20"))
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--threads", type=int)
    tr.add_argument("--force", action="store_true")

    ph = sub.add_parser("profile-hardware", help="measure a latency profile of this machine for a model")
    ph.add_argument("--task", default="reference:resnet20")
    ph.add_argument("--output", default="automl-runs/profiles/measured.yaml")
    ph.add_argument("--threads", type=int, default=1)
    ph.add_argument("--repeats", type=int, default=5)

    an = sub.add_parser("analyse", help="print a model's quantizable layers and channel coupling")
    an.add_argument("--task", default="reference:resnet20")
    return parser


def _cmd_search(args: argparse.Namespace) -> int:
    from automl.runner import run_search

    config = load_config(args.config).merged(
        {k: getattr(args, k) for k in SearchConfig.__dataclass_fields__ if k != "extra" and hasattr(args, k)}
    )
    run_search(config)
    return 0


def _tracking_uri(args: argparse.Namespace) -> str:
    from automl.tracking import default_tracking_uri

    return args.tracking_uri or default_tracking_uri(args.output)


def _cmd_ui(args: argparse.Namespace) -> int:
    from automl.tracking import artifact_root, check_tracking

    uri = _tracking_uri(args)
    check_tracking(uri)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--default-artifact-root",
        artifact_root(args.output), "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1",
    ]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{args.port}"
    import urllib.request

    for _ in range(120):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                print(f"the MLflow server exited with code {proc.returncode}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    print(f"MLflow UI: {url}  (store {uri}; Ctrl-C stops it)", flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        return 0


def _cmd_best(args: argparse.Namespace) -> int:
    from automl.report import best_table

    print(best_table(_tracking_uri(args), args.experiment))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from automl.report import show_run

    print(show_run(_tracking_uri(args), args.run_id))
    return 0


def _cmd_train_reference(args: argparse.Namespace) -> int:
    from automl.reference import train_reference

    train_reference(args.arch, epochs=args.epochs, threads=args.threads, force=args.force)
    return 0


def _cmd_profile_hardware(args: argparse.Namespace) -> int:
    from automl.analysis import analyse
    from automl.cost.measure import profile_hardware
    from automl.loading import load_task

    task = load_task(args.task, threads=args.threads)
    analysis = analyse(task.model, task.sample_input)
    path = profile_hardware(task.model, task.sample_input, analysis, Path(args.output), threads=args.threads, repeats=args.repeats)
    print(f"wrote {path}; use it as --profile {path} and --budget 'latency<=...ms@{path}'")
    return 0


def _cmd_analyse(args: argparse.Namespace) -> int:
    from automl.analysis import analyse
    from automl.loading import load_task

    task = load_task(args.task)
    print(analyse(task.model, task.sample_input).report())
    return 0


COMMANDS = {
    "search": _cmd_search, "ui": _cmd_ui, "best": _cmd_best, "show": _cmd_show,
    "train-reference": _cmd_train_reference, "profile-hardware": _cmd_profile_hardware, "analyse": _cmd_analyse,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except AutoMLError as exc:
        if args.debug:
            traceback.print_exc()
        else:
            print(f"automl {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; every evaluated policy is saved. Continue with `automl search --resume <run dir>`.", file=sys.stderr)
        return 130
