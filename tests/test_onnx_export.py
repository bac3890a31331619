"""The ONNX export: QDQ int8, pruned channels gone, runs in ONNX Runtime without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from automl.analysis.prune import keep_masks
from automl.cli import main as cli_main
from automl.cost.model import CostModel
from automl.errors import ExportError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.task import Task
from automl.export import ort
from automl.export.ampq import export_policy
from automl.export.onnx import ampq_to_onnx, export_file, export_onnx, layer_precisions
from tests.conftest import make_loaders, randomise_batchnorm


def onnx_vs_model(qmodel: nn.Module, ampq_path) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray, np.ndarray]:
    """The ONNX file made from ``ampq_path`` (checked) run in ONNX Runtime on 128 fixed inputs:
    the ONNX model, the in-memory model's outputs, ONNX Runtime's, and their per-sample max
    absolute difference."""
    model = ampq_to_onnx(ampq_path)
    onnx.checker.check_model(model, full_check=True)
    x = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = qmodel(x).numpy()
    got = ort.predict(model.SerializeToString(), x.numpy())
    return model, expected, got, np.abs(got - expected).max(axis=1)

def _setup(model: nn.Module) -> tuple[Problem, Evaluator, CostModel]:
    loaders = make_loaders()
    task = Task(model, torch.zeros(2, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"])
    problem = Problem.from_task(task)
    return problem, Evaluator(problem, EvalConfig(fidelity=1, bn_samples=0, early_stop=False)), CostModel(problem.analysis, problem.space)


def _ampq(problem, ev, policy, path):
    qmodel = ev.engine.apply(policy)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    export_policy(qmodel, problem.analysis, policy, path, sample_input=x, float_model=ev.float_model, repeats=1)
    return qmodel


def _mixed_policy(problem):
    rng = np.random.default_rng(3)
    while True:
        policy = problem.space.resolve(problem.space.sample(rng))
        try:
            keep_masks(problem.analysis, policy)
        except Exception:  # noqa: BLE001 - a coupled group lost every channel
            continue
        bits = {b for _, lp in policy for b in lp.weight_bits}
        if 0 in bits and len(bits - {0, 32}) >= 3:
            return policy


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Layer name -> the weight its Conv/Gemm multiplies by (int8 codes or float), found through the
    weight's initializer, which keeps the layer's name (``<layer>[.op].weight[_int8]`` or
    ``<layer>.weight_codes``), past its Cast, Mul, DequantizeLinear or Identity."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for node in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")):
        name = node.input[1]
        while name not in inits:
            name = producer[name].input[0]
        layer = name.removesuffix("_int8").removesuffix(".weight_codes").removesuffix(".weight_t")
        layer = layer.removesuffix(".weight").removesuffix(".op")
        w = numpy_helper.to_array(inits[name])
        out[layer] = w.T if node.op_type == "MatMul" else w  # MatMul multiplies by the transposed weight
    return out


@pytest.mark.parametrize("fixture", ["tiny_resnet", "plain_cnn"])
def test_onnx_outputs_match_the_in_memory_quantized_model(fixture, request, tmp_path):
    """Equal up to rounding ties: ONNX Runtime computes ``x / scale`` where torch computes
    ``x * (1 / scale)``; the two differ in the last bit, which moves a value lying within an
    ulp of a rounding midpoint by one activation step. So most samples agree to 1e-4, none
    by more than a few steps, and the predicted classes agree."""
    problem, ev, _ = _setup(request.getfixturevalue(fixture))
    for policy in (problem.space.uniform(4, 8, sparsity=0.25), _mixed_policy(problem)):
        qmodel = _ampq(problem, ev, policy, tmp_path / "m.ampq")
        _, expected, got, diff = onnx_vs_model(qmodel, tmp_path / "m.ampq")
        assert np.mean(diff <= 1e-4) >= 0.25
        assert diff.max() < 0.1 * np.abs(expected).max()
        assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.97


def test_a_quantized_layer_behind_a_float_input_keeps_float_weights_on_its_grid(plain_cnn, tmp_path):
    """Float input -> float kernel: int8 weights would only add a DequantizeLinear per run."""
    from search_spaces import LayerPolicy, Policy
    from search_spaces.space import SpaceConfig

    loaders = make_loaders()
    task = Task(plain_cnn, torch.zeros(2, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"])
    problem = Problem.from_task(task, SpaceConfig(weight_bits=(0, 4, 6), act_bits=(8, 32), pin_first_last=False))
    ev = Evaluator(problem, EvalConfig(fidelity=1, bn_samples=0, early_stop=False))
    names = problem.analysis.names
    float_in, quant_in = names[1], names[2]
    base = problem.space.uniform(4, 8).as_dict()
    policy = Policy(tuple((n, LayerPolicy(32 if n == float_in else 8, base[n].weight_bits)) for n in names))
    qmodel = _ampq(problem, ev, policy, tmp_path / "m.ampq")
    model = ampq_to_onnx(tmp_path / "m.ampq")
    weights = _weights(model)
    assert weights[float_in].dtype == np.float32
    assert weights[quant_in].dtype == np.int8
    # the float weights are still on the 4-bit grid: at most 15 distinct values per output channel
    w = weights[float_in].reshape(weights[float_in].shape[0], -1)
    assert max(len(np.unique(row)) for row in w) <= 15
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = qmodel(x).numpy()
    got = ort.predict(model.SerializeToString(), x.numpy())
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())


def test_quantized_layers_are_qdq_with_int8_codes_on_their_grid(tiny_resnet, tmp_path):
    problem, ev, _ = _setup(tiny_resnet)
    policy = _mixed_policy(problem)
    _ampq(problem, ev, policy, tmp_path / "m.ampq")
    model = ampq_to_onnx(tmp_path / "m.ampq")
    ops = [n.op_type for n in model.graph.node]
    # activations quantized onto integer codes (Div, Round, Clip); weights stored as int8 codes and cast;
    # nothing the runtime rewrites (no DequantizeLinear)
    assert "Round" in ops and "Cast" in ops and "DequantizeLinear" not in ops
    masks = keep_masks(problem.analysis, policy)
    weights = _weights(model)
    assert set(weights) == set(problem.analysis.names)
    int8_layers = 0
    for layer in problem.analysis.layers:
        w = weights[layer.name]
        bits = np.asarray(policy[layer.name].weight_bits)[masks[layer.out_group]]
        if bits.max() <= 8:
            int8_layers += 1
            assert w.dtype == np.int8
            limit = 2 ** (bits - 1) - 1
            assert (np.abs(w.reshape(len(bits), -1)).max(axis=1) <= limit).all(), layer.name
        else:
            assert w.dtype == np.float32
    assert int8_layers >= 2
    assert layer_precisions(model)["int8"] == int8_layers
    # no float copy of an int8 weight is left in the file
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in {t.name for t in model.graph.initializer}
                   for n in model.graph.node)


def test_pruned_channels_are_absent_from_the_onnx_weight_shapes(plain_cnn, tmp_path):
    problem, ev, _ = _setup(plain_cnn)
    policy = problem.space.uniform(4, 8, sparsity=0.5)
    _ampq(problem, ev, policy, tmp_path / "m.ampq")
    weights = _weights(ampq_to_onnx(tmp_path / "m.ampq"))
    masks = keep_masks(problem.analysis, policy)
    total = 0
    for layer in problem.analysis.layers:
        w = weights[layer.name]
        kept = int(masks[layer.out_group].sum())
        assert w.shape[0] == kept, layer.name
        assert kept < layer.out_channels or not problem.space.layer(layer.name).prunable, layer.name
        total += w.size
    assert total < sum(lay.weight_params for lay in problem.analysis.layers) / 2


def test_runs_in_a_fresh_process_with_onnxruntime_and_numpy_only(tiny_resnet, tmp_path):
    problem, ev, _ = _setup(randomise_batchnorm(tiny_resnet))
    policy = problem.space.uniform(4, 8, sparsity=0.25)
    qmodel = _ampq(problem, ev, policy, tmp_path / "m.ampq")
    export_onnx(tmp_path / "m.ampq", tmp_path / "m.onnx")
    x = torch.randn(16, 1, 28, 28)
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", qmodel(x).numpy())
    code = textwrap.dedent("""
        import sys
        import numpy as np, onnxruntime as ort
        sess = ort.InferenceSession("m.onnx", providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: np.load("x.npy")})[0]
        expected = np.load("expected.npy")
        assert (out.argmax(1) == expected.argmax(1)).mean() >= 0.9
        assert np.abs(out - expected).max() < 0.1 * np.abs(expected).max()
        assert "torch" not in sys.modules, "onnxruntime pulled in torch"
        assert not any(m.startswith("automl") for m in sys.modules)
        print("ok", out.shape)
    """)
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok (16, 10)"


class _Frac(nn.Module):
    """torch.frac: stored by the .ampq format, but it has no ONNX form in opset 13."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(torch.frac(self.conv(x)), 1))


def _cli(capsys, *argv):
    code = cli_main(["export", *map(str, argv)])
    return code, capsys.readouterr().err


def test_bad_input_gives_one_message_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "run"
    empty.mkdir()
    code, err = _cli(capsys, empty)
    assert code == 2 and "has no" not in err and "without best_model.ampq" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

    torch.manual_seed(0)
    problem, ev, _ = _setup(_Frac().eval())
    policy = problem.space.uniform(8, 8)
    _ampq(problem, ev, policy, tmp_path / "frac.ampq")
    with pytest.raises(ExportError, match="cannot be expressed in ONNX.*frac"):
        export_file(tmp_path / "frac.ampq", "onnx", tmp_path / "frac.onnx")
    code, err = _cli(capsys, tmp_path / "frac.ampq", "--output", tmp_path / "frac.onnx")
    assert code == 2 and "cannot be expressed in ONNX" in err
    assert not (tmp_path / "frac.onnx").exists()

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = _cli(capsys, tmp_path / "frac.ampq", "--format", "ampq", "--output", blocker / "x.ampq")
    assert code == 2 and "cannot write" in err and "Traceback" not in err


def test_cli_exports_a_run_directory_to_onnx_and_ampq(tiny_resnet, tmp_path, capsys):
    problem, ev, _ = _setup(tiny_resnet)
    run = tmp_path / "run"
    _ampq(problem, ev, problem.space.uniform(4, 8, sparsity=0.25), run / "best_model.ampq")
    assert cli_main(["export", str(run)]) == 0
    onnx.checker.check_model(onnx.load(run / "best_model.onnx"))
    assert cli_main(["export", str(run), "--format", "ampq", "--output", str(tmp_path / "copy.ampq")]) == 0
    assert (tmp_path / "copy.ampq").read_bytes() == (run / "best_model.ampq").read_bytes()
    capsys.readouterr()


class _ReLU6Net(nn.Module):
    """MobileNetV2's activation: ReLU6, whose bound 6 lies far above the 8-bit grid of small activations."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(),
            nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(),
        )
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def test_relu6_clips_moved_onto_the_codes_saturate_to_the_code_type(tmp_path):
    """ReLU6's bound, divided by a small activation step, is a code above 255: it must saturate to
    255 (the type's limit, where QuantizeLinear saturates anyway), not wrap around as a plain cast
    to uint8 does (6 / 0.0229 = 262 was stored as 6 and clipped every activation above 6 steps)."""
    import onnxruntime as rt

    torch.manual_seed(0)
    problem, ev, _ = _setup(randomise_batchnorm(_ReLU6Net()))
    policy = problem.space.uniform(8, 8)
    qmodel = _ampq(problem, ev, policy, tmp_path / "m.ampq")
    model = ampq_to_onnx(tmp_path / "m.ampq", int8_kernels=True)  # the QDQ graph, whose clips move onto codes
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    saturated = 0
    for clip in (n for n in model.graph.node if n.op_type == "Clip" and n.input[0] in producer):
        if producer[clip.input[0]].op_type == "QuantizeLinear":  # a clip moved onto the codes
            hi = inits[clip.input[2]]
            saturated += int(hi.dtype == np.uint8 and hi == 255)  # an unsigned grid behind ReLU6
    assert saturated >= 2  # the 8-bit steps of these activations put 6 beyond code 255
    x = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = qmodel(x).numpy()
    opts = rt.SessionOptions()
    opts.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = rt.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    diff = np.abs(got - expected).max(axis=1)
    assert np.mean(diff <= 1e-4 * np.abs(expected).max()) >= 0.95
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.99


@pytest.mark.parametrize("fixture", ["tiny_resnet", "plain_cnn"])
def test_a_default_onnx_runtime_session_computes_the_searched_model(fixture, request, tmp_path):
    """ONNX Runtime's default optimisations rewrote QDQ graphs: float biases and weights of layers
    between activation quantizers rounded onto grids of their own (WeightBiasQuantization), layers
    fused into int8 kernels that requantize with their own rounding. With the codes dequantized by
    Cast and Mul nothing is rewritten: every activation code is the searched model's except by one
    step at a rounding tie of its own input, and the predicted classes agree."""
    from tests.zoo_support import onnx_agreement

    problem, ev, _ = _setup(request.getfixturevalue(fixture))
    x = torch.randn(256, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    for policy in (problem.space.uniform(4, 8, sparsity=0.25), _mixed_policy(problem)):
        qmodel = ev.prepare_final(policy)
        export_policy(qmodel, problem.analysis, policy, tmp_path / "m.ampq", sample_input=x[:8],
                      float_model=ev.float_model, repeats=1)
        report = onnx_agreement(qmodel, problem.analysis, policy, ampq_to_onnx(tmp_path / "m.ampq").SerializeToString(), x)
        assert report["untied"] == 0.0, report
        assert report["argmax"] >= 0.99 and report["exact"] >= 0.99, report


class _VGGHead(nn.Module):
    """VGG's classifier input at a small image: adaptive 7x7 pooling of a 2x2 map, flattened into Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d((7, 7))
        self.fc = nn.Linear(4 * 49, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def test_adaptive_pooling_to_a_size_that_does_not_divide_the_input_exports(tmp_path):
    """The TorchScript exporter refuses adaptive_avg_pool2d from 2x2 to 7x7 (torchvision's VGG at 32x32)."""
    from tests.zoo_support import onnx_agreement

    torch.manual_seed(0)
    problem, ev, _ = _setup(_VGGHead().eval())
    policy = problem.space.resolve(problem.space.uniform(8, 8))
    qmodel = _ampq(problem, ev, policy, tmp_path / "m.ampq")
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    report = onnx_agreement(qmodel, problem.analysis, policy, ampq_to_onnx(tmp_path / "m.ampq").SerializeToString(), x)
    assert report["untied"] == 0.0 and report["argmax"] >= 0.99, report
