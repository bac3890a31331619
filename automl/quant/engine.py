"""The quantize-and-prune engine: a policy becomes a gather, not a re-quantization.

At construction the float model is copied, BatchNorm is folded into the convolution
before it, and every quantizable layer is wrapped in a :class:`QuantLayer` holding its
fake-quantized weights for every bit-width the search space allows. Activation ranges are
calibrated once. :meth:`QuantEngine.apply` then only gathers per-channel weight rows and
looks up activation scales, so trying a new policy costs a few index operations.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from automl.errors import PolicyError
from automl.quant.device import device_generator, model_device, resolve_device, to_device
from automl.quant.fake import (
    FLOAT_BITS,
    act_qparams,
    lsq_quantize,
    quantize_act_ste,
    quantize_weight,
    quantize_weight_ste,
    weight_qmax,
    weight_scales,
)
from automl.quant.nm import nm_mask, transposable_mask
from search_spaces.network import ModelAnalysis
from search_spaces.policy import Policy, parse_nm
from search_spaces.space import SearchSpace

_SAMPLE_PER_BATCH = 16384


def fold_batchnorm(model: nn.Module, analysis: ModelAnalysis) -> tuple[nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Return an eval-mode copy of ``model`` with BatchNorm folded into the preceding conv.

    Also returns, per folded layer, the BatchNorm's ``(gamma, beta)``: the output
    statistics that BatchNorm re-estimation (fidelity 2) restores.
    """
    folded = copy.deepcopy(model).eval()
    affine: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in analysis.layers:
        if layer.folded_bn is None:
            continue
        conv = folded.get_submodule(layer.name)
        bn = folded.get_submodule(layer.folded_bn)
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        with torch.no_grad():
            std = torch.sqrt(bn.running_var + bn.eps)
            gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
            beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
            factor = gamma / std
            w = conv.weight * factor.view(-1, *([1] * (conv.weight.dim() - 1)))
            b0 = conv.bias if conv.bias is not None else torch.zeros_like(std)
            b = (b0 - bn.running_mean) * factor + beta
            conv.weight = nn.Parameter(w.clone())
            conv.bias = nn.Parameter(b.clone())
        affine[layer.name] = (gamma.detach().clone(), beta.detach().clone())
        folded.set_submodule(layer.folded_bn, nn.Identity())
    return folded, affine



def channel_stats(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (dim 1) mean and unbiased standard deviation of ``out``.

    One pass of sums around a per-channel shift (the first sample's channel mean), about
    twice as fast as ``Tensor.mean`` plus ``Tensor.std`` over the strided dimensions, and
    within ~1e-6 relative of them: the shift keeps the sum of squares from cancelling.
    """
    dims = tuple(d for d in range(out.dim()) if d != 1)
    n = out.numel() // out.shape[1]
    view = (1, -1) + (1,) * (out.dim() - 2)
    shift = out[:1].mean(dim=dims).view(view) if out.dim() > 2 else out[:1].reshape(1, -1)
    d = out - shift
    s1 = d.sum(dim=dims)
    s2 = (d * d).sum(dim=dims)
    m = s1 / n
    var = (s2 - n * m * m) / max(n - 1, 1)
    return m + shift.flatten(), var.clamp_min(0.0).sqrt()

class QuantLayer(nn.Module):
    """A Conv1d/Conv2d/Linear with fake-quantized input activations and weights.

    In the default mode the layer runs with the weight tensor last set by the engine
    (gathered from the precomputed bank). With :meth:`enable_qat` its float weights become
    trainable and are fake-quantized on every forward with a straight-through gradient.

    With N:M patterns (``nm_patterns`` beyond dense ``""``) the layer also holds, per pattern,
    the fixed mask of the float weights and their masked-then-quantized banks: the mask is
    applied before quantization, so scales are fitted to the kept weights.
    """

    def __init__(
        self, layer: nn.Module, bank_bits: Sequence[int], method: str, power_of_two: bool,
        nm_patterns: Sequence[str] = ("",), name: str = "layer",
    ) -> None:
        super().__init__()
        self.op = layer  # keeps conv hyper-parameters; its own weight is not used in forward
        w = layer.weight.detach().clone()
        b = layer.bias.detach().clone() if layer.bias is not None else w.new_zeros(w.shape[0])
        self.bank_bits = tuple(int(x) for x in bank_bits)
        self.register_buffer("w_float", w)
        self.register_buffer("b_float", b)
        bank, scale_bank = _banks(w, self.bank_bits, method, power_of_two)
        self.register_buffer("bank", bank)  # [n_bits, C, ...]
        self.register_buffer("scale_bank", scale_bank)  # [n_bits, C]
        self.nm = ""
        self.nm_keep: torch.Tensor | None = None  # 0/1 float mask of the current N:M pattern
        self._nm_banks: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for pat in nm_patterns:
            if pat:
                n, m, transposable = parse_nm(pat)
                keep = (transposable_mask if transposable else nm_mask)(w, n, m, name).to(w.dtype)
                self._nm_banks[pat] = (keep, *_banks(w * keep, self.bank_bits, method, power_of_two))
        self.register_buffer("weight", w.clone())
        self.register_buffer("bias", b.clone())
        self.register_buffer("bits", torch.full((w.shape[0],), FLOAT_BITS, device=w.device))
        self.bits_host: tuple[int, ...] = (FLOAT_BITS,) * w.shape[0]  # the same bits, read without a device sync
        self.act: tuple[float, int, int] | None = None
        self.correction: tuple[torch.Tensor, torch.Tensor] | None = None
        self.qat = False
        self._baked: tuple[int, ...] | None = None  # the trained weights last written for inference (_inference_ready)
        self.qat_start: tuple[torch.Tensor, torch.Tensor] | None = None  # (w, b) set by AdaQuant for this policy
        self.register_buffer("_arange", torch.arange(w.shape[0], device=w.device), persistent=False)
        self._lookup = {b: i for i, b in enumerate(self.bank_bits)}
        # Physically skipped channels at inference (see _fast_weights): the indices of the kept
        # output channels and of the input channels that are not known to be zero (None = all).
        self._sliceable = isinstance(layer, nn.Linear) or getattr(layer, "groups", 1) == 1  # not grouped/depthwise
        self.keep_out: torch.Tensor | None = None
        self.keep_in: torch.Tensor | None = None
        self._fast: tuple[object, ...] | None = None
        self.channels_last = False  # inference weights in channels-last order (EvalConfig.channels_last)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # ``.to(device)`` / ``.cpu()`` move parameters and buffers; the plain tensor attributes of the
        # current policy (scales, masks, corrections, N:M banks) must follow, or a moved layer mixes devices.
        super()._apply(fn, recurse)

        def move(v: object) -> object:
            if isinstance(v, torch.Tensor):
                return fn(v)
            if isinstance(v, tuple):
                return tuple(move(x) for x in v)
            return v

        for attr in ("_scale", "nm_keep", "keep_out", "keep_in", "correction", "qat_start"):
            if attr in self.__dict__:
                self.__dict__[attr] = move(self.__dict__[attr])
        self._nm_banks = {k: move(v) for k, v in self._nm_banks.items()}  # type: ignore[misc]
        self._fast = None
        return self

    def set_bits(self, bits: Sequence[int], nm: str = "") -> None:
        host = tuple(int(b) for b in bits)
        device = self.w_float.device
        try:
            idx = torch.tensor([self._lookup[b] for b in host], device=device)
        except KeyError as exc:
            raise PolicyError(f"bit-width {exc.args[0]} has no precomputed weights; allowed are {self.bank_bits}") from exc
        if nm and nm not in self._nm_banks:
            raise PolicyError(f"N:M pattern {nm!r} has no precomputed weights; allowed are {['', *self._nm_banks]}")
        self.nm = nm
        self.nm_keep, bank, scale_bank = self._nm_banks[nm] if nm else (None, self.bank, self.scale_bank)
        self.bits = torch.tensor(host, device=device)
        self.bits_host = host
        self.weight = bank[idx, self._arange]
        self.bias = self.b_float * (self.bits > 0)
        self._scale = scale_bank[idx, self._arange]
        self.qat_start = None
        pruned = host.count(0)
        # Below ~1/8 of the channels the scatter back into the full width costs more than it saves.
        # The kept indices come from the host copy of the bits: no wait for the device.
        keep = self._sliceable and pruned and pruned * 8 >= len(host)
        self.keep_out = torch.tensor([i for i, b in enumerate(host) if b > 0], device=device) if keep else None

    def set_inputs(self, keep: torch.Tensor | None) -> None:
        """Input channels (features of a Linear) that can be non-zero; the others are skipped at inference.

        The engine derives them from the policy: a channel pruned by every producer of a prunable
        group is exactly zero at every consumer (the analysis only lets zero-preserving operations
        sit between them), so dropping it from the reduction changes nothing but the cost.
        """
        self.keep_in = keep if self._sliceable else None

    def _fast_weights(self, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference weights and bias: kept rows, kept input columns, activation scale folded in.

        Recomputed when the policy, AdaQuant (which assigns new tensors) or the activation scale
        changed since the last call, so a gathered policy pays for slicing once.
        """
        c = self._fast
        if c is None or c[0] is not self.weight or c[1] is not self.bias or c[2] != scale \
                or c[3] is not self.keep_in or c[4] is not self.keep_out:
            w, b = self.weight, self.bias
            if self.keep_out is not None:
                w, b = w.index_select(0, self.keep_out), b.index_select(0, self.keep_out)
            if self.keep_in is not None:
                w = w.index_select(1, self.keep_in)
            w = w * scale if scale != 1.0 else w.contiguous()
            if self.channels_last and w.dim() == 4:
                w = w.contiguous(memory_format=torch.channels_last)
            self._fast = c = (self.weight, self.bias, scale, self.keep_in, self.keep_out, w, b)
        return c[5], c[6]  # type: ignore[return-value]

    def _sliced_run(self, x: torch.Tensor, scale: float, act: tuple[int, int] | None) -> torch.Tensor:
        """Inference of the current policy over the live channels only, scattered back to full width."""
        w, b = self._fast_weights(scale)
        dim = x.dim() - 1 if isinstance(self.op, nn.Linear) else 1
        if act is not None:
            qmin, qmax = act
            # index_select allocates the copy that the out-of-place multiply would have
            q = x.index_select(dim, self.keep_in) if self.keep_in is not None else x.mul(1.0 / scale)
            if self.keep_in is not None:
                q.mul_(1.0 / scale)
            x = q.round_().clamp_(qmin, qmax)
        elif self.keep_in is not None:
            x = x.index_select(dim, self.keep_in)
        out = self._run(x, w, b)
        if self.keep_out is not None:
            shape = list(out.shape)
            shape[dim] = self.w_float.shape[0]
            out = out.new_zeros(shape).index_copy_(dim, self.keep_out, out)
        return out

    def masked(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` with the current N:M mask applied (unchanged when the layer is dense)."""
        return w if self.nm_keep is None else w * self.nm_keep

    def enable_qat(self, lsq: bool = False) -> None:
        """Make the float weights trainable, quantized on the fly with the current bits.

        With ``lsq`` the per-channel weight scales and the activation scale are trainable
        too (:func:`~automl.quant.fake.lsq_quantize`); :meth:`freeze_scales` writes them back.
        """
        live = (self.bits > 0).to(self.w_float.dtype)
        w, b = self.qat_start or (self.w_float, self.b_float)
        # masked weights start at zero and, masked again in every forward, get no gradient: they stay zero
        self.w_param = nn.Parameter(self.masked(w * live.view(-1, *([1] * (self.w_float.dim() - 1)))))
        self.b_param = nn.Parameter(b * live)
        self.qat = True
        self._baked = None
        self.w_scale = nn.Parameter(self._scale.clone()) if lsq else None
        self.a_scale = (nn.Parameter(torch.tensor(float(self.act[0]), device=self.w_float.device))
                        if lsq and self.act is not None else None)

    def freeze_scales(self) -> None:
        """Make learned LSQ scales the layer's fixed scales (what inference and export use)."""
        if getattr(self, "w_scale", None) is not None:
            self._scale = self.w_scale.detach().abs().clamp_min(1e-12)
            self.w_scale = None
        if getattr(self, "a_scale", None) is not None and self.act is not None:
            self.act = (float(self.a_scale.detach().abs().clamp_min(1e-12)), self.act[1], self.act[2])
            self.a_scale = None

    def _qat_weight(self) -> torch.Tensor:
        if getattr(self, "w_scale", None) is None:
            return self.masked(quantize_weight_ste(self.w_param, self.bits, self._scale))
        shape = (-1,) + (1,) * (self.w_param.dim() - 1)
        qmax = weight_qmax(self.bits).view(shape)
        live = (self.bits > 0).to(self.w_param.dtype).view(shape)
        factor = 1.0 / float(self.w_param[0].numel() * max(float(qmax.max()), 1.0)) ** 0.5
        q = lsq_quantize(self.w_param, self.w_scale.abs().clamp_min(1e-12).view(shape), -qmax, qmax, factor)
        return self.masked(torch.where((self.bits >= FLOAT_BITS).view(shape), self.w_param, q) * live)

    def _run(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        op = self.op
        if isinstance(op, nn.Linear):
            return F.linear(x, w, b)
        if isinstance(op, nn.Conv2d):
            return F.conv2d(x, w, b, op.stride, op.padding, op.dilation, op.groups)
        return F.conv1d(x, w, b, op.stride, op.padding, op.dilation, op.groups)

    def _inference_ready(self) -> bool:
        """Whether a forward without gradients can take the inference path.

        A fine-tuned layer (QAT, fixed scales) gets its trained weights quantized exactly as its
        training forward quantizes them, written to ``weight`` / ``bias`` when they changed. So
        a fine-tuned model is scored by the arithmetic a policy is scored by in the search
        (``conv(q, s * w)``, pruned channels skipped), not by the training formulation
        (``conv(s * q, w)``), whose rounding differs: untrained, it now scores what the search
        scored, bit for bit (``tests/test_finetune.py``). Learned (LSQ) scales keep the training path.
        """
        if not self.qat:
            return True
        if getattr(self, "w_scale", None) is not None or getattr(self, "a_scale", None) is not None:
            return False
        key = (id(self.w_param), self.w_param._version, id(self.b_param), self.b_param._version)
        if self._baked != key:
            with torch.no_grad():
                self.weight = self._qat_weight()
                self.bias = self.b_param * (self.bits > 0).to(self.b_param.dtype)
            self._baked = key
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and self._inference_ready():
            if self.act is None:
                return self._finish(self._sliced_run(x, 1.0, None))
            # Inference: the layer is linear in its input, so the activation scale moves onto the
            # (small) weight: conv(s * q, w) = conv(q, s * w). One allocation and three in-place
            # passes over the activation instead of four; the fused fake-quantize op is slower on CPU.
            scale, qmin, qmax = self.act
            return self._finish(self._sliced_run(x, scale, (qmin, qmax)))
        if self.act is not None:
            scale, qmin, qmax = self.act
            a_scale = getattr(self, "a_scale", None)
            if a_scale is not None:  # learnable step size (LSQ fine-tune)
                x = lsq_quantize(x, a_scale.abs().clamp_min(1e-12), qmin, qmax, 1.0 / (x[0].numel() * qmax) ** 0.5)
            elif torch.is_grad_enabled():  # straight-through gradient for QAT
                x = quantize_act_ste(x, scale, qmin, qmax)
            else:
                x = x.mul(1.0 / scale).round_().clamp_(qmin, qmax).mul_(scale)
        if self.qat:
            live = (self.bits > 0).to(x.dtype)
            out = self._run(x, self._qat_weight(), self.b_param * live)
        else:
            out = self._run(x, self.weight, self.bias)
        return self._finish(out)

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        if self.correction is not None:
            a, c = self.correction
            shape = (1, -1) + (1,) * (out.dim() - 2) if out.dim() > 2 else (1, -1)
            out = out.mul_(a.view(shape)).add_(c.view(shape)) if not torch.is_grad_enabled() else out * a.view(shape) + c.view(shape)
        return out


def _banks(w: torch.Tensor, bank_bits: Sequence[int], method: str, power_of_two: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake-quantized copies of ``w`` and their per-channel scales, one per bit-width."""
    banks, scales = [], []
    for bits in bank_bits:
        bt = torch.full((w.shape[0],), bits, device=w.device)
        if bits == 0:
            banks.append(torch.zeros_like(w))
            scales.append(w.new_ones(w.shape[0]))
        elif bits >= FLOAT_BITS:
            banks.append(w)
            scales.append(w.new_ones(w.shape[0]))
        else:
            banks.append(quantize_weight(w, bt, method, power_of_two))
            scales.append(weight_scales(w, bt, method, power_of_two))
    return torch.stack(banks), torch.stack(scales)


class QuantEngine:
    """Applies policies to a BN-folded, fake-quantized copy of a float model.

    Args:
        model: the trained float network (never modified).
        analysis: its analysis (layer names, folded BatchNorms).
        space: the search space (which bit-widths to precompute per layer).
        calib_batches: input batches for activation range calibration (moved to ``device``).
        weight_method: ``"mse"`` or ``"max"`` per-channel weight clipping.
        act_method: ``"mse"``, ``"percentile"`` or ``"minmax"`` activation clipping.
        power_of_two: round every scale up to a power of two (shift-only hardware).
        device: where the engine's copy of the model, its weight banks and every tensor it makes
            live (a name for :func:`~automl.quant.device.resolve_device`); ``None``: the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        analysis: ModelAnalysis,
        space: SearchSpace,
        calib_batches: Iterable[torch.Tensor],
        *,
        weight_method: str = "mse",
        act_method: str = "mse",
        power_of_two: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        self.analysis = analysis
        self.space = space
        self.power_of_two = power_of_two
        self.device = model_device(model) if device is None else resolve_device(device)
        self.folded, self.bn_affine = fold_batchnorm(model, analysis)
        self.folded.to(self.device)  # the copy moves; the user's model stays where it is
        self.bn_affine = {k: (g.to(self.device), b.to(self.device)) for k, (g, b) in self.bn_affine.items()}
        self.qmodel = copy.deepcopy(self.folded).eval()
        self.layers: dict[str, QuantLayer] = {}
        for ls in space.layers:
            bank_bits = sorted(set(ls.weight_bits) | {FLOAT_BITS})
            ql = QuantLayer(
                self.qmodel.get_submodule(ls.name), bank_bits, weight_method, power_of_two, ls.nm_patterns, ls.name
            )
            self.qmodel.set_submodule(ls.name, ql)
            self.layers[ls.name] = ql
        self.act_params = self._calibrate([to_device(x, self.device, "a calibration batch") for x in calib_batches],
                                          act_method, power_of_two)
        self.current: Policy | None = None
        # A BatchNorm that could not be folded (e.g. after an addition) would turn a pruned,
        # all-zero channel into its shift; masking its output keeps pruned channels at zero,
        # as in the physically pruned network.
        folded = {layer.folded_bn for layer in analysis.layers}
        self._masks: dict[int, torch.Tensor] = {}
        self._group_of_layer = {layer.name: layer.out_group for layer in analysis.layers}
        self._group_of_follower: dict[str, int] = {}
        for group in analysis.groups:
            for name in group.followers:
                if name not in folded:
                    self.qmodel.get_submodule(name).register_forward_hook(self._mask_hook(group.gid))
                    self._group_of_follower[name] = group.gid
        # Which input channels of each layer a policy can zero: segments of prunable groups whose
        # producers are all quantized layers (a pruned channel of such a group is zero at its consumers).
        producers = {g.gid: g.producers for g in analysis.groups
                     if g.prunable and g.producers and all(p in self.layers for p in g.producers)}
        self._in_segments: dict[str, tuple[tuple[tuple[str, ...] | None, int, int], ...]] = {}
        for layer in analysis.layers:
            if layer.name in self.layers and any(seg.group in producers for seg in layer.in_segments):
                self._in_segments[layer.name] = tuple(
                    (producers.get(seg.group), seg.channels, seg.features_per_channel) for seg in layer.in_segments)

    def _mask_hook(self, gid: int):
        def fn(_mod: nn.Module, _args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            mask = self._masks.get(gid)
            if mask is None:
                return out
            return out * mask.view((1, -1) + (1,) * (out.dim() - 2))

        return fn

    def _calibrate(
        self, batches: list[torch.Tensor], method: str, power_of_two: bool
    ) -> dict[str, dict[int, tuple[float, int, int]]]:
        if not batches:
            raise PolicyError("activation calibration needs at least one calibration batch")
        samples: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        gen = device_generator(self.device, 0)

        def hook(name: str):
            def fn(_mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                x = args[0].detach().flatten()
                if x.numel() > _SAMPLE_PER_BATCH:
                    x = x[torch.randint(x.numel(), (_SAMPLE_PER_BATCH,), generator=gen, device=x.device)]
                samples[name].append(x)

            return fn

        handles = [ql.register_forward_pre_hook(hook(n)) for n, ql in self.layers.items()]
        try:
            with torch.inference_mode():
                for xb in batches:
                    self.qmodel(xb)
        finally:
            for h in handles:
                h.remove()
        params: dict[str, dict[int, tuple[float, int, int]]] = {}
        for ls in self.space.layers:
            sample = torch.cat(samples[ls.name])
            signed = bool((sample < 0).any())
            params[ls.name] = {
                b: act_qparams(sample, b, signed, method, power_of_two) for b in ls.act_bits if b < FLOAT_BITS
            }
        return params

    def apply(self, policy: Policy) -> nn.Module:
        """Set every layer to ``policy`` (coupling resolved) and return the quantized model."""
        policy = self.space.resolve(policy)
        self._masks = {}
        for name, lp in policy:
            ql = self.layers[name]
            ql.set_bits(lp.weight_bits, lp.nm)
            ql.act = None if lp.act_bits >= FLOAT_BITS else self.act_params[name][lp.act_bits]
            ql.correction = None
            gid = self._group_of_layer[name]
            live = (ql.bits > 0).to(ql.w_float.dtype)
            self._masks[gid] = live if gid not in self._masks else self._masks[gid] * live
        for name, ql in self.layers.items():
            ql.set_inputs(self._live_inputs(name))
        self.current = policy
        return self.qmodel

    def _live_inputs(self, name: str) -> torch.Tensor | None:
        """Indices of ``name``'s input channels (features) that the current policy can make non-zero (None = all)."""
        segments = self._in_segments.get(name)
        if segments is None:
            return None
        parts = []
        for producers, channels, per_channel in segments:
            if producers is None:
                parts.append([True] * (channels * per_channel))
                continue
            live = [False] * channels
            for p in producers:  # the host copy of the bits: no wait for the device
                live = [a or b > 0 for a, b in zip(live, self.layers[p].bits_host, strict=True)]
            parts.append([v for v in live for _ in range(per_channel)])
        keep = [v for part in parts for v in part]
        if all(keep) or len(keep) != self.layers[name].w_float.shape[1]:
            return None
        return torch.tensor([i for i, v in enumerate(keep) if v], device=self.device)

    def reestimate_batchnorm(self, batch: torch.Tensor) -> None:
        """Re-estimate BatchNorm statistics of the current policy (fidelity 2).

        For each layer that had a BatchNorm, in execution order, the per-channel mean and
        standard deviation of its quantized output are measured with all earlier layers
        already corrected, and the output is mapped back to the BatchNorm's ``beta`` and
        ``|gamma|``: exactly what recomputing the running statistics of the unfolded
        BatchNorm under the compressed network does. Pruned channels stay at zero.
        """
        self.clear_corrections()
        with self.bn_reestimation():
            with torch.no_grad():
                self.qmodel(batch)

    @contextlib.contextmanager
    def bn_reestimation(self) -> Iterator[None]:
        """Hooks that re-estimate BatchNorm statistics on whatever runs through the model.

        Inside the context every layer that had a BatchNorm measures the per-channel mean
        and standard deviation of its output on the batch it sees, stores the correction
        and returns the corrected output, so running a batch through the model (or, as the
        incremental evaluator does, through the suffix of the model after a cached
        prefix) is :meth:`reestimate_batchnorm`. Corrections of layers that do not run
        inside the context are left as they are.
        """
        handles = []

        def hook(name: str):
            gamma, beta = self.bn_affine[name]

            def fn(mod: QuantLayer, _args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
                mean, std = channel_stats(out)
                std = std.clamp_min(1e-5)
                live = (mod.bits > 0).to(out.dtype)
                a = gamma.abs() / std * live
                if self.power_of_two:  # shift-only hardware: the correction factor is a shift too
                    a = torch.exp2(torch.round(torch.log2(a.clamp_min(1e-30)))) * live
                c = (beta - a * mean) * live
                mod.correction = (a, c)
                shape = (1, -1) + (1,) * (out.dim() - 2)
                return out * a.view(shape) + c.view(shape)

            return fn

        for name, ql in self.layers.items():
            if name in self.bn_affine:
                handles.append(ql.register_forward_hook(hook(name)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def clear_corrections(self) -> None:
        """Drop every BatchNorm correction (the state :meth:`apply` leaves)."""
        for ql in self.layers.values():
            ql.correction = None
