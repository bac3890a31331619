"""The search space: which bit-widths each layer and channel group may take.

0 bits is an explicit member of the weight choices and means "pruned"; 32 means "keep
float". The mapping from a layer-level decision (sparsity) and channel-level decisions
(bits per importance-ranked group) to per-channel bit-widths lives in one place,
:meth:`SearchSpace.decode`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from automl.errors import AutoMLError, PolicyError, SearchSpaceError
from automl.settings import Settings
from search_spaces.network import ModelAnalysis
from search_spaces.policy import FLOAT_BITS, NM_PATTERNS, LayerPolicy, Policy, parse_nm

SPACE_SCHEMA_VERSION = 1
DEFAULT_WEIGHT_BITS = (0, 2, 3, 4, 5, 6, 8, 32)
DEFAULT_ACT_BITS = (2, 3, 4, 5, 6, 8)


class SpaceConfig(Settings):
    """User-facing settings from which a :class:`SearchSpace` is built for a model (the ``space``
    section of a search configuration).

    Attributes:
        weight_bits: allowed weight bit-widths; 0 (pruned) is dropped where pruning is off
            or a layer cannot be pruned.
        act_bits: allowed activation bit-widths of each layer's input.
        n_groups: channel granularity: every channel gets its own bits when ``None``,
            otherwise channels are split into this many importance-ranked groups.
        min_sparsity / max_sparsity / sparsity_step: the layer-level pruning levels.
        pin_first_last: keep the first and the last layer at ``pinned_bits``.
        pinned_bits: bit-width of the pinned layers (weights and activations).
        pinned: further layer names held at ``pinned_bits``.
        allow_pruning: whether 0 bits is allowed at all.
        nm_patterns: N:M weight sparsity patterns a free layer may take besides dense
            (e.g. ``("2:4", "4:8")``; ``"-T"`` = transposable); empty (the default) = off.
            A layer whose reduction dimension (in_channels / groups x kernel) is not a
            multiple of M, a depthwise layer, and a pinned layer stay dense; a transposable
            pattern also needs out_channels to be a multiple of M. Quote them in YAML, where an
            unquoted ``2:4`` is the base-60 integer 124.
        importance: the criterion that ranks channels for pruning and for bit groups (``l1``,
            ``l2`` or ``taylor``; :mod:`automl.quant.importance`).
    """

    error: ClassVar[type[AutoMLError]] = SearchSpaceError

    weight_bits: tuple[int, ...] = DEFAULT_WEIGHT_BITS
    act_bits: tuple[int, ...] = DEFAULT_ACT_BITS
    n_groups: int | None = Field(4, ge=1)
    min_sparsity: float = 0.0
    max_sparsity: float = 0.75
    sparsity_step: float = Field(0.125, gt=0)
    pin_first_last: bool = True
    pinned_bits: int = Field(8, ge=1, le=FLOAT_BITS)
    pinned: tuple[str, ...] = ()
    allow_pruning: bool = True
    nm_patterns: tuple[str, ...] = ()
    importance: Literal["l1", "l2", "taylor"] = "l1"

    @model_validator(mode="after")
    def _check(self) -> SpaceConfig:
        for pat in self.nm_patterns:
            if pat not in NM_PATTERNS:
                raise SearchSpaceError(
                    f"nm_patterns: expected patterns from {list(NM_PATTERNS)}, got {pat!r}. Dense is always "
                    "included when N:M is on; leave nm_patterns empty to turn it off."
                )
        if len(set(self.nm_patterns)) != len(self.nm_patterns):
            raise SearchSpaceError(f"nm_patterns lists a pattern twice: {list(self.nm_patterns)}")
        for label, bits in (("weight_bits", self.weight_bits), ("act_bits", self.act_bits)):
            if not bits or any(b < 0 or b > FLOAT_BITS for b in bits):
                raise SearchSpaceError(f"{label} must be a non-empty list of integers in 0..32, got {list(bits)!r}")
        if 0 in self.act_bits:
            raise SearchSpaceError("act_bits cannot contain 0: activations cannot be pruned; use weight bits 0")
        if not 0.0 <= self.min_sparsity <= self.max_sparsity < 1.0:
            raise SearchSpaceError(
                f"need 0 <= min_sparsity <= max_sparsity < 1, got {self.min_sparsity} and {self.max_sparsity}"
            )
        return self

    def sparsity_levels(self) -> tuple[float, ...]:
        n = int(math.floor((self.max_sparsity - self.min_sparsity) / self.sparsity_step + 1e-9))
        return tuple(round(self.min_sparsity + i * self.sparsity_step, 6) for i in range(n + 1))


@dataclass(frozen=True)
class LayerSpace:
    """The choices of one layer.

    ``channel_rank`` lists output channel indices from most to least important (one
    criterion for pruning and for bit groups, as in AJPQ); ``channel_groups`` splits that
    ranking into the groups that share a bit-width.
    """

    name: str
    out_channels: int
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    sparsity_levels: tuple[float, ...]
    max_sparsity: float
    channel_rank: tuple[int, ...]
    channel_groups: tuple[tuple[int, ...], ...]
    coupled_group: int
    pinned: bool = False
    shares_group: bool = False  # other layers' outputs are pruned together with this one's
    nm_patterns: tuple[str, ...] = ("",)  # "" (dense) first, then the N:M patterns the layer allows

    def __post_init__(self) -> None:
        if sorted(self.channel_rank) != list(range(self.out_channels)):
            raise SearchSpaceError(f"layer {self.name!r}: channel_rank must be a permutation of its channels")

    @property
    def prunable(self) -> bool:
        return 0 in self.weight_bits

    @property
    def n_groups(self) -> int:
        return len(self.channel_groups)

    @property
    def nonzero_bits(self) -> tuple[int, ...]:
        return tuple(b for b in self.weight_bits if b > 0)

    @property
    def group_bits(self) -> tuple[int, ...]:
        """Bit-widths a channel group may take in :meth:`SearchSpace.decode`.

        0 is offered only where the layer alone owns its channels: in a coupled group the
        members share one importance ranking, so pruning through the layer-level sparsity
        prunes the same channels everywhere, while 0-bit groups chosen independently by
        several members could together prune more than ``max_sparsity`` allows.
        """
        return self.nonzero_bits if self.shares_group else self.weight_bits

    @property
    def max_pruned(self) -> int:
        return int(math.floor(self.max_sparsity * self.out_channels + 1e-9)) if self.prunable else 0

    @cached_property
    def group_of_channel(self) -> np.ndarray:
        """The index of each channel's bit group (what :meth:`SearchSpace.decode` gathers from)."""
        index = np.empty(self.out_channels, dtype=np.int64)
        for g, members in enumerate(self.channel_groups):
            index[list(members)] = g
        return index

    @cached_property
    def prune_order(self) -> np.ndarray:
        """Channels from least to most important: the first ``n`` are the ``n`` that sparsity prunes."""
        return np.array(self.channel_rank[::-1], dtype=np.int64)


@dataclass(frozen=True)
class SearchSpace:
    """Choices for every quantizable layer of one analysed model."""

    layers: tuple[LayerSpace, ...]
    schema_version: int = SPACE_SCHEMA_VERSION
    config: SpaceConfig = field(default_factory=SpaceConfig)

    # construction --------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        analysis: ModelAnalysis,
        config: SpaceConfig | None = None,
        channel_rank: Mapping[str, Sequence[int]] | None = None,
    ) -> SearchSpace:
        """Build the space of ``analysis`` under ``config``.

        Args:
            analysis: the analysed model.
            config: the user's settings (defaults when ``None``).
            channel_rank: per layer, output channels from most to least important (from
                :func:`automl.quant.importance.channel_ranking`); identity order when ``None``.
        """
        config = config or SpaceConfig()
        if not analysis.layers:
            raise SearchSpaceError("the model has no quantizable (Conv/Linear) layer to search over")
        names = analysis.names
        unknown = set(config.pinned) - set(names)
        if unknown:
            raise SearchSpaceError(f"pinned layers {sorted(unknown)} are not in the model; its layers are {list(names)}")
        pinned = set(config.pinned)
        if config.pin_first_last:
            pinned |= {names[0], names[-1]}
        prunable_groups = {g.gid for g in analysis.groups if g.prunable}
        # A group is prunable only if none of its producers is pinned.
        for layer in analysis.layers:
            if layer.name in pinned:
                prunable_groups.discard(layer.out_group)
        levels = config.sparsity_levels()
        producers = {g.gid: len(g.producers) for g in analysis.groups}
        spaces = []
        for layer in analysis.layers:
            rank = tuple(int(c) for c in (channel_rank or {}).get(layer.name, range(layer.out_channels)))
            if len(rank) != layer.out_channels:
                raise SearchSpaceError(
                    f"layer {layer.name!r}: channel ranking has {len(rank)} entries, the layer has "
                    f"{layer.out_channels} output channels"
                )
            is_pinned = layer.name in pinned
            can_prune = config.allow_pruning and layer.out_group in prunable_groups and not is_pinned
            if is_pinned:
                wbits: tuple[int, ...] = (config.pinned_bits,)
                abits: tuple[int, ...] = (config.pinned_bits,)
            else:
                wbits = tuple(sorted({b for b in config.weight_bits if b > 0 or can_prune}))
                abits = tuple(sorted(set(config.act_bits)))
            if not any(b > 0 for b in wbits):
                raise SearchSpaceError(f"layer {layer.name!r}: weight_bits must hold at least one non-zero width")
            n_groups = layer.out_channels if config.n_groups is None else min(config.n_groups, layer.out_channels)
            groups = tuple(tuple(int(c) for c in chunk) for chunk in np.array_split(np.array(rank), n_groups))
            spaces.append(
                LayerSpace(
                    name=layer.name,
                    out_channels=layer.out_channels,
                    weight_bits=wbits,
                    act_bits=abits,
                    sparsity_levels=levels if can_prune else (0.0,),
                    max_sparsity=config.max_sparsity if can_prune else 0.0,
                    channel_rank=rank,
                    channel_groups=groups,
                    coupled_group=layer.out_group,
                    pinned=is_pinned,
                    shares_group=producers.get(layer.out_group, 1) > 1,
                    nm_patterns=("",) if is_pinned else _layer_nm(layer, config.nm_patterns),
                )
            )
        return cls(tuple(spaces), config=config)

    # lookup --------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.layers)

    def layer(self, name: str) -> LayerSpace:
        for s in self.layers:
            if s.name == name:
                return s
        raise KeyError(name)

    def coupled(self) -> dict[int, tuple[str, ...]]:
        """Coupled-group id -> the layers whose output channels are pruned together."""
        out: dict[int, list[str]] = {}
        for s in self.layers:
            out.setdefault(s.coupled_group, []).append(s.name)
        return {g: tuple(v) for g, v in out.items()}

    # decoding ------------------------------------------------------------------------
    def decode(
        self, name: str, sparsity: float, group_bits: Sequence[int], act_bits: int, nm: str = ""
    ) -> LayerPolicy:
        """Turn a layer-level and channel-level decision (and an N:M pattern) into a layer policy.

        The ``round(sparsity * C)`` least important channels get 0 bits; the remaining
        channels take the bit-width of their importance group (a group at 0 bits is pruned
        too). Raises :class:`PolicyError` if the result prunes more than ``max_sparsity``.
        """
        s = self.layer(name)
        if len(group_bits) != s.n_groups:
            raise PolicyError(f"layer {name!r}: expected {s.n_groups} group bit-widths, got {len(group_bits)}")
        bits = np.asarray(group_bits, dtype=np.int64)[s.group_of_channel]
        n_pruned = int(round(sparsity * s.out_channels))
        if n_pruned:
            bits[s.prune_order[:n_pruned]] = 0
        policy = LayerPolicy(int(act_bits), tuple(bits.tolist()), nm)
        self._check_layer(s, policy)
        return policy

    def uniform(self, weight_bits: int, act_bits: int | None = None, sparsity: float = 0.0) -> Policy:
        """Every free layer at ``weight_bits`` (pinned layers keep theirs)."""
        out = []
        for s in self.layers:
            wb = weight_bits if weight_bits in s.weight_bits else s.nonzero_bits[-1] if s.pinned else None
            if wb is None:
                raise PolicyError(f"layer {s.name!r} does not allow {weight_bits}-bit weights; it allows {s.weight_bits}")
            ab = act_bits if act_bits is not None else weight_bits
            if ab not in s.act_bits:
                ab = min(s.act_bits, key=lambda a: (abs(a - ab), -a))
            sp = max((lv for lv in s.sparsity_levels if lv <= sparsity), default=0.0)
            out.append((s.name, self.decode(s.name, sp, [wb] * s.n_groups, ab)))
        return Policy(tuple(out))

    def sample(self, rng: np.random.Generator) -> Policy:
        """A uniformly random decoded policy (sparsity level, group bits, act bits)."""
        out = []
        for s in self.layers:
            while True:
                sp = float(rng.choice(s.sparsity_levels))
                gb = [int(rng.choice(s.group_bits)) for _ in range(s.n_groups)]
                ab = int(rng.choice(s.act_bits))
                # drawn only when there is a choice, so a space without N:M keeps its random stream
                nm = str(rng.choice(s.nm_patterns)) if len(s.nm_patterns) > 1 else ""
                try:
                    out.append((s.name, self.decode(s.name, sp, gb, ab, nm)))
                    break
                except PolicyError:
                    continue
        return Policy(tuple(out))

    # validation ----------------------------------------------------------------------
    def _check_layer(self, s: LayerSpace, lp: LayerPolicy) -> None:
        if len(lp.weight_bits) != s.out_channels:
            raise PolicyError(
                f"layer {s.name!r}: the policy gives {len(lp.weight_bits)} channel bit-widths, the layer has "
                f"{s.out_channels} output channels. Was the policy made for another model?"
            )
        bad = sorted(set(lp.weight_bits) - set(s.weight_bits))
        if bad:
            raise PolicyError(f"layer {s.name!r}: weight bits {bad} are not allowed; allowed are {list(s.weight_bits)}")
        if lp.act_bits not in s.act_bits:
            raise PolicyError(
                f"layer {s.name!r}: activation bits {lp.act_bits} not allowed; allowed are {list(s.act_bits)}"
            )
        if lp.nm not in s.nm_patterns:
            raise PolicyError(
                f"layer {s.name!r}: N:M pattern {lp.nm!r} not allowed; allowed are {list(s.nm_patterns)} ('' = dense)"
            )
        pruned = lp.weight_bits.count(0)
        if pruned > s.max_pruned:
            raise PolicyError(
                f"layer {s.name!r}: {pruned} of {s.out_channels} channels pruned, at most {s.max_pruned} "
                f"(max_sparsity={s.max_sparsity}) are allowed"
            )

    def validate(self, policy: Policy) -> Policy:
        """Check that ``policy`` fits this space exactly; return it unchanged."""
        if policy.names != self.names:
            missing = [n for n in self.names if n not in policy.names]
            extra = [n for n in policy.names if n not in self.names]
            if missing or extra:
                raise PolicyError(
                    f"the policy does not match the model: layers missing from the policy {missing}, layers the "
                    f"model does not have {extra}. Was the policy made for another model?"
                )
            raise PolicyError("the policy lists the model's layers in another order than the model runs them")
        for s, (_, lp) in zip(self.layers, policy, strict=True):
            self._check_layer(s, lp)
        by_name = policy.as_dict()
        for members, pruned in self._coupled_pruning(by_name):
            limit = min(self.layer(m).max_pruned for m in members)
            if int(pruned.sum()) > limit:
                raise PolicyError(
                    f"layers {list(members)} are pruned together; together they prune {int(pruned.sum())} of "
                    f"{len(pruned)} channels, at most {limit} are allowed. Prune the same (least important) channels "
                    "in each, e.g. through SearchSpace.decode's sparsity."
                )
        return policy

    def _coupled_pruning(self, by_name: Mapping[str, LayerPolicy]) -> list[tuple[tuple[str, ...], np.ndarray]]:
        """Per coupled group of two or more layers: its members and the union of their pruned channels."""
        out = []
        for members in self.coupled().values():
            if len(members) > 1:
                pruned = np.zeros(len(by_name[members[0]].weight_bits), dtype=bool)
                for m in members:
                    pruned |= np.asarray(by_name[m].weight_bits) == 0
                out.append((members, pruned))
        return out

    def resolve(self, policy: Policy) -> Policy:
        """Apply channel coupling: a channel pruned in one member of a group is pruned in all.

        Returns the policy whose per-channel bits the network really runs with; a policy
        that already respects coupling comes back as the same object.
        """
        self.validate(policy)
        by_name = policy.as_dict()
        changed = False
        for members, pruned in self._coupled_pruning(by_name):
            for m in members:
                bits = np.asarray(by_name[m].weight_bits)
                if (bits[pruned] != 0).any():
                    bits = bits.copy()
                    bits[pruned] = 0
                    by_name[m] = replace(by_name[m], weight_bits=tuple(int(b) for b in bits))
                    changed = True
        return Policy(tuple((n, by_name[n]) for n in self.names)) if changed else policy

    # serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "config": self.config.to_dict(), "layers": [asdict(s) for s in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        if data.get("schema_version") != SPACE_SCHEMA_VERSION:
            raise SearchSpaceError(f"search space schema {data.get('schema_version')!r} is not {SPACE_SCHEMA_VERSION}")
        cfg = dict(data["config"])
        for k in ("weight_bits", "act_bits", "pinned", "nm_patterns"):
            cfg[k] = tuple(cfg.get(k, ()))
        layers = tuple(
            LayerSpace(
                **{
                    **d,
                    "weight_bits": tuple(d["weight_bits"]),
                    "act_bits": tuple(d["act_bits"]),
                    "sparsity_levels": tuple(d["sparsity_levels"]),
                    "channel_rank": tuple(d["channel_rank"]),
                    "channel_groups": tuple(tuple(g) for g in d["channel_groups"]),
                    "nm_patterns": tuple(d.get("nm_patterns", ("",))),
                }
            )
            for d in data["layers"]
        )
        return cls(layers, data["schema_version"], SpaceConfig(**cfg))


def _layer_nm(layer: Any, patterns: Sequence[str]) -> tuple[str, ...]:
    """Dense plus the patterns of ``patterns`` that fit ``layer``'s weight matrix [out, K]."""
    if layer.depthwise:  # K = kernel positions only (e.g. 9): too short to block, kept dense
        return ("",)
    k = layer.in_channels // layer.groups * layer.kernel_numel
    ok = []
    for pat in patterns:
        _, m, transposable = parse_nm(pat)
        if k % m == 0 and (not transposable or layer.out_channels % m == 0):
            ok.append(pat)
    return ("", *ok)
