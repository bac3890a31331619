"""The base of hardware profiles and the validated reading of their YAML mappings."""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from automl.cost.batch import LayerBatch
from automl.errors import ProfileError

PROFILE_SCHEMA_VERSION = 1
BITS = np.arange(33)


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


class HardwareProfile(abc.ABC):
    """Base of the latency models. Subclasses are frozen dataclasses.

    Every model has the same shape, which the integer program
    (:func:`automl.ilp.solve_ilp`) linearises exactly: a layer takes
    ``max(compute, memory + output write) + overhead`` and the network adds
    :attr:`network_overhead_ms`.
    """

    kind: ClassVar[str] = ""
    name: str

    @property
    def network_overhead_ms(self) -> float:
        return 0.0

    @abc.abstractmethod
    def layer_terms(self, batch: LayerBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(compute, memory without the output write, fixed overhead)``, each ``[n, L]`` ms."""

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
