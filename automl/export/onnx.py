"""Export a policy as an ONNX model that ONNX Runtime runs: pruned channels gone, QDQ int8.

The ONNX file is built from the packed ``.ampq`` export (:mod:`automl.export.ampq`), which
already holds the physically pruned, BatchNorm-folded network, every quantized channel's
integer codes, scales and bits, and each layer's activation grid. So both files describe
the same network, and the ONNX one equals what was searched up to float rounding.

Route: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``) of the
network rebuilt by :func:`automl.export.ampq.load_exported`, where every quantized layer
fake-quantizes its weight with ``torch.fake_quantize_per_channel_affine`` and its input
with ``torch.fake_quantize_per_tensor_affine``, which that exporter maps to
``QuantizeLinear``/``DequantizeLinear`` pairs. Chosen over the dynamo exporter, which
needs ``onnxscript`` and does not map fake-quantization to QDQ, and over building the
graph by hand with ``onnx.helper``, which would re-implement the exporter's translation of
every torch op a user's model may call. One rewrite follows: each weight
``QuantizeLinear`` of a constant is replaced by its int8 result (the stored codes), so the
file keeps int8 weights and a per-output-channel ``DequantizeLinear``.

Per layer:

- all kept channels at 1..8 bits behind an 8-bit (or narrower) quantized input: an
  :class:`IntegerLayer`, what the engine's integer inference computes
  (:attr:`automl.quant.engine.QuantLayer.integer`): the input divided by its scale, rounded and
  clipped to its codes (``Div``, ``Round``, ``Clip``), the convolution (``MatMul`` for a linear
  layer) of those codes with the weight codes (stored int8, cast to float once per session),
  then ``Div`` by ``1 / (s_x * s_w)`` and ``Add`` of the bias per output channel (BatchNorm
  correction folded into both). The sums are of integers, exact in float32 whatever order a
  kernel adds them in, and the rest is the same float32 operations as the engine's: a default
  ONNX Runtime session computes the searched model's codes bit for bit;
- quantized weights behind a float (32-bit) input: float weights holding the same grid
  values, since the runtime would dequantize int8 weights on every run and then run the
  float kernel anyway (the ONNX Runtime profile prices such a layer as float);
- any kept channel at more than 8 bits: float weights (codes x scale for the quantized
  channels, identical values, float storage) behind the input's ``QuantizeLinear``, a ``Clip``
  of the codes to the b-bit range (only where it is narrower than the 8-bit type), ``Cast`` and
  ``Mul`` by the scale; wider grids run as ``Mul``/``Round``/``Clip``/``Mul``; 32-bit inputs stay float.

The file holds no ``DequantizeLinear``: ONNX Runtime's default optimisations rewrite that QDQ
pattern into int8 kernels and integer biases with roundings of their own (:func:`_float_dequantize`).
Where the file computes in float (layers with a 32-bit channel or input, and whatever lies between
layers: pooling, normalisation, attention), the two runtimes may round an activation lying within
float rounding of a rounding midpoint either way; its code then differs by one step. The profile
of :mod:`automl.export.ort_profile` prices exactly this graph.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from automl.analysis.canonical import attention_softmax
from automl.errors import ExportError
from automl.export.ampq import fake_quantize, load_exported, read_export, stored_rows
from automl.paths import new_file_mode
from automl.quant.device import on_cpu
from automl.quant.engine import INTEGER_MAX_CODE

OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
INPUT, OUTPUT = "input", "output"
INT8_MAX_BITS = 8


def onnx_act_quant(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    """:func:`automl.export.ampq.fake_quantize` in ops the TorchScript ONNX exporter maps to QDQ.

    An unsigned grid ``[0, 2^b - 1]`` runs through a uint8 ``QuantizeLinear`` and a signed
    one ``[-(2^(b-1)-1), 2^(b-1)-1]`` through an int8 one, after a ``Clip`` where the grid
    is narrower than the type (the type alone saturates at 0/255 or -128/127).
    """
    if qmin == 0 and qmax <= 255:
        lo, hi = 0, 255
    elif qmin == -qmax and qmax <= 127:
        lo, hi = -128, 127
    else:
        return x.mul(1.0 / scale).round().clamp(qmin, qmax).mul(scale)
    if (qmin, qmax) != (lo, hi):
        x = torch.clamp(x, qmin * scale, qmax * scale)
    return torch.fake_quantize_per_tensor_affine(x, scale, 0, lo, hi)


def onnx_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                   dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                   enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (inference) in ops of opset 13: the exporter has none for it there."""
    if enable_gqa:
        raise ExportError("scaled_dot_product_attention with enable_gqa=True has no ONNX form here: expected as many "
                          "key/value heads as query heads. Export with --format ampq.")
    mask = attn_mask
    if mask is not None and not mask.is_floating_point():
        mask = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
    if is_causal:
        n, m = q.shape[-2], k.shape[-2]
        causal = torch.triu(torch.full((n, m), float("-inf")), diagonal=1)
        mask = causal if mask is None else mask + causal
    return attention_softmax(q, k, v, mask, q.shape[-1] ** -0.5 if scale is None else scale)[0]


def _windows(size: int, out: int) -> list[tuple[int, int]]:
    """The input window ``[lo, hi)`` adaptive pooling averages for each of ``out`` outputs."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def onnx_adaptive_avg_pool2d(x: torch.Tensor, output_size: Any) -> torch.Tensor:
    """``F.adaptive_avg_pool2d``, also where the output size does not divide the input size (VGG's 7x7
    pooling of a 1x1 map), which the exporter refuses: each output the mean of its window, in
    slices (batch-free: no reshape fixes the batch)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])  # constants of the exported graph, not traced sizes
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    oh, ow = oh or h, ow or w
    if h % oh == 0 and w % ow == 0:
        return F.adaptive_avg_pool2d(x, (oh, ow))
    rows = [torch.cat([x[..., a:b, c:d].mean(dim=(-2, -1), keepdim=True) for c, d in _windows(w, ow)], dim=-1)
            for a, b in _windows(h, oh)]
    return torch.cat(rows, dim=-2)


class QDQLayer(nn.Module):
    """A convolution or linear layer whose weight is ``codes x scale`` with int8 codes."""

    def __init__(self, op: nn.Module, scale: np.ndarray) -> None:
        super().__init__()
        self.op = op
        self.register_buffer("scale", torch.from_numpy(np.array(scale, dtype=np.float32)))
        self.register_buffer("zero_point", torch.zeros(len(scale), dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = self.op
        w = torch.fake_quantize_per_channel_affine(op.weight, self.scale, self.zero_point, 0, -128, 127)
        if isinstance(op, nn.Linear):
            return F.linear(x, w, op.bias)
        conv = F.conv2d if isinstance(op, nn.Conv2d) else F.conv1d
        return conv(x, w, op.bias, op.stride, op.padding, op.dilation, op.groups)


class IntegerLayer(nn.Module):
    """A quantized layer behind a quantized input, computed as the engine's integer inference does.

    ``q = clamp(round(x / s), qmin, qmax)``, then ``conv(q, codes) / r + bias`` with integer weight
    codes, ``r = 1 / (s * scale)`` and the stored (BatchNorm-folded) scale and bias: the same float32
    operations in the same order as :attr:`automl.quant.engine.QuantLayer.integer`, around a sum of
    integers that is exact in any order.
    """

    def __init__(self, op: nn.Module, codes: torch.Tensor, scale: torch.Tensor, act: tuple[float, int, int]) -> None:
        super().__init__()
        self.op = op
        self.qmin, self.qmax = int(act[1]), int(act[2])
        s = torch.tensor(float(act[0]), dtype=torch.float32)
        bias = op.bias.detach().clone() if op.bias is not None else torch.zeros(codes.shape[0])
        with torch.no_grad():
            op.weight = nn.Parameter(codes.view_as(op.weight).clone(), requires_grad=False)
        op.bias = None
        self.register_buffer("s", s)
        self.register_buffer("r", 1.0 / (s * scale))
        self.register_buffer("b", bias)
        if isinstance(op, nn.Linear):  # stored transposed under the layer's name (F.linear would lose it)
            self.register_buffer("weight_t", op.weight.detach().t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = self.op
        q = torch.clamp(torch.round(x / self.s), self.qmin, self.qmax)
        if isinstance(op, nn.Linear):
            return torch.matmul(q, self.weight_t) / self.r + self.b
        conv = F.conv2d if isinstance(op, nn.Conv2d) else F.conv1d
        out = conv(q, op.weight, None, op.stride, op.padding, op.dilation, op.groups)
        view = (1, -1) + (1,) * (out.dim() - 2)
        return out / self.r.view(view) + self.b.view(view)


def _qdq_network(path: Path, int8_kernels: bool = False) -> tuple[fx.GraphModule, dict[str, Any], dict[str, np.ndarray]]:
    """The ``.ampq`` network with quantized layers as :class:`IntegerLayer` (``int8_kernels``:
    :class:`QDQLayer`) and QDQ activations elsewhere."""
    header, tensors = read_export(path)
    gm = load_exported(path)
    quantizer = {
        n.target: n.args[0] for n in gm.graph.nodes
        if n.op == "call_module" and n.args and isinstance(n.args[0], fx.Node)
        and n.args[0].op == "call_function" and n.args[0].target is fake_quantize
    }
    for name, spec in header["modules"].items():
        if not spec.get("quantized"):
            continue
        bits = tensors[f"{name}.bits"].astype(int)
        if not (len(bits) and bits.max() <= INT8_MAX_BITS and name in quantizer):
            # A float input means a float kernel either way: int8 weights would only add a
            # DequantizeLinear per run (slower than float: benchmarks/export_check.py), so the
            # layer keeps float weights holding the same grid values (codes x scale).
            continue
        if int8_kernels:
            gm.set_submodule(name, QDQLayer(gm.get_submodule(name), tensors[f"{name}.scale"]))
            continue
        node = quantizer[name]
        act = (float(node.args[1]), int(node.args[2]), int(node.args[3]))
        if max(-act[1], act[2]) > INTEGER_MAX_CODE:
            continue
        rows, scale, _ = stored_rows(name, gm.get_submodule(name), tensors, spec.get("nm"))
        gm.set_submodule(name, IntegerLayer(gm.get_submodule(name), rows, scale, act))
        for user in list(node.users):  # the layer quantizes its input itself
            user.replace_input_with(node, node.args[0])
        gm.graph.erase_node(node)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is fake_quantize:
            node.target = onnx_act_quant
    return _exportable(gm), header, tensors


def _exportable(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with the operations the TorchScript exporter refuses at opset 13 written in ones it knows
    (attention, adaptive pooling to a size that does not divide the input)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
            node.target = onnx_attention
        elif node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            node.target = onnx_adaptive_avg_pool2d
        elif node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.AdaptiveAvgPool2d):
            size = gm.get_submodule(node.target).output_size
            node.op, node.target, node.args = "call_function", onnx_adaptive_avg_pool2d, (node.args[0], size)
    gm.recompile()
    return gm


def _fold_weight_quantizers(model: Any) -> int:
    """Replace each ``QuantizeLinear`` of a constant weight by its int8 result; returns how many."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}  # deduplicated constants

    def value(name: str) -> np.ndarray | None:
        while name in alias and name not in inits:
            name = alias[name]
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    folded, drop = 0, []
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        w, scale, zp = (value(n) for n in node.input)
        if w is None or scale is None or zp is None or scale.ndim != 1:
            continue  # an activation quantizer
        shape = (-1,) + (1,) * (w.ndim - 1)
        codes = np.round(w / scale.reshape(shape))
        if np.abs(codes - w / scale.reshape(shape)).max(initial=0) > 1e-3:
            raise ExportError(f"weight {node.input[0]!r} is not on its int8 grid; the .ampq file is inconsistent")
        codes = np.clip(codes, -127, 127).astype(np.int8)
        layer = node.input[1].removesuffix(".scale")  # QDQLayer's buffer: "<layer>.scale"
        name = f"{layer}.weight_codes" if layer != node.input[1] and f"{layer}.weight_codes" not in inits else node.output[0]
        graph.initializer.append(numpy_helper.from_array(codes, name))
        for user in graph.node:
            for i, inp in enumerate(user.input):
                if inp == node.output[0]:
                    user.input[i] = name
        drop.append(node)
        folded += 1
    for node in drop:
        graph.node.remove(node)
    onnx.checker.check_model(model)  # before pruning unused constants, which refer only to removed nodes
    drop_unused(graph)
    return folded


def drop_unused(graph: Any) -> None:
    """Remove initializers and ``Constant`` nodes no node reads: ONNX Runtime warns about each
    (``Removing initializer ...``) when it loads a file that holds one."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    for n in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(n)


def onnx_copy(node: Any) -> Any:
    """A detached copy of an ONNX node (repeated protobuf fields copy on insertion anyway)."""
    from onnx import NodeProto

    out = NodeProto()
    out.CopyFrom(node)
    return out


def _integer_clips(model: Any) -> int:
    """Move each activation ``Clip`` that feeds a ``QuantizeLinear`` behind it, onto the codes.

    ``clamp(round(clamp(x, lo*s, hi*s) / s))`` and ``clamp(round(x / s), lo, hi)`` are the
    same codes (bounds beyond the code type saturate to it, as ``QuantizeLinear`` does); the
    second keeps the quantizer right after the producing layer's activation function.
    Returns how many clips moved.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    values = {**consts, **inits}
    users: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    moved, nodes = 0, []
    replaced: dict[int, list[Any]] = {}  # id of a node -> the nodes that take its place
    for clip in [n for n in graph.node if n.op_type == "Clip" and len(n.input) == 3]:
        after = users.get(clip.output[0], [])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or not all(i in values for i in clip.input[1:]):
            continue
        q = after[0]
        scale, zp = values.get(q.input[1]), values.get(q.input[2])
        if scale is None or zp is None or scale.ndim != 0:
            continue
        # the bound's code, saturated to the quantized type as QuantizeLinear saturates: ReLU6's bound 6 at
        # an activation step of 0.0229 is code 262, which a plain cast to uint8 would wrap to 6
        info = np.iinfo(zp.dtype)
        lo, hi = (np.array(np.clip(np.round(values[i] / scale) + zp, info.min, info.max), dtype=zp.dtype)
                  for i in clip.input[1:])
        name = q.output[0]
        graph.initializer.extend([numpy_helper.from_array(lo, f"{name}_lo"), numpy_helper.from_array(hi, f"{name}_hi")])
        new_q = helper.make_node("QuantizeLinear", [clip.input[0], *q.input[1:]], [f"{name}_unclipped"], name=q.name)
        new_clip = helper.make_node("Clip", [f"{name}_unclipped", f"{name}_lo", f"{name}_hi"], [name], name=f"{q.name}_clip")
        replaced[id(clip)] = []  # its input is computed before it, so also before the quantizer
        replaced[id(q)] = [new_q, new_clip]
        moved += 1
    for n in graph.node:
        nodes.extend(replaced.get(id(n), [n]))
    if moved:
        kept = [onnx_copy(n) for n in nodes]
        del graph.node[:]
        graph.node.extend(kept)
    return moved


def _float_dequantize(model: Any) -> int:
    """Write each ``DequantizeLinear`` as ``Cast`` to float and ``Mul`` by its scale; returns how many.

    The same values (``DequantizeLinear`` is ``(code - 0) * scale`` in float), but no QDQ pattern
    left for ONNX Runtime's default optimisations to rewrite into something the search did not
    evaluate: at the basic level ``WeightBiasQuantization`` rounds each float bias (and float
    weight) of a layer between activation quantizers onto an integer grid of its own; at the
    extended level such a layer becomes an int8 ``QLinearConv`` that requantizes its output with
    its own rounding (on x86 CPUs without VNNI its uint8 x int8 kernel can also saturate 16-bit
    pair sums of 8-bit codes), and a ``DequantizeLinear`` weight of a ``MatMul`` becomes a
    ``MatMulNBits`` that computes otherwise. So every layer runs the float kernel on the grid
    values, as the searched model does. A weight's ``Cast`` and ``Mul`` read constants only:
    the runtime folds them into float weights once, when the session is made, while the file
    keeps the int8 codes.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"})
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}  # deduplicated constants
    for name in list(alias):
        source = name
        while source in alias and source not in values:
            source = alias[source]
        if source in values:
            values[name] = values[source]
    replaced, nodes = 0, []
    for node in graph.node:
        zp = values.get(node.input[2]) if len(node.input) > 2 else None
        scale = values.get(node.input[1]) if node.op_type == "DequantizeLinear" else None
        if scale is None or (zp is not None and zp.any()):
            nodes.append(node)
            continue
        scale_name = node.input[1]
        codes = values.get(node.input[0])
        if scale.ndim == 1 and codes is not None:  # per-axis: broadcast the scale along the weight's axis
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % codes.ndim
            shape = [1] * codes.ndim
            shape[axis] = scale.size
            scale_name = f"{node.input[1]}_{axis}of{codes.ndim}"
            if scale_name not in values:
                graph.initializer.append(numpy_helper.from_array(scale.reshape(shape), scale_name))
                values[scale_name] = scale.reshape(shape)
        cast = f"{node.output[0]}_codes"
        nodes.append(helper.make_node("Cast", [node.input[0]], [cast], name=f"{node.name}_cast", to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [cast, scale_name], [node.output[0]], name=f"{node.name}_scale"))
        replaced += 1
    if replaced:
        kept = [onnx_copy(n) for n in nodes]
        del graph.node[:]
        graph.node.extend(kept)
    return replaced


def _int8_codes(model: Any) -> int:
    """Store each float weight of a ``Conv``/``Gemm``/``MatMul`` that holds integer codes within int8 as int8
    plus a ``Cast`` (folded into the float weight once, when a session is made); returns how many."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weights = {n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}
    converted, nodes = 0, []
    for name in sorted(weights & set(inits)):
        w = numpy_helper.to_array(inits[name])
        if w.dtype != np.float32 or not w.size or np.abs(w).max() > 127 or not np.array_equal(w, np.round(w)):
            continue
        graph.initializer.remove(inits[name])
        graph.initializer.append(numpy_helper.from_array(w.astype(np.int8), f"{name}_int8"))
        nodes.append(helper.make_node("Cast", [f"{name}_int8"], [name], name=f"{name}_cast", to=TensorProto.FLOAT))
        converted += 1
    if nodes:
        kept = nodes + [onnx_copy(n) for n in graph.node]
        del graph.node[:]
        graph.node.extend(kept)
    return converted


def to_onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """``module`` as ONNX bytes (batch dimension dynamic); :class:`ExportError` if an op has no ONNX form."""
    buffer = io.BytesIO()
    module, example = on_cpu(module), example.detach().cpu()  # exported from a copy on the CPU
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    except (torch.onnx.errors.OnnxExporterError, RuntimeError, torch.jit.Error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"the network cannot be expressed in ONNX opset {OPSET}: {first}. Expected only operations with an ONNX "
            "form (convolutions, linear layers, elementwise math, pooling, reshapes); replace that operation in the "
            "model, or export with --format ampq, which stores any torch function."
        ) from exc
    return buffer.getvalue()


def ampq_to_onnx(ampq_path: str | os.PathLike[str], *, int8_kernels: bool = False) -> Any:
    """The ``onnx.ModelProto`` of an ``.ampq`` export (see the module docstring); checked.

    ``int8_kernels`` keeps the ``DequantizeLinear`` nodes, the QDQ pattern ONNX Runtime rewrites
    into int8 kernels with roundings of its own (:func:`_float_dequantize`): the file then no
    longer computes what was searched; only for measuring what that rewrite is worth.
    """
    import onnx

    gm, header, tensors = _qdq_network(Path(ampq_path), int8_kernels)
    example = torch.zeros(1, *header["input_shape"])  # the stored shape is per sample
    model = onnx.load_from_string(to_onnx_bytes(gm, example))
    _fold_weight_quantizers(model)
    _integer_clips(model)
    if not int8_kernels:
        _float_dequantize(model)
        _int8_codes(model)
    drop_unused(model.graph)  # the bounds of the clips that moved onto the codes
    bits = {n: tensors[f"{n}.bits"].astype(int).tolist() for n, s in header["modules"].items() if s.get("quantized")}
    meta = {"automl-mpq.policy_key": header["policy_key"], "automl-mpq.kept_channel_bits": str(bits),
            "automl-mpq.source": "automl.export.onnx.ampq_to_onnx"}
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "automl-mpq"
    onnx.checker.check_model(model)
    return model


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; :class:`ExportError` saying why when it cannot."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; the file reads like any other the user writes
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}. Expected a writable file path; pass another "
                          "--output (a directory you own).") from exc
    return path


def export_onnx(ampq_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Convert an ``.ampq`` export to an ONNX file at ``out_path`` (written atomically)."""
    return write_bytes(out_path, ampq_to_onnx(ampq_path).SerializeToString())


def float_onnx(float_model: nn.Module, example: torch.Tensor) -> bytes:
    """The float network as ONNX bytes: the baseline every exported latency is compared with."""
    from automl.analysis.graph import trace

    try:
        model: nn.Module = _exportable(trace(float_model))
    except Exception:  # noqa: BLE001 - not traceable: exported as it is
        model = float_model
    return to_onnx_bytes(model, example[:1])


def layer_precisions(model: Any) -> dict[str, int]:
    """Count of ``Conv``/``Gemm``/``MatMul`` nodes with int8 and float weights in an ONNX model
    (int8: codes dequantized by ``DequantizeLinear`` or by ``Cast`` and ``Mul``)."""
    inits = {t.name: t.data_type for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    counts = {"int8": 0, "float": 0}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            src = producer.get(node.input[1])
            if src is not None and src.op_type == "Mul" and src.input[0] in producer:
                src = producer[src.input[0]]  # the Cast of the codes
            qdq = src is not None and src.op_type in ("DequantizeLinear", "Cast") and inits.get(src.input[0]) == 3  # INT8
            counts["int8" if qdq else "float"] += 1
    return counts


def measure_onnx(onnx_path: str | os.PathLike[str], float_model: nn.Module, sample: torch.Tensor, *,
                 threads: int = 1, repeats: int = 20, batch_runs: int | None = None,
                 float_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """ONNX Runtime latency of the exported file and of the float network, at batch 1 and
    ``len(sample)``, each pair timed round-robin in one run (:func:`automl.export.ort.best_ms`):
    the best of ``3 * repeats`` runs at batch 1 and of ``batch_runs`` (default the same) at
    the full batch, whose runs take far longer and whose minimum is steadier. ``float_path``:
    where to write the float ONNX file that was timed, so that a user can compare the two files
    with their own runtime."""
    import onnx

    from automl.export import ort

    exported = Path(onnx_path).read_bytes()
    baseline = float_onnx(float_model, sample)
    if float_path is not None:
        write_bytes(float_path, baseline)
    x = sample.detach().cpu().numpy()
    sessions = [ort.session(exported, threads), ort.session(baseline, threads)]
    ms = ort.best_ms([ort.runner(s, x[:1]) for s in sessions], repeats)
    runs = 3 * repeats if batch_runs is None else batch_runs
    ms += ort.best_ms([ort.runner(s, x) for s in sessions], max(1, runs // 2), inner=min(2, runs), warmup=1)
    return {"onnx_path": str(onnx_path), "onnx_bytes": len(exported), "float_onnx_bytes": len(baseline),
            "batch": len(x), "threads": threads, "layers": layer_precisions(onnx.load_from_string(exported)),
            "latency_b1_ms": ms[0], "float_latency_b1_ms": ms[1], "latency_batch_ms": ms[2],
            "float_latency_batch_ms": ms[3], "speedup_b1": ms[1] / ms[0], "speedup_batch": ms[3] / ms[2],
            **({"float_onnx_path": str(float_path)} if float_path is not None else {})}


def export_file(run: Path, fmt: str = "onnx", output: str | os.PathLike[str] | None = None) -> Path:
    """``automl export``: the best policy of a run directory (or an ``.ampq`` file) as ``fmt``.

    Raises:
        ExportError: the run has no exported best policy, the source is unreadable or
            holds an operation ONNX cannot express, or ``output`` cannot be written.
    """
    source = run / "best_model.ampq" if run.is_dir() else run
    if not source.is_file():
        found = "a run directory without best_model.ampq" if run.is_dir() else "no such file"
        raise ExportError(
            f"cannot export {run}: expected a finished run directory (its best policy is written to best_model.ampq "
            f"when the search ends with a feasible policy) or an .ampq file, got {found}. Finish the search, or loosen "
            "its budget so that a policy meets it, then export again."
        )
    if fmt not in ("onnx", "ampq"):
        raise ExportError(f"unknown export format {fmt!r}: expected 'onnx' or 'ampq'")
    out = Path(output) if output is not None else source.with_suffix(f".{fmt}")
    if fmt == "ampq":
        read_export(source)  # refuse a corrupt file before copying it
        return source if out.resolve() == source.resolve() else write_bytes(out, source.read_bytes())
    return export_onnx(source, out)


def export_run_onnx(ampq_path: Path, onnx_path: Path, float_model: nn.Module, sample: torch.Tensor,
                    threads: int = 1) -> dict[str, Any]:
    """The search's final step: the ONNX file next to the ``.ampq`` one, timed against float
    (:func:`measure_onnx`); ``{"error": message}`` instead when the network has no ONNX form,
    so that a long search still ends with its ``.ampq`` file and results. The float network's ONNX
    file, timed beside it, is written next to it as ``<name>.float.onnx``. The full batch is
    timed on the best of 6 runs, not 30: the minimum of a long run is steady, so the figures stay
    the same within noise and every search's final stage is shorter."""
    try:
        return measure_onnx(export_onnx(ampq_path, onnx_path), float_model, sample, threads=threads, repeats=10,
                            batch_runs=6, float_path=Path(onnx_path).with_suffix(".float.onnx"))
    except ExportError as exc:
        return {"error": str(exc)}
