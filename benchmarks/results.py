"""Benchmark rows and the results pages made from them.

A benchmark appends what it measured to a JSON-lines rows file under ``docs/results/``, one row
per measurement, each stamped with the commit and the machine it ran on (:func:`append_rows`).
``--summarise ROWS`` renders a Markdown page from a rows file (:func:`render_page`), so a figure in
the documentation is always regenerated from saved rows, never typed by hand.

A row is one JSON object per line: the stamp first, then the benchmark's own keys::

    {"benchmark": "eval_speed", "commit": "5d29b1d-dirty", "date": "2026-01-31",
     "machine": {"cpu": "AMD EPYC 7B13", "cores": 2, "torch": "2.13.0", "threads": 1},
     "eval_over_forward": 0.75, ...}

``commit`` is ``git rev-parse --short HEAD``, with ``-dirty`` when the work tree differs from it
outside ``docs/results/`` (the rows files themselves do not count). Rows saved before rows were
stamped have no ``commit`` or ``machine``; their pages say so.

A benchmark adopts this module in four steps::

    import results
    results.add_arguments(parser, "eval_speed")          # --out, --no-save, --summarise, --page
    if args.summarise:
        return results.summarise_main(args, "eval_speed", TITLE, summary, __doc__)
    rows = measure(args)                                 # a list of JSON-able dicts
    results.save(args, rows, "eval_speed", threads=args.threads)
    print(results.report(summary(rows)))                 # the tables and the closing RESULT line

where ``summary(rows) -> Summary`` is a pure function of the rows (no torch work), so the page and
the run's own output agree. ``python benchmarks/results.py --summarise FILE`` renders a generic page
(every row as a table line) for a rows, CSV or saved-output file of a benchmark not yet converted.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "docs" / "results"
SOURCES = RESULTS_DIR / "sources.yaml"
STAMP_KEYS = ("benchmark", "commit", "date", "machine")
UNSTAMPED = "recorded before rows carried commit and machine"


# provenance -----------------------------------------------------------------------------------
def commit(repo: Path = REPO) -> str:
    """``git rev-parse --short HEAD`` plus ``-dirty`` when the tree differs outside ``docs/results/``;
    ``unknown`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)docs/results"], cwd=repo,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if status.strip() else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _torch_version() -> str:
    if "torch" in sys.modules:
        return str(sys.modules["torch"].__version__)
    try:  # without importing torch: a summary or a torch-free benchmark stays cheap
        from importlib.metadata import version

        return version("torch")
    except Exception:  # noqa: BLE001 - any failure means "not installed"
        return "not installed"


def machine(threads: int | None = None) -> dict[str, Any]:
    """The machine a row was measured on: CPU model, core count, torch version, torch threads.

    ``threads`` is the benchmark's own setting; when ``None`` and torch is imported, torch's
    current intra-op thread count."""
    if threads is None and "torch" in sys.modules:
        threads = int(sys.modules["torch"].get_num_threads())
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch": _torch_version(), "threads": threads}


def stamp(row: Mapping[str, Any], benchmark: str, *, threads: int | None = None,
          at: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``row`` with the stamp (benchmark, commit, date, machine) in front of its own keys.

    ``at`` is a precomputed ``{"commit", "date", "machine"}`` (one ``git`` call for many rows)."""
    at = at or {"commit": commit(), "date": datetime.date.today().isoformat(), "machine": machine(threads)}
    own = {k: v for k, v in row.items() if k not in STAMP_KEYS}
    return {"benchmark": benchmark, "commit": at["commit"], "date": at["date"], "machine": dict(at["machine"]), **own}


def append_rows(path: str | Path, rows: Iterable[Mapping[str, Any]], benchmark: str, *,
                threads: int | None = None) -> Path:
    """Stamp ``rows`` and append them to the JSON-lines file ``path`` (created with its folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    at = {"commit": commit(), "date": datetime.date.today().isoformat(), "machine": machine(threads)}
    with path.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(stamp(row, benchmark, at=at), default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"a benchmark row holds JSON values only, got {type(value).__name__}")


def load_rows(*paths: str | Path) -> list[dict[str, Any]]:
    """The rows of one or more files, in order: JSON lines, a JSON array (rows saved before this
    module), or a CSV file (every value that reads as a number becomes one)."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        text = Path(path).read_text()
        if str(path).endswith(".csv"):
            rows += [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(text.splitlines())]
        elif text.lstrip().startswith("["):
            rows += json.loads(text)
        else:
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def own(row: Mapping[str, Any]) -> dict[str, Any]:
    """The benchmark's own keys of a row (the stamp removed)."""
    return {k: v for k, v in row.items() if k not in STAMP_KEYS}


def _machine_text(m: Mapping[str, Any]) -> str:
    threads = m.get("threads")
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}"
            + (f", {threads} thread{'s' if threads != 1 else ''}" if threads is not None else ""))


def provenance(rows: Sequence[Mapping[str, Any]]) -> str:
    """A table of where the rows come from: one line per (commit, machine), in order of appearance."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if "commit" in r and "machine" in r:
            key = (str(r["commit"]), _machine_text(r["machine"]))
        else:
            key = ("-", UNSTAMPED)
        groups.setdefault(key, []).append(r)
    body = []
    for (sha, where), rs in groups.items():
        dates = sorted({str(r["date"]) for r in rs if r.get("date")})
        span = "-" if not dates else dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        body.append((f"`{sha}`" if sha != "-" else "-", where, span, len(rs)))
    return md_table(("commit", "machine", "date", "rows"), body)


# formatting -----------------------------------------------------------------------------------
def md_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; cells are written with ``str`` (format numbers before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def mean_sd(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean +- sd`` of ``values`` times ``scale`` (just the value when there is one)."""
    vals = [scale * v for v in values]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} +- {statistics.stdev(vals):.{digits}f}"


def result_line(figures: Mapping[str, Any], digits: int | Mapping[str, int] = 3) -> str:
    """``RESULT key=value ...``: floats with ``digits`` decimals (per key when a mapping), ``nan`` as nan."""
    parts = []
    for key, value in figures.items():
        if isinstance(value, float):
            d = digits.get(key, 3) if isinstance(digits, Mapping) else digits
            parts.append(f"{key}=nan" if math.isnan(value) else f"{key}={value:.{d}f}")
        else:
            parts.append(f"{key}={value}")
    return "RESULT " + " ".join(parts)


@dataclass(frozen=True)
class Summary:
    """What a benchmark says about its rows: Markdown sections and the closing RESULT line."""

    sections: tuple[str, ...]
    result: str
    notes: tuple[str, ...] = field(default_factory=tuple)


def report(summary: Summary) -> str:
    """The summary as the benchmark prints it: its sections, then the RESULT line last."""
    return "\n\n".join([*summary.sections, *summary.notes, summary.result])


def when(row: Mapping[str, Any]) -> tuple[str, str]:
    """``(date, commit)`` cells of a row (``-`` for rows saved before rows were stamped)."""
    return str(row.get("date", "-")), f"`{row['commit']}`" if "commit" in row else "-"


def runs_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, Callable[[Mapping[str, Any]], Any]]]) -> str:
    """One line per row (a benchmark run), date and commit first, then ``(header, cell(row))`` columns."""
    return md_table(("date", "commit", *(h for h, _ in columns)), [(*when(r), *(fn(r) for _, fn in columns)) for r in rows])


# pages ----------------------------------------------------------------------------------------
def page_path(rows_path: str | Path) -> Path:
    """``docs/results/<stem of the rows file>.md``."""
    return RESULTS_DIR / (Path(rows_path).stem + ".md")


def _display(path: str | Path) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return p.name


def about(rows_paths: Sequence[str | Path], sources: Path = SOURCES) -> str:
    """The hand-written description of a rows file (what the rows are; no figures) from
    ``docs/results/sources.yaml``, keyed by the file name; '' when it has none."""
    if not sources.exists():
        return ""
    import yaml

    data = yaml.safe_load(sources.read_text()) or {}
    texts = [str(data[Path(p).name]).strip() for p in rows_paths if Path(p).name in data]
    return "\n\n".join(texts)


def describe(doc: str | None) -> str:
    """The first paragraph of a benchmark's docstring, as Markdown (Sphinx roles dropped)."""
    first = (doc or "").strip().split("\n\n")[0]
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", " ".join(line.strip() for line in first.splitlines()))


def summarise_command(script: str, rows_paths: Sequence[str | Path], *extra: str) -> str:
    """The command that regenerates a page: ``python <script> --summarise <rows files> [extra]``."""
    return " ".join(["python", script, "--summarise", *(_display(p) for p in rows_paths), *extra])


def render_page(*, title: str, rows: Sequence[Mapping[str, Any]], summary: Summary, rows_paths: Sequence[str | Path],
                command: str, description: str = "", sources: Path = SOURCES) -> str:
    """The Markdown page of a rows file: what the benchmark measures, where the rows come from
    (commit and machine), the summary and its RESULT line, and the command that regenerates it.

    The text depends on the rows and the files' names only, so the same rows give the same page."""
    parts = [f"# {title}",
             f"<!-- generated by `{command}`: edit the benchmark or its rows, not this page -->"]
    if description:
        parts.append(description)
    note = about(rows_paths, sources)
    if note:
        parts.append(note)
    parts += ["## Where the rows come from", provenance(rows),
              f"Rows: {', '.join(f'[`{Path(p).name}`]({Path(p).name})' for p in rows_paths)}.",
              "## Summary", *summary.sections, *summary.notes,
              "## RESULT", f"```\n{summary.result}\n```",
              f"Regenerate this page with `{command}`."]
    return "\n\n".join(p.rstrip() for p in parts) + "\n"


def write_page(text: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# the benchmarks' command line -----------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out`` (default ``docs/results/<name>.jsonl``), ``--no-save``, ``--summarise ROWS...``, ``--page``."""
    default = RESULTS_DIR / f"{name}.jsonl"
    parser.add_argument("--out", default=str(default),
                        help=f"append the rows (stamped with commit and machine) to this JSON-lines file (default {_display(default)})")
    parser.add_argument("--no-save", action="store_true", help="do not append the rows anywhere")
    parser.add_argument("--summarise", nargs="+", metavar="ROWS", default=None,
                        help="measure nothing: print the summary of saved rows files and write their results page")
    parser.add_argument("--page", default=None,
                        help="where --summarise writes the page (default docs/results/<first rows file's stem>.md)")


def save(args: argparse.Namespace, rows: Sequence[Mapping[str, Any]], name: str, *,
         threads: int | None = None) -> Path | None:
    """Append a run's rows to ``args.out`` unless ``--no-save``; says where."""
    if args.no_save or not rows:
        return None
    path = append_rows(args.out, rows, name, threads=threads)
    print(f"rows appended to {_display(path)} (python {_display(sys.argv[0]) if sys.argv[0] else name} "
          f"--summarise {_display(path)} writes its page)", flush=True)
    return path


def finish(args: argparse.Namespace, rows: Sequence[Mapping[str, Any]], name: str,
           summary: Callable[[list[dict[str, Any]]], Summary], *, threads: int | None = None) -> int:
    """After a run: append its rows (unless ``--no-save``), print their summary, RESULT line last."""
    save(args, rows, name, threads=threads)
    print(report(summary([dict(r) for r in rows])), flush=True)
    return 0


def summarise_main(args: argparse.Namespace, script: str, title: str,
                   summary: Callable[[list[dict[str, Any]]], Summary], doc: str | None) -> int:
    """``--summarise``: load the rows, print the summary, write the page; returns the exit code."""
    rows = load_rows(*args.summarise)
    if not rows:
        raise SystemExit(f"--summarise: no rows in {', '.join(args.summarise)}")
    result = summary(rows)
    print(report(result))
    page = render_page(title=title, rows=rows, summary=result, rows_paths=args.summarise,
                       command=summarise_command(f"benchmarks/{Path(script).name}", args.summarise),
                       description=describe(doc))
    path = write_page(page, args.page or page_path(args.summarise[0]))
    print(f"page written: {_display(path)}")
    return 0


# a generic page for files no benchmark summarises (yet) ------------------------------------------
def generic_summary(rows: list[dict[str, Any]]) -> Summary:
    """Every row as a table line, columns in order of first appearance (the stamp left out)."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in own(r) if k not in columns]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        if isinstance(v, (list, dict)):
            return json.dumps(v)
        return str(v)

    body = [[cell(own(r).get(c, "")) for c in columns] for r in rows]
    return Summary((md_table(columns, body),), f"RESULT rows={len(rows)}")


def saved_output_page(path: Path, title: str) -> str:
    """A page for a benchmark's saved console output (text, not rows), shown as it was printed."""
    text = path.read_text().rstrip()
    command = summarise_command("benchmarks/results.py", [path], "--title", json.dumps(title))
    parts = [f"# {title}", f"<!-- generated by `{command}`: edit the saved output, not this page -->"]
    note = about([path])
    if note:
        parts.append(note)
    parts += ["## Where the output comes from", md_table(("commit", "machine", "date", "rows"), [("-", UNSTAMPED, "-", "-")]),
              f"The saved console output, as printed: [`{path.name}`]({path.name}).", "## Output", text,
              f"Regenerate this page with `{command}`."]
    return "\n\n".join(p.rstrip() for p in parts) + "\n"


GENERATED = re.compile(r"<!-- generated by `python (benchmarks/[\w.]+\.py) (.+?)`")


def generated_pages(folder: Path = RESULTS_DIR) -> list[tuple[Path, str, list[str]]]:
    """Every generated page under ``folder``: ``(page, script, arguments)`` from its header."""
    import shlex

    out = []
    for page in sorted(folder.glob("*.md")):
        match = GENERATED.search(page.read_text())
        if match:
            out.append((page, match.group(1), shlex.split(match.group(2))))
    return out


def run_script(script: str, argv: list[str]) -> int:
    """Run ``benchmarks/<script>``'s ``main(argv)`` in this process, from the repository root."""
    import contextlib
    import importlib.util
    import io

    path = REPO / script
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the benchmarks import each other by name, as scripts do
    name = f"_bench_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return int(sys.modules[name].main(argv) or 0)
    finally:
        os.chdir(cwd)


def regenerate(check: bool = False, folder: Path = RESULTS_DIR) -> list[Path]:
    """Write every generated page again from its rows; with ``check``, write nothing and return the
    pages whose text differs from what their command gives now (stale or hand-edited)."""
    import tempfile

    stale = []
    for page, script, args in generated_pages(folder):
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / page.name if check else page
            run_script(script, [*args, "--page", str(target)])
            if check and target.read_text() != page.read_text():
                stale.append(page)
    return stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A generic results page for a rows file (JSON lines, JSON array or CSV) "
                                 "or a saved console output (.txt) that no benchmark's own --summarise renders; "
                                 "or every generated page again from its rows.")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--summarise", nargs="+", metavar="FILE")
    what.add_argument("--regenerate", action="store_true", help="write every page under docs/results/ again")
    what.add_argument("--check", action="store_true", help="fail when a page differs from what its rows give")
    ap.add_argument("--title", default="", help="the page's title (default: the file's stem)")
    ap.add_argument("--page", default=None, help="where to write the page (default docs/results/<stem>.md)")
    args = ap.parse_args(argv)
    if args.regenerate or args.check:
        stale = regenerate(check=args.check)
        for page in stale:
            print(f"{_display(page)} is not what its rows give: run `python benchmarks/results.py --regenerate`")
        if not args.check:
            print(f"{len(generated_pages())} pages written")
        return 1 if stale else 0
    first = Path(args.summarise[0])
    title = args.title or first.stem.replace("_", " ")
    if first.suffix == ".txt":
        page = saved_output_page(first, title)
    else:
        rows = load_rows(*args.summarise)
        result = generic_summary(rows)
        extra = ("--title", json.dumps(title)) if args.title else ()
        page = render_page(title=title, rows=rows, summary=result, rows_paths=args.summarise,
                           command=summarise_command("benchmarks/results.py", args.summarise, *extra))
        print(report(result))
    path = write_page(page, args.page or page_path(first))
    print(f"page written: {_display(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
