"""Reference networks shipped with the package, so a first search needs no training.

Each file is the ``state_dict`` of a network trained by ``automl train-reference`` (seed
recorded), stored in float16 where that leaves every validation and test prediction unchanged
(half the file), else in float32 (:func:`ship` checks it on the split the network is scored on,
so the recorded accuracies are those of the file). ``manifest.json`` records per file its sha256,
its dtype, the dataset, seed and settings of the training, the validation/test accuracy and the
sha256 of the split it was scored on; loading verifies the file's sha256 and falls back to the
cache (or training) when it does not match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

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


def file_name(arch: str, seed: int, dataset: str = "mnist") -> str:
    prefix = "" if dataset == "mnist" else f"{dataset}-"
    return f"{prefix}{arch}-seed{seed}.pt"


def load_shipped(
    arch: str, seed: int, log: Log | None = None, dataset: str = "mnist"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The shipped ``state_dict`` (as float32) and its manifest entry, or ``None`` when no
    network of that architecture and seed ships or its file fails the sha256 check."""
    entry = manifest().get(file_name(arch, seed, dataset))
    path = WEIGHTS_DIR / file_name(arch, seed, dataset)
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


def _predictions(
    arch: str, state: dict[str, torch.Tensor], split_seed: int, dataset: str = "mnist"
) -> dict[str, torch.Tensor]:
    """Validation and test predictions (and labels) of ``state``, on the split it is scored on."""
    from automl.reference.checkpoints import _network

    model = _network(arch, dataset)
    model.load_state_dict(state)
    model.eval()
    if dataset == "mnist":
        from automl.data import mnist_splits

        splits = mnist_splits(split_seed)
        data = {name: getattr(splits, name) for name in ("val", "test")}
        labels = {name: ds.tensors[1] for name, ds in data.items()}
    else:
        from automl.reference.recipes import splits_of

        arrays = splits_of(dataset)
        data = {name: arrays.dataset(name) for name in ("val", "test")}
        labels = {name: ds.labels for name, ds in data.items()}
    out = {}
    with torch.no_grad():
        for name, ds in data.items():
            loader = torch.utils.data.DataLoader(ds, batch_size=250, collate_fn=None if dataset == "mnist" else _whole)
            out[name] = torch.cat([model(x) for x, _ in loader]).argmax(1)
            out[name + "_labels"] = labels[name]
    return out


def _whole(batch: Any) -> Any:
    return batch


def _data_sha256(dataset: str, split_seed: int) -> str:
    if dataset == "mnist":
        return data_sha256(split_seed)
    from automl.reference.recipes import splits_of

    return splits_of(dataset).digest()


def ship(checkpoint: Path, dest: Path = WEIGHTS_DIR, log: Log | None = print) -> Path:
    """Store a trained reference checkpoint compactly in ``dest`` and record it in the manifest.

    Raises:
        ConfigError: if float16 storage changes any validation or test prediction.
    """
    full = torch.load(checkpoint, map_location="cpu", weights_only=True)
    arch, seed, split_seed = full["arch"], int(full["seed"]), int(full.get("split_seed", 0))
    dataset = str(full.get("dataset", "mnist"))
    before = _predictions(arch, full["state_dict"], split_seed, dataset)
    dtype = STORED_DTYPE
    compact = {k: v.to(dtype) if v.is_floating_point() else v for k, v in full["state_dict"].items()}
    after = _predictions(arch, {k: v.float() if v.is_floating_point() else v for k, v in compact.items()}, split_seed,
                         dataset)
    changed = [split for split in ("val", "test") if not torch.equal(before[split], after[split])]
    if changed:  # float16 would not be the network that was trained and scored: ship float32
        if log is not None:
            log(f"{arch}: float16 storage changes {' and '.join(changed)} predictions; shipping float32")
        dtype, compact, after = torch.float32, dict(full["state_dict"]), before
    path = dest / file_name(arch, seed, dataset)
    dest.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": compact, "arch": arch, "seed": seed, "dataset": dataset}, path)
    entry = {
        "arch": arch, "seed": seed, "epochs": full["epochs"], "split_seed": split_seed,
        "val_accuracy": int((after["val"] == after["val_labels"]).sum()) / len(after["val"]),
        "test_accuracy": int((after["test"] == after["test_labels"]).sum()) / len(after["test"]),
        "sha256": file_sha256(path), "data_sha256": _data_sha256(dataset, split_seed), "dtype": str(dtype).removeprefix("torch."),
        "torch_version": full.get("torch_version"), "train_seconds": full.get("train_seconds"),
        "threads": full.get("threads"), "batch_size": full.get("batch_size"), "learning_rate": full.get("learning_rate"),
        "produced_by": f"automl train-reference --dataset {dataset} --arch {arch} --seed {seed} --ship",
    }
    if dataset != "mnist":
        entry.update({"dataset": dataset, "source_sha256": full.get("source_sha256"),
                      "weight_decay": full.get("weight_decay")})
    entries = manifest(dest / MANIFEST.name)
    entries[path.name] = entry
    (dest / MANIFEST.name).write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    if log is not None:
        log(f"{arch}: shipped {path} ({path.stat().st_size / 1000:.0f} kB, sha256 {entry['sha256'][:12]}...), "
            f"val {entry['val_accuracy']:.4f}, test {entry['test_accuracy']:.4f}")
    return path
