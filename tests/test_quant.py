"""The quantize-and-prune engine: what a user relies on when a policy is applied."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from automl.analysis import analyse
from automl.quant import QuantEngine, fold_batchnorm, quantize_weight, quantize_weight_ste
from automl.quant.fake import quantize_act_ste
from search_spaces import LayerPolicy, SearchSpace, SpaceConfig


@settings(max_examples=30, deadline=None)
@given(bits=st.lists(st.sampled_from([2, 3, 4, 5, 6, 8]), min_size=3, max_size=12), seed=st.integers(0, 1000))
def test_b_bit_channel_holds_at_most_2_pow_b_values(bits, seed):
    w = torch.randn(len(bits), 4, 3, 3, generator=torch.Generator().manual_seed(seed))
    q = quantize_weight(w, torch.tensor(bits))
    for c, b in enumerate(bits):
        assert q[c].unique().numel() <= 2**b


def test_zero_bits_gives_zero_and_32_bits_keeps_float():
    w = torch.randn(3, 5)
    q = quantize_weight(w, torch.tensor([0, 32, 4]))
    assert torch.equal(q[0], torch.zeros(5))
    assert torch.equal(q[1], w[1])
    assert not torch.equal(q[2], w[2])


def test_power_of_two_scales_are_powers_of_two():
    w = torch.randn(4, 16)
    q = quantize_weight(w, torch.full((4,), 4), power_of_two=True)
    for c in range(4):
        nz = q[c][q[c] != 0].abs()
        ratio = torch.log2(nz.min())
        assert torch.allclose(ratio, ratio.round()), "smallest level must be a power of two"


def test_ste_passes_gradient_and_blocks_pruned_channels():
    w = torch.randn(3, 4, requires_grad=True)
    out = quantize_weight_ste(w, torch.tensor([0, 4, 8]), torch.full((3,), 0.1))
    out.sum().backward()
    assert torch.equal(out[0], torch.zeros(4))
    assert torch.equal(w.grad[0], torch.zeros(4))
    assert (w.grad[1:] != 0).all()


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-3, 2.0), signed=st.booleans(), bits=st.sampled_from([2, 3, 4, 8]), seed=st.integers(0, 1000))
def test_activation_ste_gives_the_fused_fake_quantizers_values_and_gradients_bit_for_bit(scale, signed, bits, seed):
    # the QAT fine-tune's activation quantizer replaced torch.fake_quantize_per_tensor_affine for speed only
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(4, 3, 9, 9, generator=gen) * 4 * scale * 2**bits).requires_grad_(True)
    qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    grad = torch.randn(4, 3, 9, 9, generator=gen)
    fused = torch.fake_quantize_per_tensor_affine(x, scale, 0, qmin, qmax)
    ours = quantize_act_ste(x, scale, qmin, qmax)
    assert torch.equal(ours, fused)
    ours_grad = torch.autograd.grad(ours, x, grad)[0]
    assert torch.equal(ours_grad, torch.autograd.grad(fused, x, grad)[0])
    assert 0 < int((ours_grad == 0).sum()) < x.numel()  # clipped inputs get no gradient, the others all of it


def test_bn_folding_keeps_float_outputs(tiny_resnet):
    x = torch.randn(4, 1, 28, 28)
    analysis = analyse(tiny_resnet, x)
    folded, _ = fold_batchnorm(tiny_resnet, analysis)
    with torch.no_grad():
        assert (folded(x) - tiny_resnet(x)).abs().max() <= 1e-5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_resnet.modules()), "float model must not change"


def _engine(model, x, **space):
    analysis = analyse(model, x)
    space = SearchSpace.build(analysis, SpaceConfig(**space))
    return analysis, space, QuantEngine(model, analysis, space, [x])


def test_zero_bit_channel_output_is_exactly_zero(plain_cnn):
    x = torch.randn(8, 1, 28, 28)
    analysis, space, engine = _engine(plain_cnn, x)
    policy = space.uniform(4)
    name = "fc1"  # a prunable layer
    bits = list(policy[name].weight_bits)
    bits[3] = 0
    policy = policy.replace(name, LayerPolicy(policy[name].act_bits, tuple(bits)))
    model = engine.apply(policy)
    seen = {}
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert torch.equal(seen["out"][:, 3], torch.zeros(8))


def test_applying_a_policy_never_touches_the_float_model(plain_cnn, rng):
    x = torch.randn(8, 1, 28, 28)
    before = {k: v.clone() for k, v in plain_cnn.state_dict().items()}
    _, space, engine = _engine(plain_cnn, x)
    engine.apply(space.sample(rng))
    for k, v in plain_cnn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_eight_bit_policy_is_close_to_float_and_two_bit_is_not(tiny_resnet):
    x = torch.randn(16, 1, 28, 28)
    _, space, engine = _engine(tiny_resnet, x)
    with torch.no_grad():
        ref = tiny_resnet(x)
        err8 = (engine.apply(space.uniform(8))(x) - ref).abs().mean()
        err2 = (engine.apply(space.uniform(2))(x) - ref).abs().mean()
    assert err8 < 0.05 * ref.abs().mean()
    assert err2 > 4 * err8


def test_policy_apply_is_a_gather_of_precomputed_weights(plain_cnn):
    x = torch.randn(8, 1, 28, 28)
    _, space, engine = _engine(plain_cnn, x)
    engine.apply(space.uniform(4))
    layer = engine.layers["fc1"]
    direct = quantize_weight(layer.w_float, torch.full((layer.w_float.shape[0],), 4))
    assert torch.equal(layer.weight, direct)


def test_coupled_channels_are_pruned_together_in_the_engine(tiny_resnet):
    x = torch.randn(4, 1, 28, 28)
    analysis, space, engine = _engine(tiny_resnet, x, pin_first_last=False)
    stream = next(g for g in analysis.groups if len(g.producers) >= 2)
    first = stream.producers[1]
    policy = space.uniform(8)
    bits = list(policy[first].weight_bits)
    bits[0] = 0
    engine.apply(policy.replace(first, LayerPolicy(8, tuple(bits))))
    for producer in stream.producers:
        assert int(engine.layers[producer].bits[0]) == 0, producer
    assert np.all(np.asarray(engine.current[stream.producers[0]].weight_bits)[1:] == 8)


def test_activation_grid_is_the_same_with_and_without_gradients(plain_cnn):
    x = torch.randn(8, 1, 28, 28)
    _, space, engine = _engine(plain_cnn, x)
    model = engine.apply(space.uniform(3, 3))
    with torch.no_grad():
        fast = model(x)
    slow = model(x.requires_grad_(True))  # fused fake-quant op used for QAT
    assert torch.allclose(fast, slow, atol=1e-5)


def test_pruned_channel_stays_zero_through_an_unfolded_batchnorm():
    from torch import nn

    from automl.analysis import prune_model

    class PreAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 6, 3, padding=1)
            self.b = nn.Conv2d(1, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)  # after the addition: cannot be folded into a conv
            self.head = nn.Conv2d(6, 3, 1)

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.a(x) + self.b(x)))).mean(dim=(2, 3))

    from .conftest import randomise_batchnorm

    model = randomise_batchnorm(PreAct())
    x = torch.randn(4, 1, 8, 8)
    analysis, space, engine = _engine(model, x, pin_first_last=False, act_bits=(8, 32))
    policy = space.uniform(32, 32)
    bits = list(policy["a"].weight_bits)
    bits[2] = 0
    policy = space.resolve(policy.replace("a", LayerPolicy(32, tuple(bits))))
    with torch.no_grad():
        quantized = engine.apply(policy)(x)
        pruned = prune_model(model, analysis, policy)(x)
    assert torch.allclose(quantized, pruned, atol=1e-5)


@pytest.mark.parametrize("net", ["tiny_resnet", "plain_cnn"])  # residual groups; a Linear on a flattened map
def test_inference_skips_pruned_channels_and_matches_the_masked_computation(net, rng, request):
    x = torch.randn(8, 1, 28, 28)
    _, space, engine = _engine(request.getfixturevalue(net), x, pin_first_last=False)
    sliced_layers = 0
    for _ in range(6):
        policy = space.sample(rng)
        model = engine.apply(policy)
        sliced_layers += sum(ql.keep_in is not None or ql.keep_out is not None for ql in engine.layers.values())
        for ql in engine.layers.values():  # pruned input channels are those every producer pruned
            if ql.keep_in is not None:
                assert len(ql.keep_in) < ql.w_float.shape[1]
            if ql.keep_out is not None:
                assert torch.equal(ql.keep_out, (ql.bits > 0).nonzero().flatten())
        with torch.no_grad():
            fast = model(x)
        sliceable = {n: ql._sliceable for n, ql in engine.layers.items()}  # depthwise layers never slice
        for ql in engine.layers.values():
            ql._sliceable = False
        try:
            model = engine.apply(policy)
            assert all(ql.keep_in is None and ql.keep_out is None for ql in engine.layers.values())
            with torch.no_grad():
                full = model(x)
        finally:
            for n, ql in engine.layers.items():
                ql._sliceable = sliceable[n]
        assert torch.allclose(fast, full, atol=1e-5, rtol=1e-5)
    assert sliced_layers > 0, "random policies prune: some layer must skip channels"


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (16, 32, 3, 3), (8, 700), (12, 1, 5, 5)])
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_mse_scales_from_sorted_magnitudes_equal_the_element_wise_search(shape, bits):
    from automl.quant.fake import CLIP_RATIOS, Magnitudes, _clip_errors_direct, _clip_errors_sorted

    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(shape, generator=gen) * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=gen)
    flat = w.reshape(shape[0], -1)
    qmax = torch.full((shape[0],), 2 ** (bits - 1) - 1.0)
    scales = CLIP_RATIOS[:, None] * flat.abs().amax(dim=1)[None] / qmax[None]
    direct, binned = _clip_errors_direct(flat, scales, qmax), _clip_errors_sorted(Magnitudes(w), scales, int(qmax[0]))
    assert torch.allclose(binned, direct, rtol=1e-4, atol=1e-7)
    assert torch.equal(binned.argmin(dim=0), direct.argmin(dim=0))


def test_weight_banks_round_each_weight_about_once_per_bit_width(monkeypatch):
    """Building the banks of a layer costs a few passes over its weights per bit-width, not one per
    candidate clipping ratio: the MSE search bins sorted magnitudes (one sort per layer)."""
    from automl.quant.engine import _banks

    w = torch.randn(64, 32, 3, 3, generator=torch.Generator().manual_seed(0))
    rounded = []
    original = torch.round

    def counting(x, *args, **kwargs):
        rounded.append(x.numel())
        return original(x, *args, **kwargs)

    monkeypatch.setattr(torch, "round", counting)
    bank_bits = (0, 2, 3, 4, 5, 6, 8, 32)
    _banks(w, bank_bits, "mse", False)
    assert sum(rounded) <= 2 * (len(bank_bits) - 2) * w.numel()
