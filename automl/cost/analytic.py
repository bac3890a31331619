"""Analytic latency models: a bit-serial accelerator and a CPU roofline."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from automl.cost.batch import LayerBatch
from automl.cost.hardware import BITS, PROFILE_SCHEMA_VERSION, HardwareProfile, Reader

# What the numbers of an analytic profile stand for: no exporter of automl-mpq produces its binaries.
HYPOTHETICAL = "model of a hypothetical accelerator (no exporter targets it)"

@dataclass(frozen=True)
class BitSerialProfile(HardwareProfile):
    """A BitFusion-style spatial accelerator built of ``brick_bits`` x ``brick_bits`` multipliers.

    An operand of ``b`` bits is padded to the next supported precision and occupies
    ``ceil(padded / brick_bits)`` bricks along its side, so a MAC of w x a bits costs
    ``units(w) * units(a)`` brick-cycles: throughput scales with weight bits x activation
    bits at the precisions the hardware fuses. Wider operands than the widest supported
    precision (float32) run in several passes of the widest. Each layer takes the longer of
    its compute time and its off-chip traffic time (weights and activations at their padded
    widths), plus a fixed per-layer overhead.

    ``scales`` says which requantization scales the hardware applies between layers:
    ``any`` (a fixed-point multiplier per output) or ``power_of_two`` (shift-only hardware:
    a barrel shifter, so every weight, activation and BatchNorm scale must be a power of
    two; a search pricing such a profile must run with ``--power-of-two``). ``requant_ns``
    is the time the requantizer takes per output element, added to the layer's overhead.
    """

    kind: ClassVar[str] = "bitserial"
    name: str
    brick_bits: int
    supported_bits: tuple[int, ...]
    bricks: int
    frequency_mhz: float
    memory_gbps: float
    layer_overhead_us: float = 0.0
    network_overhead_us: float = 0.0
    description: str = ""
    runtime: str = HYPOTHETICAL
    scales: str = "any"
    requant_ns: float = 0.0
    nm_speedup: tuple[tuple[str, float], ...] = ()  # N:M pattern -> MAC speedup (HardwareProfile)

    @cached_property
    def padded(self) -> np.ndarray:
        """The bit-width every operand width 0..32 is padded to."""
        top = self.supported_bits[-1]
        out = np.zeros(33)
        for b in range(1, 33):
            fits = [s for s in self.supported_bits if s >= b]
            out[b] = fits[0] if fits else math.ceil(b / top) * top
        return out

    @property
    def network_overhead_ms(self) -> float:
        return self.network_overhead_us * 1e-3

    def layer_terms(self, batch: LayerBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pad, units = self.padded, self._units
        ms_per_brick_cycle = 1.0 / (self.bricks * self.frequency_mhz * 1e3)
        compute = batch.macs_per_channel * batch.channel_sum(units) * (units[batch.act_bits] * ms_per_brick_cycle)
        traffic = batch.channel_sum(pad) * batch.weights_per_out + batch.in_elems * pad[batch.act_bits]
        overhead = self.layer_overhead_us * 1e-3 * batch.alive + batch.out_elems * (self.requant_ns * 1e-6)
        return self.sparse_compute(compute, batch), traffic * self._ms_per_bit, overhead

    @cached_property
    def _units(self) -> np.ndarray:
        return np.ceil(self.padded / self.brick_bits)

    @cached_property
    def _ms_per_bit(self) -> float:
        return 1.0 / (8.0 * self.memory_gbps * 1e6)

    def output_ms(self, elems: np.ndarray, bits: np.ndarray) -> np.ndarray:
        return elems * (self.padded[bits] * self._ms_per_bit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PROFILE_SCHEMA_VERSION, "kind": self.kind, "name": self.name,
            "description": self.description, "runtime": self.runtime, "brick_bits": self.brick_bits,
            "supported_bits": list(self.supported_bits), "bricks": self.bricks,
            "frequency_mhz": self.frequency_mhz, "memory_gbps": self.memory_gbps,
            "layer_overhead_us": self.layer_overhead_us, "network_overhead_us": self.network_overhead_us,
            "scales": self.scales, "requant_ns": self.requant_ns, **self.nm_entry(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> BitSerialProfile:
        r = Reader(data, source)
        brick = int(r.number("brick_bits"))
        supported = r.bits_list("supported_bits")
        if any(b % brick for b in supported):
            raise r.fail("supported_bits", f"multiples of brick_bits={brick}", list(supported))
        return cls(
            name=r.text("name"), brick_bits=brick, supported_bits=supported, bricks=int(r.number("bricks")),
            frequency_mhz=r.number("frequency_mhz"), memory_gbps=r.number("memory_gbps"),
            layer_overhead_us=r.number("layer_overhead_us", positive=False, default=0.0),
            network_overhead_us=r.number("network_overhead_us", positive=False, default=0.0),
            description=str(data.get("description", "")), runtime=str(data.get("runtime", HYPOTHETICAL)),
            scales=_scales(r), requant_ns=r.number("requant_ns", positive=False, default=0.0),
            nm_speedup=r.nm_speedup(),
        )


SCALE_KINDS = ("any", "power_of_two")


def _scales(r: Reader) -> str:
    value = r.text("scales", "any")
    if value not in SCALE_KINDS:
        raise r.fail("scales", f"one of {SCALE_KINDS}", value)
    return value


@dataclass(frozen=True)
class RooflineProfile(HardwareProfile):
    """An analytic roofline of a general-purpose CPU.

    A MAC runs in the narrowest precision class whose ``max_bits`` holds both its weight and
    its activation bits (e.g. int8 kernels for <= 8 bits, float32 above 16) at that class's
    throughput. Weights and activations travel in the container width of their class.
    Each layer takes the longer of compute and memory time, plus ``layer_overhead_us``; the
    network adds ``network_overhead_us``.
    """

    kind: ClassVar[str] = "roofline"
    name: str
    classes: tuple[tuple[int, float], ...]  # (max_bits, GMAC/s), widening
    memory_gbps: float
    layer_overhead_us: float = 0.0
    network_overhead_us: float = 0.0
    description: str = ""
    runtime: str = HYPOTHETICAL
    nm_speedup: tuple[tuple[str, float], ...] = ()  # N:M pattern -> MAC speedup (HardwareProfile)

    @cached_property
    def class_of_bits(self) -> np.ndarray:
        """Index of the class of every bit-width 0..32 (0 bits -> class 0, masked anyway)."""
        tops = [m for m, _ in self.classes]
        return np.array([next(i for i, m in enumerate(tops) if m >= max(b, 1)) for b in BITS])

    @property
    def network_overhead_ms(self) -> float:
        return self.network_overhead_us * 1e-3

    @cached_property
    def _container(self) -> np.ndarray:
        container = np.array([self.classes[c][0] for c in self.class_of_bits], dtype=float)
        container[0] = 0.0
        return container

    @cached_property
    def _class_luts(self) -> np.ndarray:
        """``[33, K]``: 1 where a weight bit-width falls in class k (0 for pruned)."""
        return np.stack([(self.class_of_bits == k) & (BITS > 0) for k in range(len(self.classes))], axis=1) * 1.0

    @cached_property
    def _pair_inv_ms(self) -> np.ndarray:
        """``[K_act, K_weight]`` ms per MAC when the activation and the weight fall in these classes."""
        k = np.arange(len(self.classes))
        return self._inv_ms[np.maximum(k[:, None], k[None, :])]

    @cached_property
    def _inv_ms(self) -> np.ndarray:
        return np.array([1.0 / (g * 1e6) for _, g in self.classes])

    def layer_terms(self, batch: LayerBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        container = self._container
        counts = batch.bit_histogram @ self._class_luts  # [n, L, K] kept channels per weight class
        per_mac = self._pair_inv_ms[self.class_of_bits[batch.act_bits]]  # [n, L, K]
        compute = (counts * per_mac).sum(axis=2) * batch.macs_per_channel
        traffic = batch.channel_sum(container) * batch.weights_per_out + batch.in_elems * container[batch.act_bits]
        return self.sparse_compute(compute, batch), traffic * self._ms_per_bit, self.layer_overhead_us * 1e-3 * batch.alive

    @cached_property
    def _ms_per_bit(self) -> float:
        return 1.0 / (8.0 * self.memory_gbps * 1e6)

    def output_ms(self, elems: np.ndarray, bits: np.ndarray) -> np.ndarray:
        return elems * (self._container[bits] * self._ms_per_bit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PROFILE_SCHEMA_VERSION, "kind": self.kind, "name": self.name,
            "description": self.description, "runtime": self.runtime,
            "classes": [{"max_bits": m, "gmacs": g} for m, g in self.classes],
            "memory_gbps": self.memory_gbps, "layer_overhead_us": self.layer_overhead_us,
            "network_overhead_us": self.network_overhead_us, **self.nm_entry(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> RooflineProfile:
        r = Reader(data, source)
        raw = data.get("classes")
        if not isinstance(raw, list) or not raw:
            raise r.fail("classes", "a non-empty list of {max_bits, gmacs}", raw)
        classes = []
        for i, item in enumerate(raw):
            c = Reader(item, f"{source} classes[{i}]")
            top = int(c.number("max_bits"))
            if not 1 <= top <= 32:
                raise c.fail("max_bits", "a bit-width in 1..32", top)
            classes.append((top, c.number("gmacs")))
        classes.sort()
        if classes[-1][0] != 32:
            raise r.fail("classes", "a list whose widest class has max_bits 32 (float)", raw)
        gmacs = [g for _, g in classes]
        if any(a < b for a, b in zip(gmacs, gmacs[1:], strict=False)):
            raise r.fail("classes", "throughputs that do not grow with max_bits (narrower is never slower)", raw)
        return cls(
            name=r.text("name"), classes=tuple(classes), memory_gbps=r.number("memory_gbps"),
            layer_overhead_us=r.number("layer_overhead_us", positive=False, default=0.0),
            network_overhead_us=r.number("network_overhead_us", positive=False, default=0.0),
            description=str(data.get("description", "")), runtime=str(data.get("runtime", HYPOTHETICAL)),
            nm_speedup=r.nm_speedup(),
        )
