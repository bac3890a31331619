"""Plain, torch-free records that describe an analysed model.

They cross every boundary of the project (search spaces, cost models, envs), so they are
frozen dataclasses with a JSON round trip and no reference to ``torch``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """A run of input features of a layer that come from one channel group.

    ``features_per_channel`` is 1 for convolutions and the flattened spatial size for a
    Linear layer that reads a flattened feature map (one channel feeds that many inputs).
    """

    group: int
    channels: int
    features_per_channel: int = 1


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer (Conv1d, Conv2d or Linear), keyed by its module name."""

    name: str
    kind: str  # "conv1d" | "conv2d" | "linear"
    index: int  # position in execution order
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    groups: int
    in_shape: tuple[int, ...]  # without the batch dimension
    out_shape: tuple[int, ...]
    weight_params: int
    bias_params: int
    macs: int
    out_group: int = -1
    in_segments: tuple[Segment, ...] = ()
    folded_bn: str | None = None

    @property
    def params(self) -> int:
        return self.weight_params + self.bias_params

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def kernel_numel(self) -> int:
        n = 1
        for k in self.kernel_size:
            n *= k
        return n

    @property
    def out_spatial(self) -> int:
        """Output positions per sample (1 for a Linear layer on a vector)."""
        n = 1
        for s in self.out_shape[1:] if self.kind != "linear" else self.out_shape[:-1]:
            n *= s
        return n


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels that must be pruned together.

    Channel ``c`` of the group is channel ``c`` of every producer's output. Producers are
    the quantizable layers that write these channels (several when a residual addition
    joins them); consumers read them; followers are per-channel modules (BatchNorm) whose
    parameters shrink with the group.
    """

    gid: int
    channels: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...] = ()
    followers: tuple[str, ...] = ()
    prunable: bool = True
    reason: str = ""


@dataclass(frozen=True)
class ModelAnalysis:
    """Everything the search needs to know about a network's structure."""

    layers: tuple[LayerInfo, ...]
    groups: tuple[ChannelGroup, ...]
    # (name, type, bytes): every parameter and buffer the deployed model keeps at full precision besides the
    # quantized layers (LayerNorms, unfolded BatchNorms with their statistics, class tokens, layer scales, ...)
    unquantized: tuple[tuple[str, str, int], ...] = ()
    input_shape: tuple[int, ...] = ()
    schema_version: int = SCHEMA_VERSION
    notes: tuple[str, ...] = field(default=())
    # BatchNorms on a concatenation: (name, the channel segments they normalise, in order); each
    # segment's channels shrink with its group, as a follower's do
    split_followers: tuple[tuple[str, tuple[Segment, ...]], ...] = ()

    def __post_init__(self) -> None:
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate layer names in analysis: {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def total_params(self) -> int:
        """Parameters of the quantized layers plus the 32-bit values kept at full precision."""
        return sum(layer.params for layer in self.layers) + sum(b for *_, b in self.unquantized) // 4

    @property
    def float_bytes(self) -> int:
        """Bytes of every tensor the deployed float model holds: layers (BatchNorm folded) and kept-float ones."""
        biases = sum(layer.out_channels for layer in self.layers if layer.bias_params or layer.folded_bn)
        return 4 * (sum(layer.weight_params for layer in self.layers) + biases) + sum(b for *_, b in self.unquantized)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def report(self) -> str:
        """A human-readable table of the layers and of what stays at full precision."""
        lines = [f"{'layer':<28}{'kind':<8}{'in':>6}{'out':>6}{'groups':>7}{'params':>10}{'MACs':>12}  group"]
        for layer in self.layers:
            lines.append(
                f"{layer.name:<28}{layer.kind:<8}{layer.in_channels:>6}{layer.out_channels:>6}"
                f"{layer.groups:>7}{layer.params:>10}{layer.macs:>12}  g{layer.out_group}"
            )
        if self.unquantized:
            lines.append("kept at full precision (not Conv/Linear):")
            for name, kind, nbytes in self.unquantized:
                lines.append(f"  {name} ({kind}, {nbytes} bytes)")
        for g in self.groups:
            if not g.prunable and g.producers:  # name the layers whose output channels it blocks
                lines.append(f"g{g.gid} ({', '.join(g.producers)}: {g.channels} channels) not prunable: {g.reason}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelAnalysis:
        layers = tuple(
            LayerInfo(
                **{
                    **d,
                    "kernel_size": tuple(d["kernel_size"]),
                    "stride": tuple(d["stride"]),
                    "in_shape": tuple(d["in_shape"]),
                    "out_shape": tuple(d["out_shape"]),
                    "in_segments": tuple(Segment(**s) for s in d["in_segments"]),
                }
            )
            for d in data["layers"]
        )
        groups = tuple(
            ChannelGroup(
                **{
                    **g,
                    "producers": tuple(g["producers"]),
                    "consumers": tuple(g["consumers"]),
                    "followers": tuple(g["followers"]),
                }
            )
            for g in data["groups"]
        )
        return cls(
            layers=layers,
            groups=groups,
            unquantized=tuple(tuple(u) for u in data["unquantized"]),  # type: ignore[misc]
            input_shape=tuple(data["input_shape"]),
            schema_version=data["schema_version"],
            notes=tuple(data.get("notes", ())),
            split_followers=tuple((name, tuple(Segment(**seg) for seg in segs))
                                  for name, segs in data.get("split_followers", ())),
        )
