"""The base of hardware profiles and the validated reading of their YAML mappings."""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from automl.cost.batch import NM_CHOICES, LayerBatch
from automl.errors import ProfileError
from search_spaces.policy import NM_PATTERNS, parse_nm

PROFILE_SCHEMA_VERSION = 1
BITS = np.arange(33)
# The patterns a profile's ``nm_speedup`` may name: a transposable (-T) mask is N:M along
# the rows too, so it runs on the kernels of its plain pattern.
NM_KERNELS = tuple(dict.fromkeys(p.removesuffix("-T") for p in NM_PATTERNS))
NM_KEY_EXAMPLE = '{"2:4": 2.0}'


def nm_fits(pattern: str, kernel: str) -> bool:
    """Whether every ``pattern`` mask also satisfies ``kernel``'s constraint (e.g. 1:4 fits 2:4, 2:4 fits 4:8).

    A kernel N':M' takes at most N' of every M' aligned weights; a mask with at most N of
    every M does so when M' is a multiple of M and its M'/M blocks hold at most N'.
    """
    n, m, _ = parse_nm(pattern)
    kn, km, _ = parse_nm(kernel)
    return km % m == 0 and n * (km // m) <= kn


class Reader:
    """Typed access to a profile mapping; every failure names the key and the file."""

    def __init__(self, data: Any, source: str) -> None:
        if not isinstance(data, Mapping):
            raise ProfileError(f"profile {source}: expected a YAML mapping of keys, got {type(data).__name__}")
        self.data = data
        self.source = source

    def fail(self, key: str, expected: str, got: Any) -> ProfileError:
        return ProfileError(f"profile {self.source}: key {key!r} must be {expected}, got {got!r}. Fix that key in the file.")

    def number(self, key: str, *, positive: bool = True, default: float | None = None) -> float:
        if key not in self.data:
            if default is not None:
                return default
            raise ProfileError(f"profile {self.source}: missing key {key!r} (a number). Add it to the file.")
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, "a number", value)
        if value < 0 or (positive and value == 0):
            raise self.fail(key, "a positive number" if positive else "a number >= 0", value)
        return float(value)

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value:
            if key not in self.data and default is None:
                raise ProfileError(f"profile {self.source}: missing key {key!r} (a string). Add it to the file.")
            raise self.fail(key, "a non-empty string", value)
        return value

    def bits_list(self, key: str) -> tuple[int, ...]:
        value = self.data.get(key)
        if (
            not isinstance(value, list)
            or not value
            or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32 for b in value)
        ):
            raise self.fail(key, "a non-empty list of bit-widths in 1..32", value)
        return tuple(sorted(set(value)))

    def nm_speedup(self, key: str = "nm_speedup") -> tuple[tuple[str, float], ...]:
        """The optional mapping ``N:M pattern -> MAC speedup`` of a profile with sparse MAC units."""
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, Mapping):
            raise self.fail(key, f"a mapping of N:M pattern -> MAC speedup such as {NM_KEY_EXAMPLE}", value)
        out = []
        for pattern, speedup in value.items():
            if not isinstance(pattern, str):
                raise ProfileError(
                    f"profile {self.source}: key {key!r} names the pattern {pattern!r}; expected a quoted string, one "
                    f"of {list(NM_KERNELS)} (YAML reads a bare 2:4 as the base-60 number 124). Quote it: {NM_KEY_EXAMPLE}."
                )
            if pattern not in NM_KERNELS:
                hint = " (a transposable -T layer runs on its plain pattern's kernels)" if pattern.endswith("-T") else ""
                raise ProfileError(
                    f"profile {self.source}: key {key!r} names the pattern {pattern!r}; expected one of "
                    f"{list(NM_KERNELS)}{hint}. Fix that key in the file."
                )
            n, m, _ = parse_nm(pattern)
            top = m / n
            number = not isinstance(speedup, bool) and isinstance(speedup, (int, float)) and math.isfinite(speedup)
            if not number or not 1.0 <= speedup <= top:
                raise ProfileError(
                    f"profile {self.source}: key {key!r}: the speedup of {pattern} must be a number in [1, {top:g}] "
                    f"(a {pattern} layer multiplies at most M/N = {top:g} x fewer weights), got {speedup!r}. "
                    "Fix that key in the file."
                )
            out.append((pattern, float(speedup)))
        return tuple(sorted(out))


class HardwareProfile(abc.ABC):
    """Base of the latency models. Subclasses are frozen dataclasses.

    Every model has the same shape, which the integer program
    (:func:`automl.problem.ilp.solve_ilp`) linearises exactly: a layer takes
    ``max(compute, memory + output write) + overhead`` and the network adds
    :attr:`network_overhead_ms`.

    ``nm_speedup`` (YAML ``nm_speedup: {"2:4": 2.0}``, empty by default) declares sparse MAC
    units: a layer whose N:M mask fits a declared kernel pattern (:func:`nm_fits`: its own
    pattern, its transposable form, or a sparser one such as 1:4 on 2:4 units) has its
    compute term divided by that pattern's speedup, the largest when several fit (at most
    M/N). Memory traffic and overheads stay as priced dense. A profile that declares none
    prices N:M layers exactly as dense ones.
    """

    kind: ClassVar[str] = ""
    name: str
    nm_speedup: tuple[tuple[str, float], ...]

    @property
    def network_overhead_ms(self) -> float:
        return 0.0

    @abc.abstractmethod
    def layer_terms(self, batch: LayerBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(compute, memory without the output write, fixed overhead)``, each ``[n, L]`` ms."""

    @cached_property
    def nm_divisor(self) -> np.ndarray:
        """``[len(NM_CHOICES)]`` what the compute term of a layer with each pattern is divided by (1 = dense speed)."""
        out = np.ones(len(NM_CHOICES))
        for i, pattern in enumerate(NM_CHOICES[1:], start=1):
            out[i] = max([1.0] + [s for kernel, s in self.nm_speedup if nm_fits(pattern, kernel)])
        return out

    def nm_entry(self) -> dict[str, Any]:
        """The ``nm_speedup`` key of :meth:`to_dict`, absent when the profile declares none."""
        return {"nm_speedup": dict(self.nm_speedup)} if self.nm_speedup else {}

    def sparse_compute(self, compute: np.ndarray, batch: LayerBatch) -> np.ndarray:
        """``compute`` (``[n, L]`` ms) with each N:M layer's divided by the declared speedup."""
        if batch.nm is None or not self.nm_speedup:
            return compute
        return compute / self.nm_divisor[batch.nm]

    def output_ms(self, elems: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Milliseconds to write ``elems`` output activations of ``bits`` bits (elementwise)."""
        return np.zeros(np.broadcast(elems, bits).shape)

    def layer_ms(self, batch: LayerBatch) -> np.ndarray:
        """``[n, L]`` latency of every layer in milliseconds."""
        compute, memory, overhead = self.layer_terms(batch)
        return np.maximum(compute, memory + self.output_ms(batch.out_elems, batch.out_bits)) + overhead

    def latency_ms(self, batch: LayerBatch) -> np.ndarray:
        """``[n]`` predicted latency in milliseconds of one sample's forward pass."""
        return self.layer_ms(batch).sum(axis=1) + self.network_overhead_ms

    def check(self, names: Sequence[str], in_features: Sequence[int], out_channels: Sequence[int]) -> None:
        """Raise :class:`ProfileError` if the profile cannot price this model (default: any model)."""
        return None

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The profile as the YAML mapping it was read from."""
