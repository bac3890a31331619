"""The research options: AdaQuant, PSG, power-of-two scales, data-free calibration."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automl.cli import build_parser
from automl.cost.model import CostModel
from automl.cost.profiles import check_profile_scales, load_profile, profile_from_dict
from automl.errors import ConfigError
from automl.evaluation.datafree import DataFreeConfig, bn_mismatch, synthesize
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.task import Task
from automl.export.ampq import export_policy, fake_quantize, load_exported, read_export
from automl.quant.adaquant import AdaQuantConfig, AdaQuantReport, adaquant
from automl.quant.engine import QuantLayer
from automl.quant.psg import PSGOptimizer, grid_distance
from automl.reference.models import ResNet
from automl.runs.config import SearchConfig
from tests.conftest import make_loaders


def _is_pow2(x: torch.Tensor) -> bool:
    x = x[x > 0].double()
    return bool(torch.equal(torch.exp2(torch.round(torch.log2(x))), x))


def _layer_io(ev: Evaluator, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per layer: its input in the quantized network and its output in the float network."""
    qin: dict[str, torch.Tensor] = {}
    fout: dict[str, torch.Tensor] = {}
    hs = [ql.register_forward_pre_hook(lambda m, a, n=n: qin.__setitem__(n, a[0])) for n, ql in ev.engine.layers.items()]
    hs += [ev.engine.folded.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: fout.__setitem__(n, o))
           for n in ev.engine.layers]
    with torch.no_grad():
        ev.engine.qmodel(x)
        ev.engine.folded(x)
    for h in hs:
        h.remove()
    return qin, fout


# AdaQuant ------------------------------------------------------------------------------------
def test_adaquant_lowers_every_layer_output_error_against_round_to_nearest(tiny_task):
    ev = Evaluator(Problem.from_task(tiny_task), EvalConfig(fidelity=1, bn_samples=0, early_stop=False))
    policy = ev.problem.space.uniform(3, 3)
    x = ev._bn_batch
    ev.engine.apply(policy)
    report = adaquant(ev.engine, x, AdaQuantConfig(steps=25, lr=0.05))
    assert AdaQuantReport.from_dict(report.to_dict()) == report
    assert [f.name for f in report.layers] == list(ev.engine.layers)
    # Measured independently of the report: every layer of the adapted network on the inputs that
    # network feeds it, against the same layer with round-to-nearest weights on the same inputs.
    qin, fout = _layer_io(ev, x)
    fit = {f.name: f for f in report.layers}
    total_rtn = total_ada = 0.0
    with torch.no_grad():
        for name, ql in ev.engine.layers.items():
            ada = float(F.mse_loss(ql(qin[name]), fout[name]))
            w, b = ql.weight, ql.bias
            idx = torch.tensor([ql._lookup[int(b)] for b in ql.bits])
            ql.weight, ql.bias = ql.bank[idx, ql._arange], ql.b_float * (ql.bits > 0)
            rtn = float(F.mse_loss(ql(qin[name]), fout[name]))
            ql.weight, ql.bias = w, b
            assert rtn == pytest.approx(fit[name].rtn_mse, rel=1e-4)
            assert ada <= rtn * (1 + 1e-5)
            total_rtn, total_ada = total_rtn + rtn, total_ada + ada
    assert total_ada < 0.8 * total_rtn
    assert sum(f.kept for f in report.layers) >= len(report.layers) // 2


def test_adaquant_weights_stay_on_the_grid_and_vanish_at_the_next_policy(tiny_task):
    ev = Evaluator(Problem.from_task(tiny_task), EvalConfig(fidelity=1, bn_samples=0, early_stop=False))
    policy = ev.problem.space.uniform(3, 3)
    ev.engine.apply(policy)
    rtn = {n: ql.weight.clone() for n, ql in ev.engine.layers.items()}
    adaquant(ev.engine, ev._bn_batch, AdaQuantConfig(steps=20))
    changed = 0
    for n, ql in ev.engine.layers.items():
        codes = ql.weight / ql._scale.view(-1, *([1] * (ql.weight.dim() - 1)))
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        qmax = 2 ** (ql.bits.view(-1, *([1] * (ql.weight.dim() - 1))) - 1) - 1
        assert bool((codes.abs() <= qmax + 1e-4).all()) or bool((ql.bits == 32).any())
        changed += int(not torch.equal(ql.weight, rtn[n]))
    assert changed > 0
    ev.engine.apply(policy)
    assert all(torch.equal(ql.weight, rtn[n]) and ql.qat_start is None for n, ql in ev.engine.layers.items())


def test_evaluator_with_adaquant_scores_and_fine_tunes_from_the_adapted_weights(tiny_task):
    ev = Evaluator(Problem.from_task(tiny_task), EvalConfig(bn_samples=0, early_stop=False, fidelity=2, ptq="adaquant", adaquant_steps=5))
    policy = ev.problem.space.uniform(3, 3)
    assert 0.0 <= ev.evaluate(policy).accuracy <= 1.0
    metrics, model = ev.final(policy, 0)
    assert metrics.fidelity == 2
    late = Evaluator(ev.problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=1, ptq="adaquant-final", adaquant_steps=5))
    late.evaluate(policy)
    assert all(ql.qat_start is None for ql in late.engine.layers.values())  # not during the search
    late.final(policy, 0)
    assert any(ql.qat_start is not None for ql in late.engine.layers.values())  # but for the final policy
    with pytest.raises(ConfigError, match="ptq: must be 'none', 'adaquant' or 'adaquant-final'"):
        EvalConfig(fidelity=1, bn_samples=0, early_stop=False, ptq="adaround")


# PSG -----------------------------------------------------------------------------------------
def _qat_layer(seed: int) -> QuantLayer:
    torch.manual_seed(seed)
    ql = QuantLayer(nn.Linear(32, 16), (3, 32), "max", False)
    ql.set_bits([3] * 16)
    ql.enable_qat()
    return ql


def _noisy_fit(ql: QuantLayer, psg: float, steps: int = 300) -> float:
    """Zero-mean noisy gradients (labels are the layer's own output plus noise): a random walk."""
    gen = torch.Generator().manual_seed(1)
    opt: torch.optim.Optimizer | PSGOptimizer = torch.optim.SGD([ql.w_param], lr=0.1)
    if psg:
        opt = PSGOptimizer(opt, [ql], psg)
    for _ in range(steps):
        out = ql(torch.randn(16, 32, generator=gen))
        loss = F.mse_loss(out, out.detach() + torch.randn(16, 16, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(grid_distance(ql, ql.w_param.detach()).mean())


def test_psg_moves_weights_closer_to_the_grid_than_plain_sgd_in_the_same_steps():
    start = float(grid_distance(_qat_layer(0), _qat_layer(0).w_param.detach()).mean())
    plain, psg = _noisy_fit(_qat_layer(0), 0.0), _noisy_fit(_qat_layer(0), 1.0)
    assert 0.2 < start < 0.3  # weights start spread over the grid cells
    assert plain > 0.2  # plain SGD's random walk keeps them spread
    assert psg < 0.5 * plain, (start, plain, psg)


@pytest.mark.slow
def test_finetune_with_psg_ends_nearer_the_grid(tiny_task):
    dist = {}
    for psg in (0.0, 1.0):
        ev = Evaluator(Problem.from_task(tiny_task), EvalConfig(fidelity=1, bn_samples=0, early_stop=False, qat_psg=psg, qat_lr=2e-2))
        model = ev.finetune(ev.engine.apply(ev.problem.space.uniform(3, 3)), 15)
        qls = [m for m in model.modules() if isinstance(m, QuantLayer) and bool(((m.bits > 0) & (m.bits < 32)).any())]
        dist[psg] = sum(float(grid_distance(m, m.w_param.detach()).mean()) for m in qls) / len(qls)
    assert dist[1.0] < dist[0.0]
    with pytest.raises(ConfigError, match="qat_psg: must be less than or equal to 1"):
        EvalConfig(fidelity=1, bn_samples=0, early_stop=False, qat_psg=1.5)


def test_final_without_a_recipe_fine_tunes_with_the_evaluators_psg(tiny_task, monkeypatch):
    """``EvalConfig.qat_psg`` applies to the evaluator's fine-tunes; ``final`` without a recipe used to drop it."""
    import automl.evaluation.evaluator as evaluate_mod

    class Report:
        steps = 0  # scored like an untrained model: the spy trains nothing

    recipes = []

    def spy(evaluator, model, cfg, seed=None):
        recipes.append(cfg)
        return model, Report()

    monkeypatch.setattr(evaluate_mod, "run_finetune", spy)
    ev = Evaluator(Problem.from_task(tiny_task), EvalConfig(fidelity=1, bn_samples=0, early_stop=False, qat_psg=0.5))
    ev.final(ev.problem.space.uniform(4, 4), 3, "val")
    assert [(r.psg, r.steps) for r in recipes] == [(0.5, 3)]


# power-of-two scales --------------------------------------------------------------------------
def test_power_of_two_scales_everywhere_and_in_the_export(tiny_task, tmp_path):
    problem = Problem.from_task(tiny_task)
    ev = Evaluator(problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=2, power_of_two=True))
    policy = problem.space.uniform(4, 4)
    ev.evaluate(policy)
    for ql in ev.engine.layers.values():
        assert _is_pow2(ql._scale[(ql.bits > 0) & (ql.bits < 32)])
        if ql.act is not None:
            assert _is_pow2(torch.tensor([ql.act[0]]))
        if ql.correction is not None:
            assert _is_pow2(ql.correction[0])
    cost = CostModel(problem.analysis, problem.space)
    export_policy(ev.engine, problem.analysis, policy, tmp_path / "m.ampq", sample_input=tiny_task.sample_input,
                  float_model=ev.float_model, cost_model=cost, repeats=1)
    _, tensors = read_export(tmp_path / "m.ampq")
    scales = [torch.from_numpy(v.copy()) for k, v in tensors.items() if k.endswith(".scale")]
    assert scales and all(_is_pow2(s) for s in scales)
    gm = load_exported(tmp_path / "m.ampq")
    acts = [n.args[1] for n in gm.graph.nodes if n.target is fake_quantize]
    assert acts and _is_pow2(torch.tensor(acts))
    plain = Evaluator(problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=2))
    plain.evaluate(policy)
    assert not all(_is_pow2(ql._scale[ql.bits < 32]) for ql in plain.engine.layers.values())


def test_power_of_two_is_reachable_from_cli_and_yaml_and_shift_only_profiles_require_it(tmp_path):
    args = build_parser().parse_args(["search", "--power-of-two", "--ptq", "adaquant", "--calibration", "data-free", "--psg", "0.5"])
    given = vars(args)
    assert [given[k] for k in ("evaluation.power_of_two", "evaluation.ptq", "evaluation.calibration", "finetune.psg")] == [
        True, "adaquant", "data-free", 0.5]
    assert vars(build_parser().parse_args(["search"]))["evaluation.power_of_two"] is None
    cfg = SearchConfig.from_dict({"evaluation": {"power_of_two": True, "ptq": "adaquant"}, "finetune": {"psg": 0.25}})
    assert (cfg.evaluation.power_of_two, cfg.evaluation.ptq, cfg.finetune.psg) == (True, "adaquant", 0.25)
    with pytest.raises(ConfigError, match="evaluation.calibration: must be 'data' or 'data-free'"):
        SearchConfig(evaluation={"calibration": "zeroq"})
    shift = load_profile("bitserial_shift")
    with pytest.raises(ConfigError, match="shift-only hardware"):
        check_profile_scales([shift], False)
    check_profile_scales([shift, load_profile("bitserial")], True)


def test_requantizer_time_is_priced_per_output_element(tiny_task):
    problem = Problem.from_task(tiny_task)
    base = load_profile("bitserial").to_dict()
    mult = profile_from_dict({**base, "name": "mult", "requant_ns": 1.0})
    cm = CostModel(problem.analysis, problem.space, [load_profile("bitserial"), mult])
    costs = dict(cm.price(problem.space.uniform(8, 8)).latency_ms)
    outputs = sum(math.prod(layer.out_shape) for layer in problem.analysis.layers)
    assert costs["mult"] - costs["bitserial"] == pytest.approx(outputs * 1e-6)
    with pytest.raises(Exception, match="scales"):
        profile_from_dict({**base, "scales": "log"})


# data-free calibration --------------------------------------------------------------------------
def _trained_bn_model() -> nn.Module:
    """A tiny ResNet whose BatchNorm statistics come from real forward passes (so they are reachable)."""
    torch.manual_seed(0)
    model = ResNet(8, width=4)
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: the statistics of the data, not of the last batches
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(32, 1, 28, 28, generator=gen) * 1.7 + 0.4)
    return model.eval()


def test_synthetic_inputs_match_batchnorm_statistics_within_tolerance():
    model = _trained_bn_model()
    sample = torch.zeros(1, 1, 28, 28)
    noise = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    synthetic = synthesize(model, sample, DataFreeConfig(samples=36, batch=32, steps=60, lr=0.5))
    assert [tuple(x.shape) for x in synthetic] == [(32, 1, 28, 28), (4, 1, 28, 28)]
    # Tolerance: at every BatchNorm, the per-channel batch mean within 0.05 running std and the
    # batch std within 5 % of the running std, averaged over channels.
    assert bn_mismatch(model, synthetic[0]) < 0.05
    assert bn_mismatch(model, noise) > 0.2  # plain noise does not pass, so the check can fail
    # The statistics the network was trained on (pixels ~ N(0.4, 1.7^2)) are recovered from it.
    assert synthetic[0].mean().item() == pytest.approx(0.4, abs=0.1)
    assert synthetic[0].std().item() == pytest.approx(1.7, rel=0.1)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_data_free_evaluator_and_its_errors():
    model = _trained_bn_model()
    loaders = make_loaders()
    task = Task(model, torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"])
    ev = Evaluator(Problem.from_task(task), EvalConfig(bn_samples=0, early_stop=False, fidelity=2, calibration="data-free", datafree_samples=16, datafree_steps=5))
    assert ev._bn_batch.shape[0] == 16
    assert not torch.equal(ev._bn_batch[: len(next(iter(loaders["calib"]))[0])], next(iter(loaders["calib"]))[0])
    assert 0.0 <= ev.evaluate(ev.problem.space.uniform(4, 4)).accuracy <= 1.0
    no_data = Task(model, torch.zeros(1, 1, 28, 28), loaders["train"], None, loaders["val"], loaders["test"])
    ev = Evaluator(Problem.from_task(no_data), EvalConfig(fidelity=1, bn_samples=0, early_stop=False, datafree_samples=8, datafree_steps=2))
    assert ev._bn_batch.shape[0] == 8  # no calibration loader: synthesised
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    no_bn = Task(plain, torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"])
    with pytest.raises(ConfigError, match="no BatchNorm layer"):
        Evaluator(Problem.from_task(no_bn), EvalConfig(fidelity=1, bn_samples=0, early_stop=False, calibration="data-free"))
    neither = Task(plain, torch.zeros(1, 1, 28, 28), loaders["train"], None, loaders["val"], loaders["test"])
    with pytest.raises(ConfigError, match="Give the task a calib_loader"):
        Evaluator(Problem.from_task(neither), EvalConfig(fidelity=1, bn_samples=0, early_stop=False))


# the command line -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv,message",
    [
        (["--task", "tests.tasks:no_batchnorm", "--budget", "size<=1x", "--allow-loose-budget", "--calibration", "data-free"],
         "no BatchNorm layer"),
        (["--task", "tests.tasks:tiny", "--profile", "bitserial_shift"], "shift-only hardware.*--power-of-two"),
        (["--task", "tests.tasks:tiny", "--psg", "2"], "finetune.psg: must be less than or equal to 1, got 2.0"),
    ],
)
def test_cli_refuses_unusable_method_options_in_one_paragraph(capsys, tmp_path, argv, message):
    import re

    from automl.cli import main

    code = main(["search", "--evaluations", "2", "--output", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and re.search(message, err), err
    assert not list(tmp_path.glob("runs/*/trials.jsonl"))
