"""The reference networks shipped in automl/weights: checked, preferred, reproducible."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import automl.reference.checkpoints as reference
import automl.reference.weights as weights
from automl.reference.models import REFERENCE_MODELS


@pytest.mark.parametrize("arch", ["resnet8", "resnet20"])
def test_shipped_files_match_their_manifest(arch):
    entry = weights.manifest()[f"{arch}-seed0.pt"]
    path = weights.WEIGHTS_DIR / f"{arch}-seed0.pt"
    assert weights.file_sha256(path) == entry["sha256"]
    assert path.stat().st_size < 1_000_000 and entry["dtype"] == "float16" and entry["seed"] == 0
    state, meta = weights.load_shipped(arch, 0)
    assert all(v.dtype != torch.float16 for v in state.values())
    REFERENCE_MODELS[arch]().load_state_dict(state)  # strict: every key, every shape
    assert meta["shipped"] and meta["val_accuracy"] == entry["val_accuracy"]


def test_load_reference_prefers_the_shipped_network_and_trains_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOML_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(reference, "_train", lambda *a, **k: pytest.fail("trained although a network ships"))
    model, meta = reference.load_reference("resnet8", log=None)
    assert meta["shipped"] and not model.training
    assert not list(tmp_path.iterdir())


def test_a_shipped_file_that_fails_its_sha256_is_not_used(monkeypatch, tmp_path):
    shutil.copy(weights.MANIFEST, tmp_path / "manifest.json")
    data = bytearray((weights.WEIGHTS_DIR / "resnet8-seed0.pt").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "resnet8-seed0.pt").write_bytes(bytes(data))
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(weights, "MANIFEST", tmp_path / "manifest.json")
    lines: list[str] = []
    assert weights.load_shipped("resnet8", 0, lines.append) is None
    assert "not used" in lines[0]
    assert weights.load_shipped("resnet8", 1) is None  # no such seed ships


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet8", "resnet20"])
def test_shipped_networks_reproduce_the_recorded_accuracy_on_the_recorded_data(arch):
    from automl.data import mnist_splits

    entry = weights.manifest()[f"{arch}-seed0.pt"]
    assert weights.data_sha256(entry["split_seed"]) == entry["data_sha256"]
    model, _ = reference.load_reference(arch, log=None)
    splits = mnist_splits(entry["split_seed"])
    assert reference._accuracy(model, splits.val) == entry["val_accuracy"]
    assert reference._accuracy(model, splits.test) == entry["test_accuracy"]


OTHER = sorted(name for name, entry in weights.manifest().items() if entry.get("dataset", "mnist") != "mnist")


@pytest.mark.parametrize("name", OTHER)
def test_shipped_networks_of_other_datasets_match_their_manifest(name):
    entry = weights.manifest()[name]
    path = weights.WEIGHTS_DIR / name
    assert weights.file_sha256(path) == entry["sha256"] and entry["dtype"] in ("float16", "float32")
    assert entry["produced_by"] == f"automl train-reference --dataset {entry['dataset']} --arch {entry['arch']} --seed 0 --ship"
    state, meta = weights.load_shipped(entry["arch"], 0, dataset=entry["dataset"])
    reference._network(entry["arch"], entry["dataset"]).load_state_dict(state)  # strict: every key, every shape
    assert meta["shipped"] and meta["test_accuracy"] == entry["test_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHER)
def test_shipped_networks_of_other_datasets_reproduce_the_recorded_accuracy_on_the_recorded_data(name):
    from automl.reference.recipes import accuracy, splits_of

    entry = weights.manifest()[name]
    try:
        splits = splits_of(entry["dataset"])
    except Exception as exc:  # noqa: BLE001 - the data is not on this machine: CI has it (.ci/run), so CI fails
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{entry['dataset']} is not on this machine: {exc}")
    assert splits.digest() == entry["data_sha256"] and splits.source_sha256 == entry["source_sha256"]
    model, meta = reference.load_reference(entry["arch"], log=None, dataset=entry["dataset"])
    assert meta["shipped"]
    assert accuracy(model, splits, "val") == entry["val_accuracy"]
    assert accuracy(model, splits, "test") == entry["test_accuracy"]
