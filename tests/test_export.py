"""Exported models: a smaller file that really runs, loads anywhere and matches what was evaluated."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import automl
from automl.analysis.prune import keep_masks
from automl.cost.model import CostModel
from automl.errors import AutoMLError, PolicyError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.task import Task
from automl.export.ampq import (
    ExportError,
    container_bytes,
    export_policy,
    fake_quantize,
    load_exported,
    pack_codes,
    read_export,
    unpack_codes,
)
from automl.quant.engine import QuantEngine, QuantLayer
from automl.reference.models import REFERENCE_MODELS, PlainCNN
from search_spaces import SearchSpace, SpaceConfig
from tests.conftest import make_loaders, randomise_batchnorm


class _UserNet(nn.Module):
    """A model class only this test module knows: residual add, functional relu, torch.flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.body = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = torch.relu(self.body(x)) + x
        return self.head(torch.flatten(self.pool(x), 1))


def _setup(model: nn.Module, container: bool = False) -> tuple[Problem, Evaluator, CostModel]:
    loaders = make_loaders()
    task = Task(model, torch.zeros(2, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"])
    problem = Problem.from_task(task)
    extra = container_bytes(problem.task.model, problem.analysis, problem.space, task.sample_input) if container else 0.0
    return problem, Evaluator(problem, EvalConfig(fidelity=1, bn_samples=0, early_stop=False)), CostModel(problem.analysis, problem.space, container_bytes=extra)


def _export(problem, ev, cost, model, policy, path, x=None):
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1)) if x is None else x
    return export_policy(model, problem.analysis, policy, path, sample_input=x, float_model=ev.float_model,
                         cost_model=cost, repeats=2)


def _mixed_policy(problem):
    """A random policy with mixed bit-widths (2..8 and 32) and pruned channels."""
    rng = np.random.default_rng(3)
    while True:
        policy = problem.space.resolve(problem.space.sample(rng))
        bits = {b for _, lp in policy for b in lp.weight_bits}
        if {0, 32} <= bits and len(bits) >= 5:
            return policy


@pytest.mark.parametrize("fixture", ["tiny_resnet", "plain_cnn"])
def test_round_trip_outputs_equal_the_in_memory_model(fixture, request, tmp_path):
    problem, ev, cost = _setup(request.getfixturevalue(fixture))
    policy = problem.space.uniform(4, 8, sparsity=0.25)
    qmodel = ev.engine.apply(policy)
    report = _export(problem, ev, cost, qmodel, policy, tmp_path / "m.ampq")
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (load_exported(tmp_path / "m.ampq")(x) - qmodel(x)).abs().max()
    assert float(diff) <= 1e-4
    assert report.max_abs_diff <= 1e-4 and report.agreement == 1.0


def _layer_io(model: nn.Module, names, x):
    """Per layer: its input before activation quantization and its output."""
    seen = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, args, out, n=n: seen.__setitem__(n, (args[0].detach().clone(), out.detach().clone())))
        for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_folded_bn_correction_and_finetuned_weights_match_layer_by_layer(tiny_resnet, tmp_path):
    """After BN re-estimation and QAT, each exported layer computes what its in-memory layer does.

    End to end, a sample can differ by one activation step where a value lies on a rounding
    tie and folding ``a`` into the scales tips float rounding the other way; fed the same
    input, every layer agrees to 1e-4.
    """
    problem, ev, cost = _setup(tiny_resnet)
    policy = problem.space.uniform(4, 8, sparsity=0.25)
    qmodel = ev.engine.apply(policy)
    ev.engine.reestimate_batchnorm(ev._bn_batch)
    qmodel = ev.finetune(qmodel, 5)
    layers = [m for m in qmodel.modules() if isinstance(m, QuantLayer)]
    assert all(m.qat for m in layers) and sum(m.correction is not None for m in layers) >= 5
    report = _export(problem, ev, cost, qmodel, policy, tmp_path / "m.ampq")
    loaded = load_exported(tmp_path / "m.ampq")
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    masks = keep_masks(problem.analysis, policy)
    for name, (inp, out) in _layer_io(qmodel, problem.analysis.names, x).items():
        layer = problem.analysis.layer(name)
        in_keep = torch.from_numpy(np.concatenate([np.repeat(masks[s.group], s.features_per_channel)
                                                   for s in layer.in_segments]))
        ql = qmodel.get_submodule(name)
        inp = inp[:, in_keep]
        if ql.act is not None:
            inp = fake_quantize(inp.clone(), *ql.act)
        with torch.no_grad():
            mine = loaded.get_submodule(name)(inp)
        kept = out[:, torch.from_numpy(masks[layer.out_group])]
        assert (mine - kept).abs().max() <= 1e-4, name
    assert report.agreement >= 0.9
    assert report.max_abs_diff < 0.1  # at most a few activation steps, never a wrong network


def test_file_is_smaller_than_float_and_its_payload_is_exactly_the_priced_layers(tiny_resnet, tmp_path):
    problem, ev, cost = _setup(tiny_resnet)  # no container priced: the price is the tensors alone
    policy = problem.space.uniform(4, 8, sparsity=0.25)
    report = _export(problem, ev, cost, ev.engine.apply(policy), policy, tmp_path / "m.ampq")
    assert report.file_bytes == (tmp_path / "m.ampq").stat().st_size == report.payload_bytes + report.header_bytes
    assert report.file_bytes < report.float_file_bytes / 5
    assert report.payload_bytes == report.predicted_bytes  # codes, scales, bit bytes, biases: byte for byte
    assert report.header_bytes < 2000
    assert report.to_dict()["real_over_predicted"] == pytest.approx(report.file_bytes / report.predicted_bytes)


def _random_policies(space, n, seed):
    """``n`` random policies of ``space``, resolved; each prunes channels and mixes >= 3 bit-widths."""
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        policy = space.resolve(space.sample(rng))
        bits = {b for _, lp in policy for b in lp.weight_bits}
        if 0 in bits and len(bits - {0}) >= 3:
            out.append(policy)
    return out


@pytest.mark.parametrize("arch", ["resnet8", "plaincnn"])
def test_written_file_weighs_what_the_cost_model_prices(arch, tmp_path):
    """Header priced once (container_bytes), layers priced byte for byte: the file is its price.

    Random policies (pruned, mixed bits incl. float channels) on the reference ResNet-8 and
    a small plain CNN (random weights: the sizes do not depend on their values).
    """
    torch.manual_seed(0)
    model = randomise_batchnorm(REFERENCE_MODELS[arch]() if arch == "resnet8" else PlainCNN(width=4))
    problem, ev, cost = _setup(model, container=True)
    assert cost.container_bytes > 500  # the compressed graph: what the old price left out
    for i, policy in enumerate(_random_policies(problem.space, 5, seed=7)):
        x = torch.zeros(2, 1, 28, 28)
        report = _export(problem, ev, cost, ev.engine.apply(policy), policy, tmp_path / f"{i}.ampq", x=x)
        assert report.payload_bytes == report.predicted_bytes - cost.container_bytes, i
        assert abs(report.file_bytes / report.predicted_bytes - 1) <= 0.02, i
        assert abs(report.file_bytes - report.predicted_bytes) <= 0.03 * cost.container_bytes, i  # zlib's variation


class TinyViT(nn.Module):
    """Tensors outside any quantized layer: a class token, a position embedding, a layer scale,
    LayerNorms, attention (its input projection a bare parameter of nn.MultiheadAttention) and a
    BatchNorm after an addition (not folded: it keeps its running statistics)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 7, stride=7)
        self.skip = nn.Conv2d(1, dim, 7, stride=7)
        self.bn = nn.BatchNorm2d(dim)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, 17, dim))
        self.layer_scale = nn.Parameter(torch.full((dim,), 0.5))
        self.block = nn.TransformerEncoderLayer(dim, 2, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.patch(x) + self.skip(x)).flatten(2).transpose(1, 2)
        h = torch.cat([self.class_token.expand(h.shape[0], -1, -1), h], dim=1) + self.pos_embedding
        h = h + self.layer_scale * self.block(h)
        return self.head(self.norm(h)[:, 0])


@pytest.mark.parametrize("arch", ["tinyvit", "resnet8"])
def test_every_tensor_the_model_keeps_is_priced_and_the_file_weighs_its_price(arch, tmp_path):
    """The float size is every parameter and buffer the deployed (BatchNorm-folded) model holds,
    each in a quantized layer or listed as kept float with its bytes; the written files weigh their
    price byte for byte apart from the compressed header."""
    from automl.quant.engine import fold_batchnorm

    torch.manual_seed(0)
    model = randomise_batchnorm(TinyViT() if arch == "tinyvit" else REFERENCE_MODELS[arch]())
    problem, ev, cost = _setup(model, container=True)
    folded, _ = fold_batchnorm(problem.task.model, problem.analysis)
    real = sum(t.numel() * t.element_size() for t in folded.state_dict().values())
    assert problem.analysis.float_bytes == real
    bit_bytes = sum(layer.out_channels for layer in problem.analysis.layers)  # one bit-width byte per channel
    assert cost.float_costs().size_bytes == cost.container_bytes + bit_bytes + real
    for i, policy in enumerate(_random_policies(problem.space, 3, seed=7)):
        x = torch.zeros(2, 1, 28, 28)
        report = _export(problem, ev, cost, ev.engine.apply(policy), policy, tmp_path / f"{i}.ampq", x=x)
        assert report.payload_bytes == report.predicted_bytes - cost.container_bytes, i
        assert abs(report.file_bytes / report.predicted_bytes - 1) <= 0.02, i


def test_float_size_is_the_file_of_the_unpruned_float_model(plain_cnn, tmp_path):
    """What x-relative budgets divide by: the .ampq file of every channel at 32 bits."""
    problem, ev, _ = _setup(plain_cnn)
    space = SearchSpace.build(problem.analysis, SpaceConfig(pin_first_last=False, act_bits=(8, 32)))
    engine = QuantEngine(ev.float_model, problem.analysis, space, [torch.randn(4, 1, 28, 28)])
    header = container_bytes(plain_cnn, problem.analysis, space, torch.zeros(1, 1, 28, 28))
    cost = CostModel(problem.analysis, space, container_bytes=header)
    policy = space.uniform(32, 32)
    report = export_policy(engine.apply(policy), problem.analysis, policy, tmp_path / "f.ampq",
                           sample_input=torch.zeros(2, 1, 28, 28), float_model=ev.float_model, cost_model=cost, repeats=1)
    assert report.predicted_bytes == cost.float_costs().size_bytes
    # Layers byte for byte; the header priced is a quantized graph's, with activation quantizer
    # nodes the float graph lacks (~10 % of this tiny header, 0.6 % of the file).
    assert report.payload_bytes == report.predicted_bytes - cost.container_bytes
    assert 0 <= report.predicted_bytes - report.file_bytes <= 0.15 * cost.container_bytes
    assert report.file_bytes / report.predicted_bytes >= 0.98
    # torch.save keeps the BatchNorms unfolded, plus zip and pickle framing: larger.
    assert report.file_bytes < report.float_file_bytes


def test_stored_codes_fit_their_bit_width_and_dequantize_to_the_evaluated_weights(tiny_resnet, tmp_path):
    problem, ev, cost = _setup(tiny_resnet)
    policy = _mixed_policy(problem)
    qmodel = ev.engine.apply(policy)
    _export(problem, ev, cost, qmodel, policy, tmp_path / "m.ampq")
    header, tensors = read_export(tmp_path / "m.ampq")
    masks = keep_masks(problem.analysis, policy)
    seen_bits = set()
    for name in problem.analysis.names:
        layer = problem.analysis.layer(name)
        out_keep = masks[layer.out_group]
        bits = tensors[f"{name}.bits"].astype(int)
        assert bits.tolist() == np.asarray(policy[name].weight_bits)[out_keep].tolist()
        stream, start = tensors[f"{name}.codes"], 0
        in_keep = np.concatenate([np.repeat(masks[s.group], s.features_per_channel) for s in layer.in_segments])
        weight = qmodel.get_submodule(name).weight.detach()[torch.from_numpy(out_keep)]
        weight = weight[:, torch.from_numpy(in_keep)] if not layer.depthwise else weight
        rows = weight.reshape(len(bits), -1).numpy()
        scales = tensors[f"{name}.scale"]
        quant_index = np.cumsum(bits < 32) - 1
        # One stream per layer: the narrowest width's channels first, each code at its width, one byte pad.
        total = int(bits[bits < 32].sum()) * rows.shape[1]
        assert stream.dtype == np.uint8 and stream.size == math.ceil(total / 8)
        planes = np.unpackbits(stream, bitorder="little")
        for b in sorted(set(bits) - {32}):
            seen_bits.add(int(b))
            sel = bits == b
            count = int(sel.sum()) * rows.shape[1]
            codes = unpack_codes(np.packbits(planes[start : start + count * b], bitorder="little"), int(b), count)
            start += count * b
            codes = codes.reshape(-1, rows.shape[1])
            assert np.abs(codes).max() <= 2 ** (b - 1) - 1
            assert np.allclose(codes * scales[quant_index[sel]][:, None], rows[sel], atol=1e-6)
        assert start == total
        assert np.array_equal(tensors[f"{name}.float"], rows[bits == 32])  # stored even when empty
    assert len(seen_bits) >= 3


def test_pruned_channels_are_physically_gone(plain_cnn, tmp_path):
    problem, ev, cost = _setup(plain_cnn)
    policy = problem.space.uniform(4, 8, sparsity=0.5)
    report = _export(problem, ev, cost, ev.engine.apply(policy), policy, tmp_path / "m.ampq")
    loaded = load_exported(tmp_path / "m.ampq")
    masks = keep_masks(problem.analysis, policy)
    for layer in problem.analysis.layers:
        assert loaded.get_submodule(layer.name).weight.shape[0] == int(masks[layer.out_group].sum())
    assert report.channels_exported < report.channels_float
    assert report.params_exported < report.params_float / 2
    assert not any(isinstance(m, (QuantLayer, nn.BatchNorm2d)) for m in loaded.modules())


def test_loads_in_a_fresh_process_without_the_model_class(tmp_path):
    torch.manual_seed(0)
    problem, ev, cost = _setup(randomise_batchnorm(_UserNet()))
    policy = problem.space.uniform(4, 8, sparsity=0.25)
    qmodel = ev.engine.apply(policy)
    _export(problem, ev, cost, qmodel, policy, tmp_path / "m.ampq")
    x = torch.randn(8, 1, 28, 28)
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", qmodel(x).numpy())
    # The code under test, not an installed copy; its root also holds tests/, which must stay unimported.
    root = str(Path(automl.__file__).resolve().parent.parent)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {root!r})
        import numpy as np, torch
        from automl.export.ampq import load_exported
        model = load_exported("m.ampq")
        out = model(torch.from_numpy(np.load("x.npy")))
        assert np.abs(out.detach().numpy() - np.load("expected.npy")).max() <= 1e-4
        assert not any(m.startswith("tests") for m in sys.modules), "loading imported the test code"
        assert "_UserNet" not in open("m.ampq", "rb").read().decode("latin-1")
        print("ok", tuple(out.shape))
    """)
    # -I: isolated mode: no PYTHONPATH, no current directory, only the package root inserted above.
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok (8, 10)"


def _rewrite(path, blob):
    path.write_bytes(blob)
    return path


def test_corrupt_unknown_version_and_foreign_files_get_clear_errors(tiny_resnet, tmp_path):
    problem, ev, cost = _setup(tiny_resnet)
    policy = problem.space.uniform(4, 8)
    _export(problem, ev, cost, ev.engine.apply(policy), policy, tmp_path / "m.ampq")
    blob = (tmp_path / "m.ampq").read_bytes()
    flipped = bytearray(blob)
    flipped[-10] ^= 0xFF
    cases = {
        "truncated": (blob[:-100], "is corrupt: expected .* data bytes"),
        "flipped": (bytes(flipped), "is corrupt: .*truncated or modified"),
        "foreign": (b"PK\x03\x04" + blob[4:], "not an automl-mpq export"),
        "version": (blob[:8] + struct.pack("<I", 99) + blob[12:], "format version 99, expected 2"),
        "header": (blob[:16] + b"garbage" + blob[23:], "corrupt header"),
    }
    for name, (data, message) in cases.items():
        path = _rewrite(tmp_path / f"{name}.ampq", data)
        with pytest.raises(ExportError, match=message):
            load_exported(path)
    assert issubclass(ExportError, AutoMLError)


def test_a_file_naming_a_disallowed_function_is_refused(tiny_resnet, tmp_path):
    problem, ev, cost = _setup(tiny_resnet)
    policy = problem.space.uniform(4, 8)
    _export(problem, ev, cost, ev.engine.apply(policy), policy, tmp_path / "m.ampq")
    blob = (tmp_path / "m.ampq").read_bytes()
    (head_len,) = struct.unpack_from("<I", blob, 12)
    header = json.loads(zlib.decompress(blob[16 : 16 + head_len]))
    node = next(n for n in header["nodes"] if n[1] == "call_function")
    node[2] = "builtins:exec"
    head = zlib.compress(json.dumps(header).encode())
    path = _rewrite(tmp_path / "evil.ampq", blob[:12] + struct.pack("<I", len(head)) + head + blob[16 + head_len :])
    with pytest.raises(ExportError, match="cannot name"):
        load_exported(path)


def test_a_policy_the_model_does_not_run_is_refused(tiny_resnet, tmp_path):
    problem, ev, cost = _setup(tiny_resnet)
    qmodel = ev.engine.apply(problem.space.uniform(4, 8))
    with pytest.raises(PolicyError, match="Pass the policy applied to this model"):
        _export(problem, ev, cost, qmodel, problem.space.uniform(8, 8), tmp_path / "m.ampq")


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 24), n=st.integers(0, 50), seed=st.integers(0, 100))
def test_packed_codes_round_trip_in_exactly_b_bits_each(bits, n, seed):
    qmax = 2 ** (bits - 1) - 1
    codes = np.random.default_rng(seed).integers(-qmax, qmax + 1, n)
    packed = pack_codes(codes, bits)
    assert packed.size == math.ceil(n * bits / 8)
    assert np.array_equal(unpack_codes(packed, bits, n), codes)
