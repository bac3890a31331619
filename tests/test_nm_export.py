"""Compact N:M storage in the .ampq export: only the kept values plus a block index, priced byte
for byte, loaded back to exactly the weights the engine evaluated; ONNX stays dense and agrees."""

from __future__ import annotations

import copy
import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch

from automl.analysis.prune import in_keep_mask, keep_masks
from automl.cost.model import CostModel
from automl.errors import ExportError, PolicyError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.task import Task
from automl.export.ampq import (
    _PREFIX,
    MAGIC,
    _header_blob,
    container_bytes,
    export_policy,
    load_exported,
    nm_index_table,
    read_export,
)
from automl.reference.models import ResNet
from search_spaces import LayerPolicy, Policy, SpaceConfig
from tests.conftest import make_loaders, randomise_batchnorm
from tests.test_onnx_export import onnx_vs_model

PATTERNS = ("2:4", "4:8", "2:4-T")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = randomise_batchnorm(ResNet(8, width=8))
    loaders = make_loaders()
    task = Task(model, torch.zeros(2, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"])
    problem = Problem.from_task(task, SpaceConfig(nm_patterns=PATTERNS))
    ev = Evaluator(problem, EvalConfig(fidelity=1, bn_samples=0, early_stop=False))
    extra = container_bytes(model, problem.analysis, problem.space, task.sample_input)
    return problem, ev, CostModel(problem.analysis, problem.space, container_bytes=extra)


def _nm_policy(problem) -> Policy:
    """A random policy with pruned and float channels whose layers take 2:4, 4:8 and 2:4-T,
    at least one N:M layer losing inputs to upstream pruning."""
    space, rng = problem.space, np.random.default_rng(5)
    for _ in range(500):
        policy = space.resolve(space.sample(rng))
        bits = {b for _, lp in policy for b in lp.weight_bits}
        masks = keep_masks(problem.analysis, policy)
        lost = [n for n, lp in policy if lp.nm and not in_keep_mask(problem.analysis, n, masks).all()]
        if set(PATTERNS) <= {lp.nm for _, lp in policy} and {0, 32} <= bits and lost:
            return policy
    raise AssertionError("no such policy sampled")


def _cycled(space, dense: Policy) -> Policy:
    """``dense`` with its free layers cycling through the patterns each allows."""
    out, k = [], 0
    for (name, lp), s in zip(dense, space.layers, strict=True):
        allowed = [p for p in PATTERNS if p in s.nm_patterns]
        nm = allowed[k % len(allowed)] if allowed else ""
        k += bool(allowed)
        out.append((name, LayerPolicy(lp.act_bits, lp.weight_bits, nm)))
    return Policy(tuple(out))


def _dense(policy: Policy) -> Policy:
    return Policy(tuple((n, LayerPolicy(lp.act_bits, lp.weight_bits)) for n, lp in policy))


def _export(problem, ev, cost, policy, path):
    qmodel = ev.engine.apply(policy)
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    report = export_policy(qmodel, problem.analysis, policy, path, sample_input=x, float_model=ev.float_model,
                           cost_model=cost, repeats=1)
    return qmodel, report


def test_index_table_ranks_every_subset_and_uses_ceil_log2_bits():
    for (n, m), bits in {(2, 4): 3, (1, 4): 2, (4, 8): 7}.items():
        rank, positions, index_bits = nm_index_table(n, m)
        assert index_bits == bits and len(positions) == math.comb(m, n)
        for r, pos in enumerate(positions):
            assert rank[int((1 << pos).sum())] == r
        assert (rank >= 0).sum() == len(positions)  # every other m-bit pattern has no index


def test_loaded_nm_weights_equal_the_evaluated_ones_bit_for_bit(setup, tmp_path):
    problem, ev, cost = setup
    policy = _nm_policy(problem)
    qmodel, report = _export(problem, ev, cost, policy, tmp_path / "nm.ampq")
    header, _ = read_export(tmp_path / "nm.ampq")
    loaded = load_exported(tmp_path / "nm.ampq")
    masks = keep_masks(problem.analysis, policy)
    seen = set()
    for name, lp in policy:
        layer = problem.analysis.layer(name)
        out_keep = torch.from_numpy(masks[layer.out_group])
        in_keep = torch.from_numpy(in_keep_mask(problem.analysis, name, masks))
        ql = qmodel.get_submodule(name)
        expected = ql.weight[out_keep][:, in_keep]
        got = loaded.get_submodule(name)
        assert torch.equal(got.weight, expected), name
        assert torch.equal(got.bias, ql.bias[out_keep]), name
        spec = header["modules"][name]
        assert spec.get("nm", {}).get("pattern", "") == lp.nm
        if lp.nm:
            seen.add(lp.nm)
            n, m = (int(v) for v in lp.nm[:3].split(":"))
            full = ql.weight[out_keep].reshape(int(out_keep.sum()), -1, m)
            assert int((full != 0).sum(dim=2).max()) <= n
            assert (spec["nm"]["in_keep"] is None) == bool(in_keep.all())
    assert seen == set(PATTERNS)
    # a greedy transposable mask leaves some blocks with fewer than N kept: stored as padded zeros
    assert any(int(qmodel.get_submodule(n).nm_keep.reshape(-1, 4).sum(dim=1).min()) < 2 for n, lp in policy if lp.nm == "2:4-T")
    assert report.max_abs_diff <= 1e-4 and report.agreement == 1.0


def test_nm_layers_weigh_their_price_and_make_the_file_smaller(setup, tmp_path):
    problem, ev, cost = setup
    policy = _nm_policy(problem)
    _, report = _export(problem, ev, cost, policy, tmp_path / "nm.ampq")
    _, dense = _export(problem, ev, cost, _dense(policy), tmp_path / "dense.ampq")
    _, tensors = read_export(tmp_path / "nm.ampq")
    bits, act = cost.policy_arrays(policy)
    layer_bytes = cost.layer_size_bits(cost.layer_batch(bits[None, :], act[None, :], cost.policy_nm(policy)))[0] / 8
    for li, (name, lp) in enumerate(policy):
        stored = sum(a.nbytes for k, a in tensors.items() if k.rsplit(".", 1)[0] == name)
        assert stored == layer_bytes[li], (name, lp.nm)
        assert (f"{name}.index" in tensors) == bool(lp.nm)
    for r in (report, dense):
        assert r.payload_bytes == r.predicted_bytes - cost.container_bytes
    # The header is priced once, as measured on random policies of this space, most with N:M
    # layers, whose header entries (pattern, input mask, index tensor) a dense file lacks.
    assert abs(report.file_bytes - report.predicted_bytes) <= 0.03 * cost.container_bytes
    assert 0 <= dense.predicted_bytes - dense.file_bytes <= 0.1 * cost.container_bytes
    # Smaller than dense unless upstream pruning removed many of a layer's inputs: the stored
    # values span the unpruned reduction dimension (the mask was fitted before pruning), as priced.
    sparse = _cycled(problem.space, problem.space.uniform(4, 8, sparsity=0.25))
    _, small = _export(problem, ev, cost, sparse, tmp_path / "small.ampq")
    _, twin = _export(problem, ev, cost, _dense(sparse), tmp_path / "twin.ampq")
    assert small.file_bytes < twin.file_bytes
    assert twin.payload_bytes - small.payload_bytes == twin.predicted_bytes - small.predicted_bytes
    version = {p: struct.unpack_from("<I", (tmp_path / p).read_bytes(), 8)[0] for p in ("nm.ampq", "dense.ampq")}
    assert version == {"nm.ampq": 3, "dense.ampq": 2}  # dense files keep the format older releases read


def test_finetuned_nm_weights_export_compactly_and_agree(setup, tmp_path):
    problem, ev, cost = setup
    policy = _nm_policy(problem)
    engine = copy.deepcopy(ev.engine)  # the fixture's engine stays in inference mode
    engine.apply(policy)
    masked = [n for n, lp in policy if lp.nm]
    for name in masked:
        engine.layers[name].enable_qat()
    opt = torch.optim.Adam([engine.layers[n].w_param for n in masked], lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        engine.qmodel(torch.randn(4, 1, 28, 28)).square().mean().backward()
        opt.step()
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    report = export_policy(engine.qmodel, problem.analysis, policy, tmp_path / "ft.ampq", sample_input=x,
                           float_model=ev.float_model, cost_model=cost, repeats=1)
    assert report.max_abs_diff <= 1e-4 and report.agreement == 1.0
    assert report.payload_bytes == report.predicted_bytes - cost.container_bytes


@pytest.mark.parametrize("which", ["cycled", "random"])
def test_onnx_of_an_nm_file_stays_dense_and_agrees(setup, tmp_path, which):
    """The thresholds of test_onnx_export (rounding ties only). The random policy has 2-bit
    activations, whose coarse grid makes ties common (its dense twin agrees no better), so
    there only the output range and the predicted classes are compared."""
    problem, ev, cost = setup
    policy = _cycled(problem.space, problem.space.uniform(4, 8, sparsity=0.25)) if which == "cycled" else _nm_policy(problem)
    qmodel, _ = _export(problem, ev, cost, policy, tmp_path / "nm.ampq")
    model, expected, got, diff = onnx_vs_model(qmodel, tmp_path / "nm.ampq")
    if which == "cycled":
        assert np.mean(diff <= 1e-4) >= 0.25
    assert diff.max() < 0.1 * np.abs(expected).max()
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.97
    # dense weight tensors: every N:M layer's ONNX weight has the pruned layer's full shape
    loaded = load_exported(tmp_path / "nm.ampq")
    sizes = {int(np.prod(t.dims)) for t in model.graph.initializer}
    assert all(loaded.get_submodule(n).weight.numel() in sizes for n, lp in policy if lp.nm)


def test_a_model_not_running_the_policys_pattern_and_a_corrupt_index_are_refused(setup, tmp_path):
    problem, ev, cost = setup
    policy = _nm_policy(problem)
    qmodel = ev.engine.apply(_dense(policy))
    with pytest.raises(PolicyError, match="runs N:M pattern 'dense', the policy asks"):
        export_policy(qmodel, problem.analysis, policy, tmp_path / "x.ampq", sample_input=torch.zeros(2, 1, 28, 28),
                      float_model=ev.float_model, repeats=1)
    _export(problem, ev, cost, policy, tmp_path / "nm.ampq")
    header, tensors = read_export(tmp_path / "nm.ampq")
    # rewrite one 4:8 index (7 bits, 70 subsets) to the out-of-range value 127 and fix the CRC
    name = next(n for n, lp in policy if lp.nm == "4:8")
    tensors = {k: v.copy() for k, v in tensors.items()}
    tensors[f"{name}.index"][0] |= 0x7F
    data = b"".join(np.ascontiguousarray(a).tobytes() for a in tensors.values())
    keep = {k: v for k, v in header.items() if k not in ("tensors", "data_bytes", "data_crc32")}
    head = _header_blob(keep, tensors, data)
    (tmp_path / "bad.ampq").write_bytes(_PREFIX.pack(MAGIC, 3, len(head)) + head + data)
    assert json.loads(zlib.decompress(head))["modules"][name]["nm"]["pattern"] == "4:8"
    with pytest.raises(ExportError, match="4:8 index names block pattern 127, of only 70"):
        load_exported(tmp_path / "bad.ampq")
