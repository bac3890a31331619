"""The example configurations the README points to stay loadable and say what it says."""

from __future__ import annotations

from pathlib import Path

from automl.runs.config import load_config


def test_the_latency_example_config_loads_as_the_readme_describes():
    """examples/latency_ort.yaml (README, Deployment): the ort-cpu latency budget, the integer
    program, float activations and float pinned layers."""
    cfg = load_config(Path(__file__).resolve().parent.parent / "examples" / "latency_ort.yaml")
    assert cfg.budget == ("latency<=0.5x@ort-cpu",) and cfg.searcher.name == "ilp"
    assert cfg.space.act_bits == (32,) and cfg.space.pinned_bits == 32


def test_the_demo_config_loads_as_the_readme_describes():
    """examples/demo.yaml (make run, README Quick start): Fashion-MNIST, a size and a latency budget."""
    cfg = load_config(Path(__file__).resolve().parent.parent / "examples" / "demo.yaml")
    assert cfg.task == "reference:fashion_mnist/resnet8"
    assert cfg.budget == ("size<=0.125x", "latency<=0.9x@ort-cpu")
    assert cfg.space.act_bits == (32,) and cfg.space.pinned_bits == 32


def test_make_run_uses_the_demo_config():
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "DEMO ?= examples/demo.yaml" in makefile and "automl search --config $(DEMO)" in makefile
