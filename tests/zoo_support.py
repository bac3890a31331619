"""The model zoo of the conformance suite: real architectures with random weights, as a user brings them.

Each family is a torchvision (or timm) network built with random weights (nothing is downloaded),
its BatchNorm statistics set by a few train-mode passes over random inputs, and a tiny
:class:`automl.Task` whose labels are the float model's own predictions. Inputs are small
(3x32x32 images, 16 tokens for the sequence model) so that the whole zoo runs in CI on two cores.

Only ``vgg11_bn`` deviates from its published form: its classifier keeps the adaptive 7x7 pooling,
the flatten into a Linear layer and the Linear-ReLU-Dropout stack, with 128 hidden units instead of
4096, which would hold 120 M of its 129 M parameters.

Used by ``tests/test_model_zoo.py`` and ``benchmarks/model_zoo.py``; needs torchvision (and timm for
the two timm families), which the ``zoo`` extra installs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from automl.evaluation.task import Task

IMAGE = (3, 32, 32)
SEQUENCE = (16, 12)  # tokens x features of the sequence classifier
CLASSES = 10


class TokenClassifier(nn.Module):
    """A user's sequence classifier: embedding, ``nn.TransformerEncoder``, mean over tokens, Linear head."""

    def __init__(self, features: int = SEQUENCE[1], width: int = 32, heads: int = 4, layers: int = 2,
                 classes: int = CLASSES) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def _vgg11_bn() -> nn.Module:
    from torchvision.models import vgg11_bn

    model = vgg11_bn(num_classes=CLASSES)
    hidden = 128
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(True),
        nn.Dropout(0.5), nn.Linear(hidden, CLASSES),
    )
    return model


def _torchvision(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None, num_classes=CLASSES, **kwargs)

    return build


def _vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=CLASSES)


def _timm_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                             num_classes=CLASSES, init_values=1e-2, drop_path_rate=0.1)


def _timm_lcnet() -> nn.Module:
    import timm

    return timm.create_model("lcnet_050", pretrained=False, num_classes=CLASSES)


# name -> (builder, input shape per sample, why it is in the zoo)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str]] = {
    "resnet18": (_torchvision("resnet18"), IMAGE, "residual additions, strided 1x1 shortcuts"),
    "resnet50": (_torchvision("resnet50"), IMAGE, "bottleneck blocks"),
    "mobilenet_v2": (_torchvision("mobilenet_v2"), IMAGE, "depthwise convolutions, ReLU6"),
    "mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), IMAGE, "SE gating (Hardsigmoid), Hardswish"),
    "efficientnet_b0": (_torchvision("efficientnet_b0"), IMAGE, "SE gating (Sigmoid), SiLU, StochasticDepth"),
    "shufflenet_v2_x0_5": (_torchvision("shufflenet_v2_x0_5"), IMAGE, "channel split and shuffle"),
    "regnet_x_400mf": (_torchvision("regnet_x_400mf"), IMAGE, "grouped convolutions"),
    "vgg11_bn": (_vgg11_bn, IMAGE, "plain stack, adaptive 7x7 pooling flattened into a Linear layer"),
    "squeezenet1_0": (_torchvision("squeezenet1_0"), IMAGE, "fire modules (concatenation), convolutional head"),
    "densenet121": (_torchvision("densenet121"), IMAGE, "BatchNorm on concatenations"),
    "convnext_tiny": (_torchvision("convnext_tiny"), IMAGE, "LayerNorm, permutes, layer scale, StochasticDepth"),
    "vit": (_vit, IMAGE, "nn.MultiheadAttention, class token, position embedding"),
    "transformer": (TokenClassifier, SEQUENCE, "a user's nn.TransformerEncoder classifier"),
    "timm_vit": (_timm_vit, IMAGE, "timm attention (fused qkv Linear, scaled_dot_product_attention), LayerScale, DropPath"),
    "timm_lcnet": (_timm_lcnet, IMAGE, "timm BatchNormAct2d, SE gated by hard_sigmoid arithmetic, conv head on a pooled map"),
}


def set_batchnorm_statistics(model: nn.Module, inputs: torch.Tensor, passes: int = 3) -> None:
    """Give BatchNorm layers the statistics of ``inputs``: a few train-mode passes (cumulative averages)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for chunk in inputs.chunk(passes):
            model(chunk)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def build_model(name: str, seed: int = 0) -> nn.Module:
    """The family's network with random weights and BatchNorm statistics of random inputs (eval mode)."""
    builder, shape, _ = FAMILIES[name]
    torch.manual_seed(seed)
    model = builder()
    for m in model.modules():  # torchvision's ViT starts its head at zero: every input would get the same output
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not m.weight.any():
            m.reset_parameters()
    set_batchnorm_statistics(model, torch.randn(48, *shape, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def make_task(name: str, seed: int = 0, n_train: int = 64, n_eval: int = 64, batch: int = 32) -> Task:
    """A tiny task on the family's network: random inputs, labels = the float model's argmax."""
    model = build_model(name, seed)
    shape = FAMILIES[name][1]
    gen = torch.Generator().manual_seed(seed + 1)
    sizes = {"train": n_train, "calib": 2 * batch, "val": n_eval, "test": n_eval}  # calibration: the default 2 batches
    loaders = {}
    with torch.no_grad():
        for split, n in sizes.items():
            x = torch.randn(n, *shape, generator=gen)
            y = model(x).argmax(dim=1)
            loaders[split] = DataLoader(TensorDataset(x, y), batch_size=batch)
    return Task(model, torch.zeros(1, *shape), loaders["train"], loaders["calib"], loaders["val"], loaders["test"],
                name=f"zoo-{name}")


def _task_factory(name: str) -> Callable[[], Task]:
    def factory() -> Task:
        return make_task(name)

    factory.__name__ = name
    return factory


# `automl search --task tests.zoo_support:resnet18` and so on
for _name in FAMILIES:
    globals()[_name] = _task_factory(_name)


# ONNX Runtime against the searched model -------------------------------------------------------------------
TIE = 1e-3  # steps: an activation this close to a rounding midpoint may round either way in another runtime
FLOAT_REL = 1e-5  # of the largest value of a quantizer's input: how far float rounding may move one of its inputs
FLOAT_TOL = 1e-5  # relative to the output's largest magnitude: float rounding of the same arithmetic


def _onnx_quantizers(model) -> list[tuple[str, str, float]]:
    """(pre-quantization input, codes after the integer clip, scale) of every activation quantizer, in
    graph order: ``QuantizeLinear`` (then a ``Clip`` of the codes), or ``Div`` by the scale, ``Round``, ``Clip``."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"})
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}

    def value(name: str):
        while name in alias and name not in values:
            name = alias[name]
        return values.get(name)

    producer = {o: n for n in model.graph.node for o in n.output}
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    out = []
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and value(n.input[0]) is None:
            pre, scale, codes = n.input[0], value(n.input[1]), n.output[0]
        elif n.op_type == "Round" and n.input[0] in producer and producer[n.input[0]].op_type == "Div":
            div = producer[n.input[0]]
            pre, scale, codes = div.input[0], value(div.input[1]), n.output[0]
            if scale is None or scale.size != 1:
                continue
        else:
            continue
        after = users.get(codes, [])
        codes = after[0].output[0] if len(after) == 1 and after[0].op_type == "Clip" else codes
        out.append((pre, codes, float(scale)))
    return out


def _match_quantizers(captured: list, quantizers: list) -> list[str] | None:
    """The ONNX codes tensor of each captured layer input, or ``None`` when they do not correspond.

    Both lists are in execution order; a quantizer is matched by its scale and shape, searching
    forward (several layers' inputs can share a scale and a shape), and layers that read the same
    tensor (attention's three projections) share the quantizer the exporter wrote once.
    """
    out: list[str] = []
    j, previous = 0, None
    for v, act in captured:
        key = (np.float32(act[0]), tuple(v.shape))
        if previous is not None and previous[1] == key and torch.equal(previous[0], v):
            out.append(out[-1])
            continue
        k = next((k for k in range(j, len(quantizers)) if quantizers[k][1] == key), None)
        if k is None:
            return None
        out.append(quantizers[k][0])
        j, previous = k + 1, (v, key)
    return out


def onnx_agreement(qmodel: nn.Module, analysis, policy, onnx_bytes: bytes, x: torch.Tensor,
                   session_options=None) -> dict[str, float]:
    """Run the ONNX file (a default ONNX Runtime session unless ``session_options``) and the searched
    in-memory model on ``x`` and compare them, at the output and at every activation quantizer.

    Returns ``argmax`` (fraction of samples whose top class agrees), ``max_diff`` (largest output
    difference), ``out_scale`` (largest output magnitude), ``exact`` (fraction of samples whose
    outputs agree to ``FLOAT_TOL``), ``tied`` (fraction of samples where some activation code
    differs) and ``untied`` (samples whose inputs at the first differing quantizer differ by more
    than float rounding, ``FLOAT_REL`` of their largest value, or whose codes there differ by more
    than one step beyond that:
    a computation that is not the searched one; 0 when the file computes the searched model).
    """
    import onnx
    import onnxruntime as ort

    from automl.analysis.prune import in_keep_mask, keep_masks
    from automl.quant.engine import QuantLayer

    model = onnx.load_from_string(onnx_bytes)
    quantizers = _onnx_quantizers(model)
    names = {o.name for o in model.graph.output}
    for pre, codes_name, _ in quantizers:
        for name in (pre, codes_name):
            if name not in names:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                names.add(name)
    opts = session_options or ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x.numpy()}),
                    strict=True))
    masks = keep_masks(analysis, policy)
    captured: list[tuple[torch.Tensor, tuple[float, int, int]]] = []

    def hook(name: str):
        def fn(mod: QuantLayer, args: tuple[torch.Tensor, ...]) -> None:
            if mod.act is not None:
                v = args[0]
                keep = torch.from_numpy(in_keep_mask(analysis, name, masks))
                v = v.index_select(v.dim() - 1 if isinstance(mod.op, nn.Linear) else 1, keep.nonzero().flatten())
                captured.append((v.detach().clone(), mod.act))

        return fn

    layers = {n: m for n, m in qmodel.named_modules() if isinstance(m, QuantLayer)}
    handles = [layers[n].register_forward_pre_hook(hook(n)) for n in analysis.names if n in layers]
    try:
        with torch.no_grad():
            expected = qmodel(x).numpy()
    finally:
        for h in handles:
            h.remove()
    got = outs[sess.get_outputs()[0].name]
    diff = np.abs(got - expected).reshape(len(x), -1).max(axis=1)
    scale = float(np.abs(expected).max())
    first_bad = np.full(len(x), -1)
    untied = np.zeros(len(x), dtype=bool)
    tied = np.zeros(len(x), dtype=bool)
    matched = _match_quantizers(captured, [(codes, (np.float32(s), outs[codes].shape)) for _, codes, s in quantizers])
    pre_of = {codes: pre for pre, codes, _ in quantizers}
    if matched is not None:
        for (v, (s, qmin, qmax)), codes_name in zip(captured, matched, strict=True):
            t = (v / torch.tensor(s, dtype=torch.float32)).numpy().reshape(len(x), -1)
            mine = np.clip(np.round(t), qmin, qmax).astype(np.int64)
            theirs = outs[codes_name].astype(np.int64).reshape(len(x), -1)
            if mine.shape != theirs.shape:
                untied[:] = True
                break
            differs = mine != theirs
            new = differs.any(axis=1) & (first_bad < 0)
            if new.any():  # where a sample's codes first differ, its inputs must agree up to float rounding
                t_onnx = (outs[pre_of[codes_name]] / np.float32(s)).reshape(len(x), -1)
                gap = np.abs(np.clip(t, qmin - 1, qmax + 1) - np.clip(t_onnx, qmin - 1, qmax + 1)).max(axis=1)
                noise = FLOAT_REL * np.abs(t).max(axis=1) + TIE
                bad = (np.abs(mine - theirs).max(axis=1) > 1 + noise) | (gap > noise)
                untied |= new & bad
                first_bad[new] = 1
            tied |= differs.any(axis=1)
    else:
        untied[:] = True  # the quantizers do not correspond: not the searched computation
    untied |= (~tied) & (diff > FLOAT_TOL * max(scale, 1.0))
    return {"argmax": float((got.argmax(axis=1) == expected.argmax(axis=1)).mean()), "max_diff": float(diff.max()),
            "out_scale": scale, "exact": float((diff <= FLOAT_TOL * max(scale, 1.0)).mean()),
            "tied": float(tied.mean()), "untied": float(untied.mean())}
