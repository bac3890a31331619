"""Reference networks shipped with the package, so a first search needs no training.

Each file is the ``state_dict`` of a network trained by ``automl train-reference`` (seed
recorded), stored in float16: that halves the file and, checked on every shipped network,
leaves every validation and test prediction unchanged (:func:`ship` measures the accuracy
on the stored weights and refuses a file whose predictions differ from the float32 ones).
``manifest.json`` records per file its sha256, the seed and settings of the training, the
validation/test accuracy and the sha256 of the MNIST split it was scored on; loading
verifies the file's sha256 and falls back to the cache (or training) when it does not match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from automl.errors import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parent
MANIFEST = WEIGHTS_DIR / "manifest.json"
STORED_DTYPE = torch.float16
Log = Callable[[str], None]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_sha256(split_seed: int = 0) -> str:
    """sha256 of the normalised MNIST images, labels and split indices a reference is scored on."""
    from automl.data.mnist import _mnist_arrays, split_indices

    images, labels = _mnist_arrays()
    digest = hashlib.sha256(images.tobytes())
    digest.update(labels.tobytes())
    for name, idx in sorted(split_indices(labels, split_seed).items()):
        digest.update(name.encode())
        digest.update(idx.astype("int64").tobytes())
    return digest.hexdigest()


def manifest(path: Path = MANIFEST) -> dict[str, dict[str, Any]]:
    """File name -> recorded metadata of every shipped network."""
    return json.loads(path.read_text()) if path.is_file() else {}


def file_name(arch: str, seed: int) -> str:
    return f"{arch}-seed{seed}.pt"


def load_shipped(arch: str, seed: int, log: Log | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The shipped ``state_dict`` (as float32) and its manifest entry, or ``None`` when no
    network of that architecture and seed ships or its file fails the sha256 check."""
    entry = manifest().get(file_name(arch, seed))
    path = WEIGHTS_DIR / file_name(arch, seed)
    if entry is None or not path.is_file():
        return None
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        if log is not None:
            log(f"{arch}: shipped weights {path} have sha256 {digest[:12]}..., the manifest says {entry['sha256'][:12]}...; not used")
        return None
    stored = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in stored["state_dict"].items()}
    return state, {**entry, "path": path, "shipped": True}


def _predictions(arch: str, state: dict[str, torch.Tensor], split_seed: int) -> dict[str, torch.Tensor]:
    from automl.data import mnist_splits
    from automl.reference.models import REFERENCE_MODELS

    model = REFERENCE_MODELS[arch]()
    model.load_state_dict(state)
    model.eval()
    splits = mnist_splits(split_seed)
    out = {}
    with torch.no_grad():
        for name in ("val", "test"):
            ds = getattr(splits, name)
            out[name] = torch.cat([model(x) for x, _ in torch.utils.data.DataLoader(ds, batch_size=250)]).argmax(1)
            out[name + "_labels"] = ds.tensors[1]
    return out


def ship(checkpoint: Path, dest: Path = WEIGHTS_DIR, log: Log | None = print) -> Path:
    """Store a trained reference checkpoint compactly in ``dest`` and record it in the manifest.

    Raises:
        ConfigError: if float16 storage changes any validation or test prediction.
    """
    full = torch.load(checkpoint, map_location="cpu", weights_only=True)
    arch, seed, split_seed = full["arch"], int(full["seed"]), int(full.get("split_seed", 0))
    compact = {k: v.to(STORED_DTYPE) if v.is_floating_point() else v for k, v in full["state_dict"].items()}
    before = _predictions(arch, full["state_dict"], split_seed)
    after = _predictions(arch, {k: v.float() if v.is_floating_point() else v for k, v in compact.items()}, split_seed)
    for split in ("val", "test"):
        if not torch.equal(before[split], after[split]):
            raise ConfigError(f"{arch}: float16 storage changes {split} predictions; ship the float32 checkpoint instead")
    path = dest / file_name(arch, seed)
    dest.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": compact, "arch": arch, "seed": seed}, path)
    entry = {
        "arch": arch, "seed": seed, "epochs": full["epochs"], "split_seed": split_seed,
        "val_accuracy": int((after["val"] == after["val_labels"]).sum()) / len(after["val"]),
        "test_accuracy": int((after["test"] == after["test_labels"]).sum()) / len(after["test"]),
        "sha256": file_sha256(path), "data_sha256": data_sha256(split_seed), "dtype": str(STORED_DTYPE).removeprefix("torch."),
        "torch_version": full.get("torch_version"), "train_seconds": full.get("train_seconds"),
        "threads": full.get("threads"), "batch_size": full.get("batch_size"), "learning_rate": full.get("learning_rate"),
        "produced_by": f"automl train-reference --arch {arch} --seed {seed} --ship",
    }
    entries = manifest(dest / MANIFEST.name)
    entries[path.name] = entry
    (dest / MANIFEST.name).write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    if log is not None:
        log(f"{arch}: shipped {path} ({path.stat().st_size / 1000:.0f} kB, sha256 {entry['sha256'][:12]}...), "
            f"val {entry['val_accuracy']:.4f}, test {entry['test_accuracy']:.4f}")
    return path
