"""The same searches on a GPU and on the CPU in one run: equal decisions, and what the GPU buys.

Two searches, each run twice (``--device``, then ``--compare-device``) with the same seed, each
run in a child process of its own (the CPU one with ``CUDA_VISIBLE_DEVICES`` empty, so that
``auto`` resolves to the CPU whatever the search's default device):

- ``default``: ``automl search``'s default (the reference ResNet-20, ``--evaluations`` trials,
  the final fine-tune and the exports);
- ``cifar``: a CIFAR-10-size search, ResNet-20 on 3x32x32 inputs. Synthetic data (class
  templates plus noise; the network trained on it briefly, on the CPU, once, in this process)
  stands in for CIFAR-10, which a GPU machine without a network cannot fetch.

For each: the policies proposed in trial order (the same seed should propose the same ones
until a score differs enough to change a decision), the largest validation-accuracy
difference between the two devices over the policies both evaluated (in points), and the
wall seconds of every stage of the run (``timings.json``). On the first device it also times
``eval_over_forward`` (a cold fidelity-1 evaluation of a random policy over a BatchNorm-folded
float forward pass of the validation split, as ``benchmarks/eval_speed.py``, synchronised).

It ends with one line::

    RESULT gpu=<name> eval_over_forward=<x> search_s=<s> cpu_gpu_max_score_diff=<points>

``search_s`` is the default search's wall time on ``--device`` (the issue's targets on a GPU:
``eval_over_forward <= 1.5``, ``search_s < 60``, ``cpu_gpu_max_score_diff <= 0.5``).

Without CUDA it exits 2 saying so. ``--device cpu --compare-device cpu --quick`` runs the
whole path on the CPU (both sides must then agree exactly), which ``tests/test_gpu_check.py`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("default", "cifar")
CHILD_MARK = "GPU_CHECK_CHILD "


def needs_cuda(*devices: str) -> bool:
    return any(d != "cpu" for d in devices)


def child_env(device: str) -> dict[str, str]:
    """The environment of a child that runs on ``device``: the CPU one sees no GPU at all."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]  # the child's cuda:0
    return env


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """How two runs of one search agree: identical leading policies and the score difference.

    ``a`` and ``b`` hold ``trials``: ``[policy key, validation accuracy]`` in trial order.
    The score difference is taken over the policies both runs evaluated, in accuracy points.
    """
    same = 0
    for (pa, _), (pb, _) in zip(a["trials"], b["trials"], strict=False):
        if pa != pb:
            break
        same += 1
    acc_a, acc_b = dict(map(tuple, a["trials"])), dict(map(tuple, b["trials"]))
    common = sorted(set(acc_a) & set(acc_b))
    diff = max((abs(acc_a[k] - acc_b[k]) * 100 for k in common), default=float("nan"))
    return {"same_leading_policies": same, "trials": min(len(a["trials"]), len(b["trials"])),
            "common_policies": len(common), "max_score_diff_points": diff,
            "same_best": a["best"] == b["best"]}


# the child: one search on one device --------------------------------------------------------
def _synthetic_cifar(out: Path, steps: int, n: int, seed: int = 0) -> Path:
    """A ResNet-20 on 3x32x32 trained briefly on class templates plus noise; data and weights in ``out``."""
    import torch

    from automl.reference.models import ResNet

    path = out / "cifar_task.pt"
    if path.is_file():
        return path
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 3, 32, 32, generator=gen)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (count,), generator=gen)
        return templates[y] + 1.5 * torch.randn(count, 3, 32, 32, generator=gen), y

    data = {name: split(count) for name, count in (("train", n), ("calib", n // 4), ("val", n // 4), ("test", n // 4))}
    torch.manual_seed(seed)
    model = ResNet(20, in_channels=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = data["train"]
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == steps - 1:
            print(f"cifar-size task: trained {steps} steps on the CPU, last loss {loss.item():.3f}", flush=True)
    torch.save({"state": model.eval().state_dict(), "data": data}, path)
    return path


def _task(name: str, out: Path, quick: bool) -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from automl.evaluation.task import Task
    from automl.reference.models import ResNet
    from automl.runs.loading import load_task

    if name == "default":
        return load_task("reference:resnet20", threads=1)
    saved = torch.load(out / "cifar_task.pt", weights_only=True)
    model = ResNet(20, in_channels=3)
    model.load_state_dict(saved["state"])
    loaders = {k: DataLoader(TensorDataset(*v), batch_size=64 if quick else 250) for k, v in saved["data"].items()}
    return Task(model.eval(), saved["data"]["val"][0][:1], loaders["train"], loaders["calib"], loaders["val"],
                loaders["test"], name="cifar-size-resnet20")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _eval_over_forward(task: Any, repeats: int) -> float:
    """A cold fidelity-1 evaluation of a random policy over a folded float forward of the split (median of pairs)."""
    import numpy as np
    import torch

    from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem

    problem = Problem.from_task(task)
    ev = Evaluator(problem, EvalConfig(fidelity=1, bn_samples=0, early_stop=False))
    xs, _, _ = ev._split("val")
    rng = np.random.default_rng(0)
    policies = [problem.space.sample(rng) for _ in range(repeats + 1)]

    def forward() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for x in xs:
                ev.engine.folded(x)
        _sync()
        return time.perf_counter() - start

    def cold(policy: Any) -> float:
        if ev.incremental is not None:
            ev.incremental.cache.clear()
        start = time.perf_counter()
        ev.evaluate(policy)
        _sync()
        return time.perf_counter() - start

    forward(), cold(policies[0])  # warm-up: kernels chosen, memory allocated
    return statistics.median(cold(p) / forward() for p in policies[1:])


def run_child(args: argparse.Namespace) -> int:
    import torch

    import automl
    from automl.quant.device import accelerator_name, resolve_device

    torch.set_num_threads(args.threads)
    out = Path(args.output)
    task = _task(args.task, out, args.quick)
    run = {"evaluations": args.evaluations, "seed": args.seed, "threads": args.threads,
           "output": str(out / f"{args.task}-{args.role}-{args.on.replace(':', '')}")}  # no cache shared between runs
    options: dict[str, Any] = {"run": run, "quiet": True}
    if args.finetune_steps is not None:
        options["finetune"] = {"steps": args.finetune_steps}
    # The search's default device is ``auto``; the child sees only the GPU (or none) it was given.
    device = resolve_device("auto")
    start = time.perf_counter()
    result = automl.search(task, **options)
    search_s = time.perf_counter() - start
    timings = sorted(Path(run["output"]).glob("runs/*/timings.json"))
    report = {
        "task": args.task, "device": str(device), "name": accelerator_name(device), "search_s": search_s,
        "trials": [[r.policy.key(), r.metrics.accuracy] for r in result.records],
        "best": None if result.best is None else result.best.policy.key(),
        "stages": json.loads(timings[-1].read_text()) if timings else {},
        "eval_over_forward": _eval_over_forward(task, 2 if args.quick else 5) if args.time_eval else None,
    }
    print(CHILD_MARK + json.dumps(report), flush=True)
    return 0


# the parent ---------------------------------------------------------------------------------
def _spawn(args: argparse.Namespace, task: str, device: str, role: str, time_eval: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--task", task, "--on", device, "--role", role,
           "--output", args.output, "--evaluations", str(args.evaluations), "--seed", str(args.seed),
           "--threads", str(args.threads)]
    cmd += ["--finetune-steps", str(args.finetune_steps)] if args.finetune_steps is not None else []
    cmd += ["--quick"] if args.quick else []
    cmd += ["--time-eval"] if time_eval else []
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(device), cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {task} search on {device} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads(lines[-1][len(CHILD_MARK):])
    report["process_s"] = time.perf_counter() - start
    return report


def _stages(report: dict[str, Any]) -> str:
    stages = {k.removeprefix("seconds_"): v for k, v in report["stages"].items() if k.startswith("seconds_")}
    return ", ".join(f"{k} {v:.1f}" for k, v in stages.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device under test (cuda, cuda:N, or cpu for the dry path)")
    parser.add_argument("--compare-device", default="cpu", help="the reference device (default cpu)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {TASKS}")
    parser.add_argument("--evaluations", type=int, default=20)
    parser.add_argument("--finetune-steps", type=int, default=None, help="default: the search's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cifar-train-steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="small data and few steps: the path, not the figures")
    parser.add_argument("--output", default=None, help="run directories (default: a temporary directory)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--on", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--role", default="test", choices=("test", "ref"), help=argparse.SUPPRESS)
    parser.add_argument("--time-eval", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or set(tasks) - set(TASKS):
        print(f"gpu_check: --tasks must name some of {TASKS}, got {args.tasks!r}", file=sys.stderr)
        return 2
    import torch

    if needs_cuda(args.device, args.compare_device) and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        print(f"gpu_check: needs a CUDA GPU, and torch {torch.__version__} ({build}) sees none here. Run it on a "
              "machine with an NVIDIA GPU and a CUDA build of torch, or pass --device cpu --compare-device cpu "
              "for the dry path on the CPU.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        args.output = args.output or tmp
        Path(args.output).mkdir(parents=True, exist_ok=True)
        if "cifar" in tasks:
            steps = 5 if args.quick else args.cifar_train_steps
            _synthetic_cifar(Path(args.output), steps, 256 if args.quick else 4000, args.seed)
        return _report(args, tasks)


def _report(args: argparse.Namespace, tasks: list[str]) -> int:
    reports: dict[str, dict[str, dict[str, Any]]] = {}
    for task in tasks:
        reports[task] = {"test": _spawn(args, task, args.device, "test", time_eval=True),
                         "ref": _spawn(args, task, args.compare_device, "ref", time_eval=False)}
    worst = 0.0
    for task, pair in reports.items():
        test, ref = pair["test"], pair["ref"]
        agreement = compare(test, ref)
        worst = max(worst, agreement["max_score_diff_points"])
        print(f"{task}: {test['name']} ({test['device']}) vs {ref['name']} ({ref['device']}): "
              f"{agreement['same_leading_policies']}/{agreement['trials']} leading policies identical, "
              f"{agreement['common_policies']} evaluated on both, max validation-accuracy difference "
              f"{agreement['max_score_diff_points']:.3f} points, same best policy: {agreement['same_best']}")
        for side in (test, ref):
            print(f"  {side['device']}: search {side['search_s']:.1f} s (process {side['process_s']:.1f} s); "
                  f"stages: {_stages(side)}")
        if test["eval_over_forward"] is not None:
            print(f"  eval_over_forward on {test['device']}: {test['eval_over_forward']:.3f}")
    main_task = reports.get("default") or next(iter(reports.values()))
    test = main_task["test"]
    print(f"RESULT gpu={test['name'].replace(' ', '_')} eval_over_forward={test['eval_over_forward']:.3f} "
          f"search_s={test['search_s']:.1f} cpu_gpu_max_score_diff={worst:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
