"""Latency tables measured on this machine (written by :mod:`automl.export.torch_profile`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from automl.cost.batch import LayerBatch
from automl.cost.hardware import BITS, PROFILE_SCHEMA_VERSION, HardwareProfile, Reader
from automl.errors import ProfileError

FLOAT_BITS_ = 32


@dataclass(frozen=True)
class MeasuredLayer:
    """Timings of one layer at kept input/output width fractions (rows: input, cols: output).

    ``fused_ms`` (ONNX Runtime only) times the layer when its output is requantized by its
    only ``consumer`` layer, a pattern the runtime fuses into one int8 kernel; ``qin_ms``
    (ONNX Runtime only) with a quantized input but float weights (a layer with a channel
    above 8 bits).
    """

    name: str
    in_features: int
    out_channels: int
    float_ms: tuple[tuple[float, ...], ...]
    int8_ms: tuple[tuple[float, ...], ...]
    fused_ms: tuple[tuple[float, ...], ...] | None = None
    consumer: str = ""
    qin_ms: tuple[tuple[float, ...], ...] | None = None


def interpolate(tables: np.ndarray, widths: Sequence[float], fi: np.ndarray, fo: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of per-layer tables ``[L, W, W]`` at kept fractions ``[n, L]``.

    Fractions below the smallest width are clamped to it (a conservative estimate).
    """
    w = np.asarray(widths, dtype=float)

    def locate(frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.clip(frac, w[0], 1.0)
        i = np.clip(np.searchsorted(w, f, side="right") - 1, 0, len(w) - 2)
        return i, np.clip((f - w[i]) / (w[i + 1] - w[i]), 0.0, 1.0)

    i, ti = locate(fi)
    j, tj = locate(fo)
    lidx = np.arange(tables.shape[0])[None, :]
    a = tables[lidx, i, j] * (1 - tj) + tables[lidx, i, j + 1] * tj
    b = tables[lidx, i + 1, j] * (1 - tj) + tables[lidx, i + 1, j + 1] * tj
    return a * (1 - ti) + b * ti


def monotone_tables(
    layers: Sequence[MeasuredLayer], names: Sequence[str], cap: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(float, int8)`` tables ``[L, W, W]`` of ``names``, non-decreasing in both widths;
    with ``cap`` int8 entries are capped by float ones (a runtime that picks the faster kernel)."""
    mine = {m.name: m for m in layers}
    fl = np.stack([_monotone(np.asarray(mine[n].float_ms, dtype=float)) for n in names])
    q8 = np.stack([_monotone(np.asarray(mine[n].int8_ms, dtype=float)) for n in names])
    return fl, np.minimum(q8, fl) if cap else q8


def _monotone(table: np.ndarray) -> np.ndarray:
    return np.maximum.accumulate(np.maximum.accumulate(table, axis=0), axis=1)


@dataclass(frozen=True)
class MeasuredProfile(HardwareProfile):
    """Latency interpolated from per-layer timings measured on this machine.

    ``widths`` are the kept fractions at which every layer was timed, for input features
    and output channels. A layer's latency is the bilinear interpolation of its table at
    its kept fractions (clamped to the smallest measured width; 0 when no output channel is
    kept). A layer runs in int8 when all its kept channels have at most
    ``int8_max_bits`` weight bits and its input at most that many activation bits, and a
    runtime then picks the faster of its int8 and float kernels; otherwise it runs in
    float (``int8_capped``; a runtime such as ONNX Runtime that runs the file's QDQ nodes as
    written is priced uncapped, so there fewer bits can cost more). Tables are made non-decreasing in both widths on load so that pruning never adds
    latency (timing noise otherwise breaks monotonicity).

    What the whole network takes beyond its layers (normalisation, activations, additions,
    pooling, dispatch) is ``overhead_ms`` (YAML ``network_overhead_ms``) plus
    ``overhead_us_per_kelem`` microseconds per thousand output activation elements of the
    layers, since those elementwise operations shrink with pruning too.

    ``runtime`` says what executes the timed kernels (``torch`` or ``onnxruntime``),
    ``batch`` how many samples one timed run holds (latencies are per run), and
    ``stated_error`` the largest relative error measured on whole networks when the
    profile was made (0 when not measured).

    ``nm_speedup`` (see :class:`~automl.cost.hardware.HardwareProfile`) divides an N:M
    layer's interpolated time, all of which is its compute term here; no profile that
    automl-mpq measures declares it (the measured kernels are dense).
    """

    kind: ClassVar[str] = "measured"
    name: str
    widths: tuple[float, ...]
    layers: tuple[MeasuredLayer, ...]
    overhead_ms: float = 0.0
    overhead_us_per_kelem: float = 0.0
    engine: str = ""
    threads: int = 1
    int8_max_bits: int = 8
    description: str = ""
    runtime: str = "torch"
    batch: int = 1
    int8_capped: bool = True
    stated_error: float = 0.0
    nm_speedup: tuple[tuple[str, float], ...] = ()  # N:M pattern -> speedup of the measured layer time (HardwareProfile)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def network_overhead_ms(self) -> float:
        return self.overhead_ms

    def check(self, names: Sequence[str], in_features: Sequence[int], out_channels: Sequence[int]) -> None:
        mine = {m.name: m for m in self.layers}
        missing = [n for n in names if n not in mine]
        if missing:
            raise ProfileError(
                f"measured profile {self.name!r} has no timings for layers {missing}: it was measured on another "
                "model. Measure this model with `automl profile-hardware` (automl.export.torch_profile.profile_hardware)."
            )
        for n, fin, cout in zip(names, in_features, out_channels, strict=True):
            m = mine[n]
            if (m.in_features, m.out_channels) != (fin, cout):
                raise ProfileError(
                    f"measured profile {self.name!r}: layer {n!r} was timed with {m.in_features} inputs and "
                    f"{m.out_channels} outputs, the model has {fin} and {cout}. Re-measure this model."
                )

    @cached_property
    def _wide_lut(self) -> np.ndarray:
        return (BITS > self.int8_max_bits).astype(float)

    def _tables(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        if names not in self._cache:
            self._cache[names] = monotone_tables(self.layers, names, self.int8_capped)
        return self._cache[names]

    def _optional(self, names: tuple[str, ...], attr: str) -> np.ndarray:
        """The optional table ``attr`` of every layer ``[L, W, W]``, monotone; NaN where absent."""
        key = (attr, names)
        if key not in self._cache:
            mine = {m.name: m for m in self.layers}
            size = len(self.widths)
            self._cache[key] = np.stack([
                np.full((size, size), np.nan) if getattr(mine[n], attr) is None
                else _monotone(np.asarray(getattr(mine[n], attr), dtype=float)) for n in names
            ])
        return self._cache[key]

    def _fused(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Fused tables ``[L, W, W]`` (NaN where none) and each layer's consumer index (-1: none)."""
        key = ("fused", names)
        if key not in self._cache:
            mine = {m.name: m for m in self.layers}
            size = len(self.widths)
            tables = [np.full((size, size), np.nan) if mine[n].fused_ms is None else _monotone(np.asarray(mine[n].fused_ms))
                      for n in names]
            index = [names.index(mine[n].consumer) if mine[n].consumer in names else -1 for n in names]
            self._cache[key] = (np.stack(tables), np.array(index))
        return self._cache[key]

    def layer_terms(self, batch: LayerBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fl, q8 = self._tables(batch.names)
        fi, fo = batch.kept_in / batch.in_total, batch.kept_out / batch.out_total
        quant_in = batch.act_bits <= self.int8_max_bits
        if self.runtime == "onnxruntime":
            # What the exported file runs: a quantized input costs its QDQ whatever the weights,
            # and a layer whose only consumer requantizes its output runs as one fused int8 kernel.
            compute = np.where(quant_in, interpolate(q8, self.widths, fi, fo), interpolate(fl, self.widths, fi, fo))
            qin = self._optional(batch.names, "qin_ms")
            if not np.isnan(qin).all():
                wide = batch.channel_sum(self._wide_lut) > 0
                use = quant_in & wide & ~np.isnan(qin[:, 0, 0])[None, :]
                compute = np.where(use, interpolate(np.nan_to_num(qin), self.widths, fi, fo), compute)
            fz, consumer = self._fused(batch.names)
            has = consumer >= 0
            if has.any():
                cons_act = np.where(has[None, :], batch.act_bits[:, np.maximum(consumer, 0)], FLOAT_BITS_)
                fused = interpolate(np.nan_to_num(fz), self.widths, fi, fo)
                compute = np.where(has[None, :] & (cons_act <= self.int8_max_bits), fused, compute)
            compute = self.sparse_compute(compute * batch.alive, batch)
            return compute, np.zeros(compute.shape), batch.out_elems * (self.overhead_us_per_kelem * 1e-6)
        wide = batch.channel_sum(self._wide_lut)
        int8 = (wide == 0) & quant_in
        compute = np.where(int8, interpolate(q8, self.widths, fi, fo), interpolate(fl, self.widths, fi, fo))
        compute = self.sparse_compute(compute * batch.alive, batch)
        overhead = batch.out_elems * (self.overhead_us_per_kelem * 1e-6)
        return compute, np.zeros(compute.shape), overhead

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PROFILE_SCHEMA_VERSION, "kind": self.kind, "name": self.name,
            "description": self.description, "engine": self.engine, "threads": self.threads,
            "int8_max_bits": self.int8_max_bits, "runtime": self.runtime, "batch": self.batch,
            "int8_capped": self.int8_capped, "stated_error": self.stated_error, **self.nm_entry(),
            "widths": list(self.widths),
            "network_overhead_ms": self.overhead_ms, "overhead_us_per_kelem": self.overhead_us_per_kelem,
            "layers": {
                m.name: {
                    "in_features": m.in_features, "out_channels": m.out_channels,
                    "float_ms": [list(r) for r in m.float_ms], "int8_ms": [list(r) for r in m.int8_ms],
                    **({} if m.fused_ms is None else {"fused_ms": [list(r) for r in m.fused_ms], "consumer": m.consumer}),
                    **({} if m.qin_ms is None else {"qin_ms": [list(r) for r in m.qin_ms]}),
                }
                for m in self.layers
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> MeasuredProfile:
        r = Reader(data, source)
        widths = data.get("widths")
        if (
            not isinstance(widths, list) or len(widths) < 2
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 1 for x in widths)
            or sorted(set(widths)) != list(widths) or widths[-1] != 1
        ):
            raise r.fail("widths", "an increasing list of at least two fractions in (0, 1] ending at 1.0", widths)
        raw = data.get("layers")
        if not isinstance(raw, Mapping) or not raw:
            raise r.fail("layers", "a mapping of layer name -> {in_features, out_channels, float_ms, int8_ms}", raw)
        layers = []
        for lname, item in raw.items():
            lr = Reader(item, f"{source} layers.{lname}")
            tables = [_table(lr, key, len(widths)) for key in ("float_ms", "int8_ms")]
            fused = _table(lr, "fused_ms", len(widths)) if "fused_ms" in item else None
            qin = _table(lr, "qin_ms", len(widths)) if "qin_ms" in item else None
            layers.append(MeasuredLayer(str(lname), int(lr.number("in_features")), int(lr.number("out_channels")),
                                        *tables, fused, str(item.get("consumer", "")), qin))
        return cls(
            name=r.text("name"), widths=tuple(float(x) for x in widths), layers=tuple(layers),
            overhead_ms=r.number("network_overhead_ms", positive=False, default=0.0),
            overhead_us_per_kelem=r.number("overhead_us_per_kelem", positive=False, default=0.0),
            engine=str(data.get("engine", "")), threads=int(r.number("threads", default=1)),
            int8_max_bits=int(r.number("int8_max_bits", default=8)), description=str(data.get("description", "")),
            runtime=r.text("runtime", default="torch"), batch=int(r.number("batch", default=1)),
            int8_capped=bool(data.get("int8_capped", True)),
            stated_error=r.number("stated_error", positive=False, default=0.0), nm_speedup=r.nm_speedup(),
        )


def _table(r: Reader, key: str, size: int) -> tuple[tuple[float, ...], ...]:
    value = r.data.get(key)
    ok = isinstance(value, list) and len(value) == size and all(
        isinstance(row, list) and len(row) == size
        and all(not isinstance(x, bool) and isinstance(x, (int, float)) and x >= 0 for x in row)
        for row in value
    )
    if not ok:
        raise r.fail(key, f"a {size}x{size} table of milliseconds >= 0 (rows: input widths, columns: output widths)", value)
    return tuple(tuple(float(x) for x in row) for row in value)
