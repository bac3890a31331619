"""The model layer on one device: the resolver, moves that say so, worker devices, and the audit
(:mod:`tests.device_audit`) of a whole search and its exports for CPU-only code."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from automl.errors import ConfigError
from automl.quant.device import (
    check_device_spec,
    model_device,
    on_cpu,
    place_model,
    resolve_device,
    to_device,
    worker_devices,
)
from tests.device_audit import DeviceAudit

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("spec", ["auto", "cpu", "CPU", " cuda ", "cuda:0", "cuda:12", torch.device("cpu")])
def test_device_names_are_checked_without_the_hardware(spec):
    assert check_device_spec(spec) in ("auto", "cpu", "cuda", "cuda:0", "cuda:12")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "mps", "", 0, None])
def test_a_malformed_device_name_is_refused_with_the_choices(spec):
    with pytest.raises(ConfigError, match=r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'.*got"):
        check_device_spec(spec)


def test_auto_is_the_cpu_without_cuda_and_a_gpu_with_it():
    assert resolve_device("auto").type == ("cpu" if NO_CUDA else "cuda")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_config_error_not_a_cpu_fallback(spec):
    with pytest.raises(ConfigError, match=rf"device '{spec}' was asked for, but CUDA is not available.*--device cpu"):
        resolve_device(spec)


def test_a_gpu_index_past_the_last_gpu_names_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"has 2 GPU\(s\): cuda:0, cuda:1"):
        resolve_device("cuda:2")


def test_workers_get_devices_round_robin(monkeypatch):
    assert worker_devices(3, "cpu") == ("cpu",) * 3
    assert worker_devices(2, ["cpu"]) == ("cpu", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert worker_devices(3, "cuda:0,cuda:1") == ("cuda:0", "cuda:1", "cuda:0")
    assert worker_devices(5, "auto") == ("cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0")
    assert worker_devices(2, "cuda:1, cpu") == ("cuda:1", "cpu")
    with pytest.raises(ConfigError, match="has 2 GPU"):
        worker_devices(2, "cuda:0,cuda:3")
    with pytest.raises(ConfigError, match="at least one device"):
        worker_devices(2, " , ")
    with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
        worker_devices(0, "auto")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_workers_without_gpus_share_the_cpu_and_cuda_is_refused():
    assert worker_devices(2, "auto") == ("cpu", "cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        worker_devices(2, "cuda")


def test_a_model_elsewhere_is_moved_and_the_move_is_said(caplog):
    model = nn.Linear(3, 2)
    with caplog.at_level(logging.WARNING, logger="automl.device"):
        assert place_model(model, torch.device("cpu")) is model  # already there: silent
        assert not caplog.records
        place_model(model, torch.device("meta"))  # 'meta' stands in for a GPU: a device with no data
    assert model_device(model) == torch.device("meta")
    assert "Task.model lies on cpu; moving it to meta" in caplog.text


def test_batches_elsewhere_are_moved_once_said(caplog):
    with caplog.at_level(logging.WARNING, logger="automl.device"):
        x, y = to_device((torch.zeros(2), torch.ones(2)), torch.device("meta"), "val_loader")
        to_device(torch.zeros(1), torch.device("meta"), "val_loader")
    assert x.device.type == y.device.type == "meta"
    assert caplog.text.count("val_loader yields tensors on cpu; they are moved to meta") == 1


def test_a_model_split_over_devices_is_refused():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).to("meta"))
    with pytest.raises(ConfigError, match="several devices"):
        model_device(model)


def test_on_cpu_copies_only_what_is_elsewhere():
    model = nn.Linear(3, 2)
    assert on_cpu(model) is model
    meta = nn.Linear(3, 2).to("meta")
    with pytest.raises(NotImplementedError):  # meta tensors hold no data to copy: the copy goes through .cpu()
        on_cpu(meta)


# the audit ----------------------------------------------------------------------------------
def test_the_audit_catches_a_factory_without_device_a_cpu_generator_and_numpy_on_the_device():
    import tests.device_audit as audit_module

    # code of an audited package, compiled under its file name, as the engine's old lines read
    source = ("import torch\n"
              "def bad(w):\n"
              "    b = torch.zeros(w.shape[0])\n"
              "    g = torch.Generator().manual_seed(0)\n"
              "    i = torch.randint(3, (2,), generator=g, device=w.device)\n"
              "    return w.numpy(), b, i\n"
              "def good(w):\n"
              "    b = w.new_zeros(w.shape[0])\n"
              "    g = torch.Generator(device=w.device).manual_seed(0)\n"
              "    i = torch.randint(3, (2,), generator=g, device=w.device)\n"
              "    return w.detach().cpu().numpy(), b, i\n")
    namespace: dict = {}
    exec(compile(source, str(audit_module.ROOT / "automl" / "quant" / "_probe.py"), "exec"), namespace)
    w = torch.ones(3, 2)
    with DeviceAudit(torch.device("cpu")) as audit:
        namespace["good"](w)
    assert not audit.findings, audit.report()
    with DeviceAudit(torch.device("cpu")) as audit:
        namespace["bad"](w)
    assert sorted(audit.findings) == [f"automl/quant/_probe.py:{n}" for n in (3, 4, 6)], audit.report()
    assert "torch.zeros(...) without device=" in audit.report()
    assert "torch.Generator() makes a generator on the CPU" in audit.report()
    assert "Tensor.numpy() on a tensor that did not come from .cpu()" in audit.report()
    assert torch.Generator is audit._generator  # the class is restored


def test_a_whole_search_and_its_exports_make_every_tensor_on_the_models_device(tmp_path):
    """The default-like search (fidelity 2, Hessian sensitivities, ilp_tpe, final fine-tune,
    .ampq and ONNX exports) of a tiny task on the default device (``auto``: the CPU here, a GPU
    where there is one): no stage makes a tensor or generator off that device."""
    import automl
    from tests.tasks import tiny

    task = tiny()
    with DeviceAudit(resolve_device("auto")) as audit:
        result = automl.search(task, budget="size<=0.25x", quiet=True, run={"evaluations": 4, "output": str(tmp_path)}, finetune={"steps": 2})
    assert result.best is not None
    run_dirs = [p.parent for p in tmp_path.glob("runs/*/best_model.ampq")]
    assert run_dirs and (run_dirs[0] / "best_model.onnx").is_file()  # the exports ran inside the audit
    assert audit.calls > 10_000
    assert not audit.findings, "tensors or generators made off the model's device:\n" + audit.report()


class _BiasFree(nn.Module):
    """Bias-free layers with and without a BatchNorm after them (the engine gives those a zero bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8 * 7 * 7, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def test_every_method_of_the_model_layer_makes_its_tensors_on_the_models_device(tmp_path):
    """What the default search does not run: Taylor importance, data-free calibration, AdaQuant,
    fidelity 3, LSQ and PSG fine-tunes, Fisher sensitivities, N:M banks, on bias-free layers;
    then the .ampq and ONNX exports."""
    from automl.evaluation.curvature import CurvatureConfig, curvature_sensitivities
    from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
    from automl.evaluation.finetune import FinetuneConfig
    from automl.evaluation.task import Task
    from automl.export.ampq import export_policy
    from automl.export.onnx import export_onnx
    from search_spaces.space import SpaceConfig
    from tests.conftest import make_loaders, randomise_batchnorm

    torch.manual_seed(0)
    model = randomise_batchnorm(_BiasFree())
    loaders = make_loaders()
    task = Task(model, torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"])
    device = resolve_device("auto")
    with DeviceAudit(device) as audit:
        problem = Problem.from_task(task, SpaceConfig(nm_patterns=("2:4-T",), importance="taylor"), device=device)
        ev = Evaluator(problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=3, qat_steps=2, ptq="adaquant", adaquant_steps=2,
                                           calibration="data-free", datafree_samples=8, datafree_steps=2, qat_psg=0.5))
        policy = problem.space.sample(__import__("numpy").random.default_rng(0))
        ev.evaluate(policy)
        xs, _, _ = ev._split("val")
        for method in ("fisher", "hessian"):
            curvature_sensitivities(ev.engine, problem.space, xs, method, CurvatureConfig(samples=8, batch_size=4))
        _, tuned = ev.final(policy, 2, finetune=FinetuneConfig(steps=2, eval_every=1, lsq=True))
        export_policy(tuned, problem.analysis, policy, tmp_path / "m.ampq", sample_input=xs[0][:2],
                      float_model=ev.float_model, repeats=1)
        export_onnx(tmp_path / "m.ampq", tmp_path / "m.onnx")
    assert audit.calls > 1_000
    assert not audit.findings, "tensors or generators made off the model's device:\n" + audit.report()


def test_device_names_are_checked_without_importing_torch():
    """A configuration checks --device before torch is imported (automl.quant.device_names)."""
    import subprocess
    import sys

    code = ("import sys; from automl.quant.device_names import check_device_spec, split_devices; "
            "assert split_devices('cuda:0, cuda:1') == ('cuda:0', 'cuda:1'); assert check_device_spec('AUTO') == 'auto'; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# speed on a GPU without changing decisions ---------------------------------------------------
def _small_problem(**config):
    from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
    from tests.tasks import small_resnet

    problem = Problem.from_task(small_resnet(), device="cpu")
    return problem, Evaluator(problem, EvalConfig(**{"fidelity": 1, "bn_samples": 0, "early_stop": False, **config}))


def _policies(problem, n=4):
    import numpy as np

    rng = np.random.default_rng(0)
    return [problem.space.uniform(8)] + [problem.space.sample(rng) for _ in range(n - 1)]


class _HostReads(__import__("torch").overrides.TorchFunctionMode):
    """Counts the calls that wait for a GPU: reading a value or a shape that depends on values."""

    READS = {torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__bool__, torch.Tensor.__int__,
             torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.nonzero, torch.nonzero}

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += func in self.READS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fidelity", [1, 2])
def test_an_evaluation_reads_the_device_a_fixed_number_of_times_whatever_the_batches(fidelity):
    """No host sync per batch or per layer in the evaluation path: only the three metrics at the end."""
    counts = []
    for batch in (100, 25):
        problem, ev = _small_problem(fidelity=fidelity, eval_batch_size=batch)
        policies = _policies(problem)
        ev.evaluate(policies[0])
        with _HostReads() as reads:
            for p in policies[1:]:
                ev.evaluate(p)
        counts.append(reads.n / (len(policies) - 1))
    assert counts[0] == counts[1] <= 3, counts


def test_large_evaluation_batches_score_bit_for_bit_as_the_loaders_batches():
    problem, ev = _small_problem(fidelity=2)
    _, big = _small_problem(fidelity=2, eval_batch_size=200)
    assert len(ev._split("val")[0]) == 2 and len(big._split("val")[0]) == 1
    for p in _policies(problem):
        assert ev.evaluate(p).accuracy == big.evaluate(p).accuracy
        assert ev.evaluate(p).kl == big.evaluate(p).kl


def test_eval_batch_size_is_checked():
    from automl.evaluation.config import EvalConfig

    with pytest.raises(ConfigError, match=r"eval_batch_size: must be greater than or equal to 0"):
        EvalConfig(fidelity=1, bn_samples=0, early_stop=False, eval_batch_size=-1)


def test_channels_last_runs_inputs_and_weights_channels_last_and_scores_alike():
    problem, ev = _small_problem(fidelity=2)
    _, cl = _small_problem(fidelity=2, channels_last=True)
    xs = cl._split("val")[0]
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in xs)
    for p in _policies(problem):
        a, b = ev.evaluate(p), cl.evaluate(p)
        assert abs(a.accuracy - b.accuracy) <= 0.02 and b.kl == pytest.approx(a.kl, rel=0.05, abs=1e-3)
    conv = next(ql for ql in cl.engine.layers.values() if ql.w_float.dim() == 4)
    w, _ = conv._fast_weights(1.0)
    assert w.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_tf32_leaves_the_process_switches_alone_on_the_cpu():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    _small_problem(tf32=True)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_a_moved_quantized_layer_takes_its_policy_state_along():
    """``.to()`` moves the plain tensors of the current policy (scales, kept channels, corrections)
    with the buffers, so an engine's model can change device (or dtype) as a whole."""
    import copy

    problem, ev = _small_problem(fidelity=2)
    policy = _policies(problem)[1]
    ev.evaluate(policy)
    model = copy.deepcopy(ev.engine.qmodel).to("meta")
    for ql in (m for m in model.modules() if type(m).__name__ == "QuantLayer"):
        tensors = [ql._scale, ql.keep_out, ql.keep_in, *(ql.correction or ()), *(t for v in ql._nm_banks.values() for t in v)]
        assert all(t.device.type == "meta" for t in tensors if isinstance(t, torch.Tensor)), ql
        assert ql._fast is None
    double = copy.deepcopy(ev.engine.qmodel).double()
    assert all(m._scale.dtype == torch.float64 for m in double.modules() if type(m).__name__ == "QuantLayer")
