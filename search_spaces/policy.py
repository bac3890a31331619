"""A policy: one concrete compression choice for every quantizable layer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from automl.errors import PolicyError

POLICY_SCHEMA_VERSION = 1
FLOAT_BITS = 32
# N:M fine-grained sparsity patterns a layer may take ("" = dense); "-T" = transposable.
NM_PATTERNS = ("2:4", "1:4", "4:8", "2:4-T", "1:4-T", "4:8-T")


def parse_nm(pattern: str) -> tuple[int, int, bool]:
    """``"N:M"`` / ``"N:M-T"`` -> ``(N, M, transposable)``; raises :class:`PolicyError` otherwise."""
    if pattern not in NM_PATTERNS:
        raise PolicyError(f"N:M pattern must be one of {list(NM_PATTERNS)} (or '' for dense), got {pattern!r}")
    body, _, tail = pattern.partition("-")
    n, m = (int(x) for x in body.split(":"))
    return n, m, tail == "T"


@dataclass(frozen=True)
class LayerPolicy:
    """Activation bits of the layer's input and one weight bit-width per output channel.

    A weight bit-width of 0 means the channel is pruned; 32 means it stays in float.
    ``nm`` is the layer's N:M weight sparsity pattern (e.g. ``"2:4"``), ``""`` for dense.
    """

    act_bits: int
    weight_bits: tuple[int, ...]
    nm: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.weight_bits, tuple):
            object.__setattr__(self, "weight_bits", tuple(int(b) for b in self.weight_bits))
        if not self.weight_bits:
            raise PolicyError("a layer policy needs at least one output channel")
        if min(self.weight_bits) < 0 or max(self.weight_bits) > FLOAT_BITS:
            raise PolicyError(f"weight bits must lie in 0..32, got {sorted(set(self.weight_bits))}")
        if not 1 <= self.act_bits <= FLOAT_BITS:
            raise PolicyError(f"activation bits must lie in 1..32, got {self.act_bits}")
        if self.nm:
            parse_nm(self.nm)

    @property
    def sparsity(self) -> float:
        return self.weight_bits.count(0) / len(self.weight_bits)

    @property
    def mean_bits(self) -> float:
        kept = [b for b in self.weight_bits if b > 0]
        return sum(kept) / len(kept) if kept else 0.0


@dataclass(frozen=True)
class Policy:
    """Per-layer choices, keyed by module name in the model's execution order."""

    layers: tuple[tuple[str, LayerPolicy], ...]
    schema_version: int = POLICY_SCHEMA_VERSION

    def __post_init__(self) -> None:
        names = [n for n, _ in self.layers]
        if len(set(names)) != len(names):
            raise PolicyError(f"a policy names a layer twice: {names}")

    @classmethod
    def from_mapping(cls, layers: Mapping[str, LayerPolicy]) -> Policy:
        return cls(tuple(layers.items()))

    def __getitem__(self, name: str) -> LayerPolicy:
        for n, lp in self.layers:
            if n == name:
                return lp
        raise KeyError(name)

    def __iter__(self) -> Iterator[tuple[str, LayerPolicy]]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.layers)

    def as_dict(self) -> dict[str, LayerPolicy]:
        return dict(self.layers)

    def replace(self, name: str, layer: LayerPolicy) -> Policy:
        return Policy(tuple((n, layer if n == name else lp) for n, lp in self.layers), self.schema_version)

    # summaries -----------------------------------------------------------------------
    def mean_weight_bits(self) -> float:
        """Mean bits over kept channels (unweighted by channel size)."""
        bits = [b for _, lp in self.layers for b in lp.weight_bits if b > 0]
        return sum(bits) / len(bits) if bits else 0.0

    def channel_sparsity(self) -> float:
        bits = [b for _, lp in self.layers for b in lp.weight_bits]
        return sum(1 for b in bits if b == 0) / len(bits) if bits else 0.0

    # serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "layers": {n: _layer_dict(lp) for n, lp in self.layers},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        if not isinstance(data, Mapping):
            raise PolicyError(
                f"a policy is a JSON object with 'schema_version' and 'layers', got a {type(data).__name__}: "
                f"{str(data)[:80]!r}. Pass a policy file written by automl-mpq (e.g. best_policy.json)."
            )
        version = data.get("schema_version")
        if version != POLICY_SCHEMA_VERSION:
            raise PolicyError(
                f"policy schema version {version!r} is not supported; expected {POLICY_SCHEMA_VERSION}. "
                "Re-export the policy with this version of automl-mpq."
            )
        layers = data.get("layers")
        if not isinstance(layers, Mapping):
            raise PolicyError("a policy needs a 'layers' mapping of layer name -> {act_bits, weight_bits}")
        out = []
        for name, d in layers.items():
            try:
                act, bits, nm = d["act_bits"], list(d["weight_bits"]), d.get("nm", "")
                if not all(_is_int(b) for b in [act, *bits]) or not isinstance(nm, str):
                    raise TypeError("bit-widths must be integers")
                out.append((name, LayerPolicy(int(act), tuple(int(b) for b in bits), nm)))
            except (KeyError, TypeError) as exc:
                raise PolicyError(
                    f"layer {name!r}: expected act_bits (an integer) and weight_bits (a list of integers), got {d!r}"
                ) from exc
        return cls(tuple(out), version)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))  # layer order is meaningful: no sort_keys

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PolicyError(f"a policy file must be JSON: {exc}") from exc

    def key(self) -> str:
        """A stable hash: equal policies have equal keys across processes."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()


def _layer_dict(lp: LayerPolicy) -> dict[str, Any]:
    # "nm" is written only when set, so dense policies keep their JSON and their cache keys.
    d: dict[str, Any] = {"act_bits": lp.act_bits, "weight_bits": list(lp.weight_bits)}
    if lp.nm:
        d["nm"] = lp.nm
    return d


def _is_int(value: Any) -> bool:
    """An integer bit-width as JSON gives it (not a bool, not a fraction, not a string)."""
    return isinstance(value, int) and not isinstance(value, bool)
