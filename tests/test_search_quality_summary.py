"""The search-quality benchmark's RESULT figures compare means over the same seeds, never a lucky single seed."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "search_quality.py"


@pytest.fixture(scope="module")
def sq():  # the benchmark is a script, not a package: load it by path
    spec = importlib.util.spec_from_file_location("search_quality_under_test", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _rows(sq, arch: str, budget: str, searcher: str, tests: list[float]) -> list:
    return [sq.Row(arch, budget, searcher, seed, 0.5, t, 10.0, 1.0, 10, 1.0) for seed, t in enumerate(tests)]


def test_a_one_seed_agent_does_not_stand_for_the_best(sq) -> None:
    b = "size<=0.0625x"
    rows = (_rows(sq, "resnet8", b, "uniform", [0.970, 0.972, 0.974])
            + _rows(sq, "resnet8", b, "tpe", [0.975, 0.977, 0.979])
            + _rows(sq, "resnet8", b, "sac", [0.990]))  # one lucky seed
    assert sq.fully_seeded(rows, "resnet8", b) == {"uniform", "tpe"}
    line = sq.summary(rows, [], 0.99)
    figures = dict(kv.split("=") for kv in line.removeprefix("RESULT ").split())
    # tpe's mean (97.7) minus uniform's mean (97.2), not sac's 99.0 minus uniform
    assert float(figures["best_minus_uniform_1_16"]) == pytest.approx(0.5, abs=1e-6)


def test_gap_uses_the_mean_of_the_better_headline_row(sq) -> None:
    b = "size<=0.0625x"
    rows = (_rows(sq, "resnet20", b, "tpe", [0.980, 0.990, 0.970])
            + _rows(sq, "resnet20", b, "uniform", [0.984, 0.984, 0.984]))
    line = sq.summary(rows, [], 0.99)
    figures = dict(kv.split("=") for kv in line.removeprefix("RESULT ").split())
    assert float(figures["ft_gap_1_16"]) == pytest.approx(0.6, abs=1e-6)  # 99.0 - 98.4, not 99.0 - 99.0
    assert math.isnan(float(figures["ft_gap_1_32"]))  # no rows at that budget


@pytest.mark.parametrize("option", ["--searchers", "--headline-searchers"])
def test_an_unknown_searcher_name_exits_2_before_any_work(sq, capsys, option) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sq.main([option, "tpe,nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown searcher(s) ['nope']" in err and "Traceback" not in err
