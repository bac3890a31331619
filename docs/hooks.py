"""MkDocs hooks: pages that quote the code are filled from the code at build time, so they cannot drift.

- ``<!-- cli:help -->``: ``automl <command> --help`` for every subcommand (from ``automl.cli.build_parser``);
- ``<!-- cli:keys -->``: which configuration key each ``automl search`` / ``automl pareto`` option sets;
- ``<!-- importlinter:contracts -->``: the import-linter contracts of ``pyproject.toml``, the enforced
  dependency direction of the packages.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public accessor
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def cli_help() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: a fixed width keeps the page stable
    from automl.cli import build_parser

    parser = build_parser()
    parts = ["```text\n" + parser.format_help().rstrip() + "\n```"]
    for name, sub in _subparsers(parser).items():
        parts.append(f"### automl {name}\n\n```text\n{sub.format_help().rstrip()}\n```")
    return "\n\n".join(parts)


def cli_keys() -> str:
    from automl.cli import build_parser

    rows = []
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:  # noqa: SLF001
            if action.option_strings and (action.dest in ("task", "budget", "profiles") or "." in action.dest):
                rows.append(f"| `automl {name}` | `{', '.join(action.option_strings)}` | `{action.dest}` |")
    return "| command | option | configuration key |\n|---|---|---|\n" + "\n".join(rows)


def contracts() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    parts = []
    for c in data["contracts"]:
        if c["type"] == "layers":
            layers = "\n".join(f"{i + 1}. `{layer}`" for i, layer in enumerate(c["layers"]))
            parts.append(f"**{c['name']}** (`layers`: each layer may import only the layers below it; "
                         f"`|` separates independent siblings that may not import each other):\n\n{layers}")
        elif c["type"] == "forbidden":
            parts.append(f"**{c['name']}** (`forbidden`): "
                         + ", ".join(f"`{m}`" for m in c["source_modules"]) + " never import "
                         + ", ".join(f"`{m}`" for m in c["forbidden_modules"]) + ".")
        else:
            parts.append(f"**{c['name']}** (`{c['type']}`)")
    return "\n\n".join(parts)


FILLERS = {"<!-- cli:help -->": cli_help, "<!-- cli:keys -->": cli_keys, "<!-- importlinter:contracts -->": contracts}


def on_page_markdown(markdown: str, **_: object) -> str:
    for marker, fill in FILLERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, fill())
    return markdown
