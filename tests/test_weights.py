"""The reference networks shipped in automl/weights: checked, preferred, reproducible."""

from __future__ import annotations

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
