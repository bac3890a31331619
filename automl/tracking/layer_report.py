"""A policy layer by layer, as a reader wants it: a table (Markdown and HTML) and a figure.

One row per quantized layer: the weight bit-width of each channel group (in importance
order, the most important group first; ``4/0`` is a group partly pruned), the input
activation bits, how many output channels are pruned (after channel coupling, so what the
cost model prices) and the layer's share of the model's size.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl.cost import CostModel
from automl.cost.units import SIZE_UNIT, kb
from search_spaces.policy import FLOAT_BITS, Policy

_PARAM_UNSAFE = re.compile(r"[^\w./ -]")
HEADER = ("layer", "W bits per channel group", "A bits", "pruned channels", f"size {SIZE_UNIT}", "size share")


@dataclass(frozen=True)
class LayerRow:
    """One layer of a priced policy.

    Attributes:
        name: module name.
        group_bits: per channel group, the distinct bit-widths of its channels (``(4, 0)``
            when a group is partly pruned), most important group first.
        act_bits: bits of the layer's input activation (32 = float).
        pruned: output channels pruned (0 bits), after channel coupling.
        channels: output channels of the unpruned layer.
        mean_bits: mean weight bits of the kept channels.
        size_bytes: stored bytes of the layer (weights, scales, biases).
        size_share: ``size_bytes`` over the whole model's size.
    """

    name: str
    group_bits: tuple[tuple[int, ...], ...]
    act_bits: int
    pruned: int
    channels: int
    mean_bits: float
    size_bytes: float
    size_share: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bits(b: int) -> str:
    return "fp32" if b == FLOAT_BITS else str(b)


def _group_text(group: tuple[int, ...]) -> str:
    return "/".join(_bits(b) for b in group)


def layer_rows(cost_model: CostModel, policy: Policy) -> list[LayerRow]:
    """The per-layer rows of ``policy`` priced by ``cost_model``."""
    bits, act = cost_model.policy_arrays(policy)
    batch = cost_model.layer_batch(bits[None, :].astype(np.int64), act[None, :], cost_model.policy_nm(policy))
    layer_bytes = cost_model.layer_size_bits(batch)[0] / 8.0
    total = cost_model.price(policy).size_bytes
    eff = batch.eff_bits[0]
    rows = []
    for i, space in enumerate(cost_model.space.layers):
        start = int(cost_model.offsets[i])
        chan = eff[start : start + space.out_channels]
        groups = tuple(
            tuple(sorted({int(chan[c]) for c in group}, reverse=True)) for group in space.channel_groups
        )
        kept = chan[chan > 0]
        rows.append(LayerRow(
            name=space.name, group_bits=groups, act_bits=int(act[i]), pruned=int((chan == 0).sum()),
            channels=space.out_channels, mean_bits=float(kept.mean()) if len(kept) else 0.0,
            size_bytes=float(layer_bytes[i]), size_share=float(layer_bytes[i] / total) if total else 0.0,
        ))
    return rows


def _cells(row: LayerRow) -> tuple[str, ...]:
    return (
        row.name, " · ".join(_group_text(g) for g in row.group_bits), _bits(row.act_bits),
        f"{row.pruned}/{row.channels}", f"{kb(row.size_bytes):.3f}", f"{row.size_share:.1%}",
    )


def layer_params(rows: Sequence[LayerRow]) -> dict[str, str]:
    """One MLflow parameter per layer, in network order: ``layer 03: layer1.0.conv2`` ->
    ``W 4/0 · 4 · 2 | A 8 | pruned 3/16 | 0.410 kB (12.3%)`` (weight bits per channel group,
    input activation bits, pruned output channels, size and share of the model)."""
    width = max(2, len(str(len(rows) - 1)))
    out = {}
    for i, row in enumerate(rows):
        name, groups, act, pruned, size, share = _cells(row)
        safe = _PARAM_UNSAFE.sub("_", name)  # MLflow keys: letters, digits, _ - . / space
        key = f"layer {i:0{width}d}: {safe}"[:250]
        out[key] = f"W {groups} | A {act} | pruned {pruned} | {size} {SIZE_UNIT} ({share})"
    return out


def markdown_table(rows: Sequence[LayerRow]) -> str:
    """The rows as a GitHub-flavoured Markdown table (rendered by MLflow run descriptions)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def html_table(rows: Sequence[LayerRow], title: str) -> str:
    """A standalone HTML page with the rows (MLflow's artifact viewer renders it)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows)
    style = ("body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "th{background:#f3f3f3}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
            f"</head><body><h3>{html.escape(title)}</h3><table id='per-layer'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></body></html>\n")


def layer_figure(rows: Sequence[LayerRow], path: Path, title: str) -> Path:
    """Per layer: the weight bits of each channel group, activation bits and pruned fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in rows]
    x = np.arange(len(rows))
    n_groups = max(len(r.group_bits) for r in rows)
    fig, (ax_bits, ax_pruned, ax_size) = plt.subplots(3, 1, figsize=(max(7.0, 0.45 * len(rows) + 2), 7.5), sharex=True)
    width = 0.8 / (n_groups + 1)
    for g in range(n_groups):
        heights = [min(max(r.group_bits[g]), 16) if g < len(r.group_bits) else 0 for r in rows]
        label = f"W group {g + 1}" + (" (most important)" if g == 0 and n_groups > 1 else "")
        ax_bits.bar(x - 0.4 + width * (g + 0.5), heights, width, label=label)
    ax_bits.bar(x - 0.4 + width * (n_groups + 0.5), [min(r.act_bits, 16) for r in rows], width, color="k", alpha=0.6,
                label="A bits (input)")
    top = max(max(min(max(g), 16) for g in r.group_bits) for r in rows)
    ax_bits.set_ylim(0, max(top, max(min(r.act_bits, 16) for r in rows)) + 1)
    ax_bits.set_ylabel("bits (0 = pruned, fp32 at 16)")
    ax_bits.legend(fontsize=7, ncol=n_groups + 1, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    ax_pruned.bar(x, [100 * r.pruned / r.channels for r in rows], color="tab:red")
    ax_pruned.set_ylabel("pruned channels (%)")
    ax_size.bar(x, [kb(r.size_bytes) for r in rows], color="tab:green")
    ax_size.set_ylabel(f"size ({SIZE_UNIT})")
    ax_size.set_xticks(x, names, rotation=75, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
