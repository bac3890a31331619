"""Bad inputs a new user makes, each run as a fresh `automl` process in an empty directory:
exit code, seconds (and as a multiple of `automl --help`), files left behind, first line said.

    .venv/bin/python scripts/bad_inputs.py            # every case, a Markdown table
    .venv/bin/python scripts/bad_inputs.py --only task # the cases whose label contains "task"

Every case should exit 2 with one paragraph, well within a few `automl --help`s, and leave no
file (the directory it runs in starts empty). tests/test_precheck.py runs the name cases.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ("--task", "tests.tasks:tiny", "--searcher", "random", "--evaluations", "2", "--finetune-steps", "0", "--threads", "1")

# (label, argv after `automl`, files to create first: name -> text; a name ending in / is a folder)
CASES: list[tuple[str, tuple[str, ...], dict[str, str]]] = [
    ("task: no such module", ("search", "--task", "nonexistent_module:fn"), {}),
    ("task: not a Task factory", ("search", "--task", "os:getcwd"), {}),
    ("task: no such function", ("search", "--task", "tests.tasks:nosuch"), {}),
    ("task: no colon", ("search", "--task", "resnet20"), {}),
    ("task: unknown reference", ("search", "--task", "reference:resnet99"), {}),
    ("task: factory raises", ("search", "--task", "tests.tasks:broken"), {}),
    ("profile: missing YAML", ("search", "--profile", "does_not_exist.yaml"), {}),
    ("profile: unknown name", ("search", "--profile", "tpu"), {}),
    ("profile: broken YAML", ("search", "--profile", "bad.yaml"), {"bad.yaml": "kind: [unclosed\n"}),
    ("budget: unknown @profile", ("search", "--budget", "latency<=0.5x@nosuchprofile"), {}),
    ("budget: latency without profile", ("search", "--budget", "latency<=1ms"), {}),
    ("budget: unknown metric", ("search", "--budget", "speed<=2x"), {}),
    ("budget: bad unit", ("search", "--budget", "size<=3furlongs"), {}),
    ("budget: not a number", ("search", "--budget", "size<=lots"), {}),
    ("budget: profile on size", ("search", "--budget", "size<=0.5x@ort-cpu"), {}),
    ("budget: looser than float", ("search", *TINY, "--budget", "size<=2x"), {}),
    ("data: --data-dir missing", ("search", "--task", "reference:fashion_mnist/resnet8", "--data-dir", "nosuchdir"), {}),
    ("device: unknown", ("search", "--device", "tpu"), {}),
    ("searcher: unknown", ("search", "--searcher", "genetic"), {}),
    ("evaluations: zero", ("search", "--evaluations", "0"), {}),
    ("evaluations: huge", ("search", "--evaluations", "100000000"), {}),
    ("threads: zero", ("search", "--threads", "0"), {}),
    ("fidelity: 5", ("search", "--fidelity", "5"), {}),
    ("output: an existing file", ("search", "--output", "afile"), {"afile": "x"}),
    ("output: under a file", ("search", "--output", "afile/out"), {"afile": "x"}),
    ("output: unwritable", ("search", "--output", "/proc/automl-out"), {}),
    ("tracking: unreachable server", ("search", "--tracking-uri", "http://127.0.0.1:9"), {}),
    ("tracking: unknown scheme", ("search", "--tracking-uri", "bogus://x"), {}),
    ("storage: unknown scheme", ("search", "--storage", "nosuch://x"), {}),
    ("storage: no server", ("search", "--storage", "postgresql://u@127.0.0.1:9/db"), {}),
    ("resume: no such run", ("search", "--resume", "nosuch"), {}),
    ("config: a directory", ("search", "--config", "cfg"), {"cfg/": ""}),
    ("config: missing file", ("search", "--config", "missing.yaml"), {}),
    ("config: flat key of old layout", ("search", "--config", "c.yaml"), {"c.yaml": "evaluations: 3\n"}),
    ("config: unknown key", ("search", "--config", "c.yaml"), {"c.yaml": "run:\n  evaluation: 3\n"}),
    ("best: empty directory", ("best",), {}),
    ("show: empty directory", ("show", "no-such-id"), {}),
    ("export: no run", ("export", "nosuch"), {}),
    ("ui: port taken", ("ui", "--output", ".", "--port", "{busy}"), {}),
    ("ui: port out of range", ("ui", "--output", ".", "--port", "99999"), {}),
]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) + ("/" if p.is_dir() else "") for p in folder.rglob("*"))


def run_case(argv: tuple[str, ...], files: dict[str, str], busy_port: int, timeout: float = 300) -> dict:
    """Run ``automl *argv`` in a new empty directory (with ``files``); what it did."""
    with tempfile.TemporaryDirectory(prefix="automl-bad-") as tmp:
        folder = Path(tmp)
        for name, text in files.items():
            if name.endswith("/"):
                (folder / name).mkdir(parents=True)
            else:
                (folder / name).write_text(text)
        before = set(_files(folder))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # tests.tasks, as from the repository root
        argv = tuple(a.replace("{busy}", str(busy_port)) for a in argv)
        start = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).with_name("automl")), *argv], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - start
        left = [f for f in _files(folder) if f not in before]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return {"code": proc.returncode, "seconds": seconds, "left": left, "first": lines[0] if lines else "",
            "stderr": proc.stderr, "traceback": "Traceback" in proc.stderr}


def help_seconds(repeats: int = 3) -> float:
    """Median seconds of `automl --help`: the project's own start-up, the unit of the timings."""
    automl = str(Path(sys.executable).with_name("automl"))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([automl, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run only the cases whose label contains this text")
    args = parser.parse_args()
    unit = help_seconds()
    print(f"`automl --help`: {unit:.2f} s (median of 3); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    print("| input | exit | s | x help | files left | first line |")
    print("|---|---|---|---|---|---|")
    bad = 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for label, argv, files in CASES:
            if args.only not in label:
                continue
            r = run_case(argv, files, busy.getsockname()[1])
            ok = r["code"] == 2 and not r["left"] and not r["traceback"]
            bad += not ok
            shown = " ".join(argv).replace("{busy}", str(busy.getsockname()[1]))
            first = r["first"].replace("|", "\\|")[:160]
            print(f"| `automl {shown}` ({label}) | {r['code']} | {r['seconds']:.1f} | {r['seconds'] / unit:.1f} | "
                  f"{', '.join(r['left']) or '-'} | {first} |", flush=True)
    print(f"\n{bad} case(s) not exiting 2 cleanly with nothing left behind")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
