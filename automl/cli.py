"""The ``automl`` command line: an edge that turns arguments into typed configs once.

Every error of the project's own hierarchy is printed as one paragraph with exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from automl.errors import AutoMLError, ConfigError, TrackingError
from automl.runs.config import SearchConfig, dotted_keys, read_config_file
from automl.runs.lifecycle import Terminated

EXIT_USAGE = 2
DEFAULT_OUTPUT = "automl-runs"  # RunConfig.output's default
_CONFIG_KEYS = ("task", "data_dir", "budget", "profiles")  # the top-level keys a flag sets; the others are dotted


def _nm_list(text: str) -> tuple[str, ...]:
    """``--nm 2:4,4:8`` -> ``("2:4", "4:8")``; the search space checks the names."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _debug_flag() -> argparse.ArgumentParser:
    """``--debug`` for every subcommand, so it works anywhere on the line."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parent


def _search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a joint prune/quantize policy under a budget", parents=[_debug_flag()])
    p.add_argument("--config", help="YAML file with the sections of a search configuration (options override it)")
    p.add_argument("--task", help="reference:resnet20 | reference:resnet8 | reference:<dataset>/<arch> | package.module:function")
    p.add_argument("--data-dir", dest="data_dir", help="where a reference task's dataset is (Fashion-MNIST, CIFAR-10)")
    p.add_argument("--budget", action="append", help="constraint, repeatable: size<=0.125x, bitops<=0.5G, latency<=2ms@ort-cpu")
    p.add_argument("--searcher", dest="searcher.name",
                   help="ilp_tpe (default: the integer program's sweep, then TPE) | tpe | nsga2 | random | ilp | ppo | "
                        "maskable_ppo | sac | td3 | ddpg | cmaes | gp")
    p.add_argument("--evaluations", dest="run.evaluations", type=int, help="distinct policies to evaluate")
    p.add_argument("--fidelity", dest="evaluation.fidelity", type=int, choices=(1, 2, 3),
                   help="1 PTQ, 2 + BN re-estimation, 3 + short QAT")
    p.add_argument("--seed", dest="run.seed", type=int)
    p.add_argument("--threads", dest="run.threads", type=int, help="torch threads (1 is often fastest on a shared machine)")
    p.add_argument("--workers", dest="run.workers", type=int, help="parallel workers sharing one Optuna study")
    p.add_argument("--device", dest="run.device", help="auto (a GPU when there is one) | cpu | cuda | cuda:N")
    p.add_argument("--devices", dest="run.devices",
                   help="devices of the local workers, comma-separated (cuda:0,cuda:1): one per worker, round-robin")
    p.add_argument("--tracking-uri", dest="tracking.uri", help="MLflow URI; default: SQLite store under --output")
    p.add_argument("--storage", dest="searcher.storage", help="Optuna storage URL; default: SQLite file under --output")
    p.add_argument("--experiment", dest="tracking.experiment", help="MLflow experiment name")
    p.add_argument("--output", dest="run.output", help="run directory (journal, best policies as JSON, stores)")
    p.add_argument("--resume", dest="run.resume", help="continue a previous search: its run directory or MLflow run id")
    p.add_argument("--allow-loose-budget", dest="run.allow_loose_budget", action="store_true", default=None,
                   help="search even when the float model already meets the budget (refused otherwise: it constrains nothing)")
    p.add_argument("--profile", dest="profiles", action="append", help="hardware profile name or YAML path, repeatable")
    p.add_argument("--finetune-steps", dest="finetune.steps", type=int, help="steps of the final fine-tune (0 = off)")
    p.add_argument("--finetune-lr", dest="finetune.lr", type=float, help="peak learning rate of the final fine-tune")
    p.add_argument("--finetune-optimizer", dest="finetune.optimizer", help="sgd | adam (final fine-tune)")
    p.add_argument("--finalists", dest="finetune.finalists", type=int,
                   help="short-fine-tune this many of the best policies and fine-tune the one that validates best")
    p.add_argument("--finetune-overlap", dest="finetune.overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="fine-tune each new incumbent on a spare core during the search (default off: it pays only "
                        "when the winner comes early; --no-finetune-overlap runs the fine-tune after it)")
    p.add_argument("--sensitivity", dest="searcher.sensitivity",
                   help="per-layer sensitivities before the search: hessian | fisher | measured | heuristic")
    p.add_argument("--ptq", dest="evaluation.ptq", choices=("none", "adaquant", "adaquant-final"),
                   help="layer-wise PTQ optimisation after rounding: every evaluation, or only the final policy")
    p.add_argument("--calibration", dest="evaluation.calibration", choices=("data", "data-free"),
                   help="calibrate on the task's data or on inputs synthesised from BatchNorm statistics")
    p.add_argument("--widen-activations", dest="searcher.widen_activations", action="store_true", default=None,
                   help="evaluate every policy with its widest activation bits when no constraint prices them "
                        "(a size-only budget); recorded like a repair")
    p.add_argument("--power-of-two", dest="evaluation.power_of_two", action="store_true", default=None,
                   help="power-of-two (shift) scales, for shift-only hardware such as --profile bitserial_shift")
    p.add_argument("--nm", dest="space.nm_patterns", type=_nm_list,
                   help="N:M weight sparsity patterns a layer may take besides dense, e.g. 2:4,4:8 or 2:4-T (transposable)")
    p.add_argument("--psg", dest="finetune.psg", type=float,
                   help="PSG strength in [0, 1] of the final fine-tune (0 = off; fidelity 3's QAT: evaluation.qat_psg)")


def _pareto_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pareto", help="sweep budgets: our accuracy-vs-cost front against uniform 8/6/4/3/2-bit curves",
                       parents=[_debug_flag()])
    p.add_argument("--config", help="YAML file with the sections of a search configuration (options override it)")
    p.add_argument("--task", help="reference:resnet20 | reference:resnet8 | reference:<dataset>/<arch> | package.module:function")
    p.add_argument("--budgets", action="append",
                   help="limits of --metric, comma-separated or repeated: 0.25x,0.1x,40kB (default: --levels levels)")
    p.add_argument("--metric", default="size", help="size | bitops: what the budgets constrain (default size)")
    p.add_argument("--levels", type=int, help="default levels from 1/4x to 1/64x (size) or 1/16x to 1/256x (bitops); 8")
    p.add_argument("--evaluations", dest="run.evaluations", type=int, help="distinct policies searched per budget (default 20)")
    p.add_argument("--searcher", dest="searcher.name", help="ilp_tpe | tpe | nsga2 | random | ilp | ppo | ... (as `automl search`)")
    p.add_argument("--fidelity", dest="evaluation.fidelity", type=int, choices=(1, 2, 3),
                   help="1 PTQ, 2 + BN re-estimation, 3 + short QAT")
    p.add_argument("--finetune-overlap", dest="finetune.overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="fine-tune each new incumbent on a spare core during the search (default off: it pays only "
                        "when the winner comes early; --no-finetune-overlap runs the fine-tune after it)")
    p.add_argument("--sensitivity", dest="searcher.sensitivity", help="hessian | fisher | measured | heuristic")
    p.add_argument("--seed", dest="run.seed", type=int)
    p.add_argument("--threads", dest="run.threads", type=int, help="torch threads")
    p.add_argument("--output", dest="run.output", help="directory; the sweep goes to <output>/pareto/<timestamp>")
    p.add_argument("--experiment", dest="tracking.experiment", help="MLflow experiment name")
    p.add_argument("--tracking-uri", dest="tracking.uri", help="MLflow URI; default: SQLite store under --output")
    p.add_argument("--finetune-steps", dest="finetune.steps", type=int,
                   help="final fine-tune steps of every front winner before its test score (0 = score as searched)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl", description="Joint pruning + mixed-precision quantization search.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _search_parser(sub)
    _pareto_parser(sub)

    store = "the --output directory of `automl search` (default automl-runs); its store is <output>/mlflow.db"
    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 against the run store", parents=[_debug_flag()])
    ui.add_argument("--output", default=None, help=store + " (created when named explicitly)")
    ui.add_argument("--tracking-uri", dest="tracking_uri", default="", help="an MLflow store URI instead of --output's")
    ui.add_argument("--port", type=int, default=5000, help="TCP port on 127.0.0.1 (default 5000; a taken one is refused "
                    "with a free one suggested)")
    ui.add_argument("--experiment", default="automl-mpq")

    best = sub.add_parser("best", help="print the best policies from the tracking store", parents=[_debug_flag()])
    best.add_argument("--output", default=None, help=store)
    best.add_argument("--tracking-uri", dest="tracking_uri", default="", help="an MLflow store URI instead of --output's")
    best.add_argument("--experiment", default="automl-mpq")

    show = sub.add_parser("show", help="print one evaluated policy layer by layer", parents=[_debug_flag()])
    show.add_argument("run_id")
    show.add_argument("--output", default=None, help=store)
    show.add_argument("--tracking-uri", dest="tracking_uri", default="", help="an MLflow store URI instead of --output's")

    tr = sub.add_parser("train-reference", help="train and cache a reference network", parents=[_debug_flag()])
    tr.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist", "cifar10"))
    tr.add_argument("--arch", default="resnet20", choices=("resnet8", "resnet20", "mobilenetv2"))
    tr.add_argument("--data-dir", dest="data_dir", help="where the dataset is (see automl/data/)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--threads", type=int)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--force", action="store_true")
    tr.add_argument("--ship", action="store_true", help="also store it compactly in automl/weights (for maintainers)")

    ph = sub.add_parser("profile-hardware", help="measure a latency profile of this machine for a model", parents=[_debug_flag()])
    ph.add_argument("--task", default="reference:resnet20")
    ph.add_argument("--output", default="automl-runs/profiles/measured.yaml")
    ph.add_argument("--threads", type=int, default=1)
    ph.add_argument("--repeats", type=int, default=None, help="timing rounds (default 5 for torch, 15/3 for onnxruntime)")
    ph.add_argument("--runtime", choices=("onnxruntime", "torch"), default="onnxruntime",
                    help="onnxruntime: what the exported .onnx runs on (cached as ort-cpu / ort-cpu-b<batch>); "
                         "torch: torch kernels, int8 = torch.ao quantized kernels no exporter produces")
    ph.add_argument("--batch", type=int, default=16, help="onnxruntime: the batch timed besides batch 1")
    ph.add_argument("--force", action="store_true", help="onnxruntime: measure again even if cached")
    ph.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                    help="onnxruntime: the execution provider timed (cached as ort-<provider>[-b<batch>])")
    ph.add_argument("--device", default="cpu", help="torch: where the layers are timed (cpu | cuda | cuda:N)")

    ex = sub.add_parser("export", help="write a finished run's best policy as ONNX (QDQ int8, pruned) or .ampq")
    ex.add_argument("run", help="a run directory (holding best_model.ampq) or an .ampq file")
    ex.add_argument("--format", choices=("onnx", "ampq"), default="onnx")
    ex.add_argument("--output", help="file to write (default: best_model.<format> next to the source)")

    from automl.runs.worker_command import add_worker_parser

    add_worker_parser(sub, [_debug_flag()])
    an = sub.add_parser("analyse", help="print a model's quantizable layers and channel coupling", parents=[_debug_flag()])
    an.add_argument("--task", default="reference:resnet20")
    return parser


def _config_and_flags(args: argparse.Namespace) -> tuple[SearchConfig, dict[str, Any], dict[str, Any]]:
    """The ``--config`` file's configuration, its raw data, and the command line's overrides."""
    data = read_config_file(args.config) if args.config else {}
    try:
        config = SearchConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"config file {args.config!r}: {exc}") from exc
    overrides = {k: v for k, v in vars(args).items() if k in _CONFIG_KEYS or "." in k}
    return config, data, overrides


def _cmd_search(args: argparse.Namespace) -> int:
    config, data, overrides = _config_and_flags(args)
    config = config.merged(overrides)
    explicit = dotted_keys(data) | {k for k, v in overrides.items() if v is not None}
    from automl.runs.precheck import check_inputs

    check_inputs(config)  # every name, without torch, MLflow or Optuna, and without writing anything
    task, timer = None, None
    if not config.run.resume:  # a resumed run loads its own task
        _warm_import("mlflow")  # seconds of imports, overlapping the task's load
        from automl.runs.loading import check_task_data, load_task

        start = time.perf_counter()
        if config.run.device not in ("auto", "cpu"):  # a GPU asked for on a machine without one: before the task
            from automl.quant.device import resolve_device  # is built (torch; build_session checks "auto" too)

            resolve_device(config.run.device)
        check_task_data(config.task, config.data_dir)  # a missing dataset likewise (imports only for those tasks)
        # a factory that returns no Task fails here
        task = load_task(config.task, threads=config.run.threads, data_dir=config.data_dir)
        from automl.timing import StageTimer

        timer = StageTimer()
        timer.started = start
        timer.add("task", time.perf_counter() - start)
    from automl.runs.runner import run_search  # torch, Optuna, MLflow: only once the input is known to be sound

    run_search(config, task=task, explicit=explicit, timer=timer)
    return 0


def _warm_import(module: str) -> None:
    """Import ``module`` on a daemon thread (it writes nothing; a failing command does not wait for it)."""
    import importlib
    import threading

    threading.Thread(target=importlib.import_module, args=(module,), name=f"import-{module}", daemon=True).start()


def _cmd_pareto(args: argparse.Namespace) -> int:
    from automl.pareto.config import DEFAULT_PARETO_EVALUATIONS, ParetoConfig

    config, data, overrides = _config_and_flags(args)
    if overrides.get("run.evaluations") is None and "run.evaluations" not in dotted_keys(data):
        overrides["run.evaluations"] = DEFAULT_PARETO_EVALUATIONS
    config = config.merged(overrides)
    budgets = tuple(part for item in args.budgets or () for part in item.split(","))
    pareto = ParetoConfig(config, budgets, args.metric, args.levels)
    from automl.runs.precheck import check_inputs

    check_inputs(config)
    from automl.pareto.sweep import run_pareto  # torch, Optuna, MLflow: only once the input is known to be sound

    run_pareto(pareto)
    return 0


def _tracking_uri(args: argparse.Namespace) -> str:
    from automl.tracking.tracker import default_tracking_uri

    return args.tracking_uri or default_tracking_uri(args.output or DEFAULT_OUTPUT)


def _existing_store(args: argparse.Namespace) -> str:
    """The tracking URI of ``--output``/``--tracking-uri``, refused when it names a SQLite store
    that does not exist: reading commands create no store (checked before MLflow is imported)."""
    from automl.tracking.tracker import sqlite_path

    uri = _tracking_uri(args)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        given = f"--tracking-uri {args.tracking_uri}" if args.tracking_uri else (
            f"--output {args.output}" if args.output else f"the default --output {DEFAULT_OUTPUT} (in {Path.cwd()})")
        raise TrackingError(
            f"no tracking store at {db} ({given}): no search has logged there. Expected the --output directory of an "
            "`automl search` (it holds mlflow.db); pass --output <that directory>, or --tracking-uri of its store."
        )
    return uri


def _cmd_ui(args: argparse.Namespace) -> int:
    from automl.runs.ui_command import cmd_ui

    uri = _existing_store(args) if args.output is None and not args.tracking_uri else _tracking_uri(args)
    return cmd_ui(uri, args.output or DEFAULT_OUTPUT, args.port, args.experiment)


def _cmd_best(args: argparse.Namespace) -> int:
    uri = _existing_store(args)
    from automl.runs.console import command_prefix
    from automl.runs.lifecycle import close_stale_in_store
    from automl.tracking.report import best_table

    for run_id in close_stale_in_store(uri):
        print(f"closed run {run_id} as KILLED: its search process is gone (killed without clean-up)", file=sys.stderr)
    print(best_table(uri, args.experiment, f"{command_prefix()} search --resume"))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    uri = _existing_store(args)
    from automl.tracking.report import show_run

    print(show_run(uri, args.run_id))
    return 0


def _cmd_train_reference(args: argparse.Namespace) -> int:
    from automl.reference.checkpoints import train_reference

    path = train_reference(args.arch, epochs=args.epochs, seed=args.seed, threads=args.threads, force=args.force,
                           dataset=args.dataset, data_dir=args.data_dir)
    if args.ship:
        from automl.reference.weights import ship

        ship(path)
    return 0


def _cmd_profile_hardware(args: argparse.Namespace) -> int:
    from automl.analysis import analyse, canonical_model
    from automl.export.torch_profile import profile_hardware
    from automl.runs.loading import load_task

    task = load_task(args.task, threads=args.threads)
    model = canonical_model(task.model.eval(), task.sample_input)  # the network the search prices
    analysis = analyse(model, task.sample_input)
    if args.runtime == "onnxruntime":
        from automl.export.ort_profile import ort_profile

        for batch in dict.fromkeys((1, args.batch)):
            profile, path = ort_profile(model, task.sample_input, analysis, batch=batch, threads=args.threads,
                                        force=args.force, provider=args.provider)
            print(f"{profile.name}: {path} (stated error {profile.stated_error:.1%}); in a budget: "
                  f"--budget 'latency<=0.5x@{profile.name}' (this model, {args.threads} thread(s))")
        return 0
    path = profile_hardware(model, task.sample_input, analysis, Path(args.output), threads=args.threads,
                            repeats=args.repeats or 5, device=args.device)
    print(f"wrote {path}; use it as --profile {path} and --budget 'latency<=...ms@{path}'")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if not (run / "best_model.ampq" if run.is_dir() else run).is_file():  # before torch and ONNX are imported
        found = "a directory without best_model.ampq" if run.is_dir() else "no such file or directory"
        from automl.errors import ExportError

        raise ExportError(
            f"cannot export {run}: expected a finished run directory (holding best_model.ampq, written when the search "
            f"ends with a feasible policy) or an .ampq file, got {found}. Pass a run directory printed by `automl "
            "search` (e.g. automl-runs/runs/<timestamp>)."
        )
    from automl.export.onnx import export_file

    print(f"wrote {export_file(Path(args.run), args.format, args.output)}")
    return 0


def _cmd_analyse(args: argparse.Namespace) -> int:
    from automl.analysis import analyse, canonical_model
    from automl.runs.loading import load_task

    task = load_task(args.task)
    print(analyse(canonical_model(task.model.eval(), task.sample_input), task.sample_input).report())
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from automl.runs.worker_command import cmd_worker

    return cmd_worker(args)


COMMANDS = {
    "search": _cmd_search, "ui": _cmd_ui, "best": _cmd_best, "show": _cmd_show,
    "train-reference": _cmd_train_reference, "profile-hardware": _cmd_profile_hardware, "analyse": _cmd_analyse,
    "export": _cmd_export, "worker": _cmd_worker, "pareto": _cmd_pareto,
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
    except (KeyboardInterrupt, Terminated) as exc:
        from automl.runs.console import command_prefix

        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        if args.command == "pareto":
            print(f"{what}; the sweep's MLflow runs are closed as KILLED, the journals of its levels stay in "
                  "<output>/pareto/<sweep>/level-*; a sweep does not resume, start it again.", file=sys.stderr)
            return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)
        print(interrupted_message(what, args.command, getattr(exc, "automl_run_dir", None), command_prefix()),
              file=sys.stderr)
        return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


def interrupted_message(what: str, command: str, run_dir: str | None, prefix: str) -> str:
    """What an interrupted command left: a run to resume (with its path and how many policies it
    holds) or nothing."""
    if command != "search":
        return f"{what}."
    if run_dir is None:
        return (f"{what} before the first evaluation; nothing was saved (no run directory, no MLflow run). "
                "Start the search again with the same command.")
    journal = Path(run_dir) / "trials.jsonl"
    try:
        done = sum(1 for line in journal.read_text().splitlines() if line.strip())
    except OSError:
        done = 0
    return (f"{what}; the run {run_dir} is saved with {done} evaluated polic{'y' if done == 1 else 'ies'}. "
            f"Continue with: {prefix} search --resume {shlex.quote(run_dir)}")
