"""N:M sparse-MAC support in hardware profiles: only a profile that declares it prices N:M
layers faster, by the declared factor on their compute term; everything else is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from automl.analysis import analyse
from automl.cost import CostModel, load_profile, load_profiles, profile_from_dict, save_profile, shipped_profiles
from automl.cost.batch import NM_CHOICES
from automl.cost.hardware import nm_fits
from automl.errors import ProfileError
from automl.reference.models import ResNet
from search_spaces import LayerPolicy, Policy, SearchSpace, SpaceConfig
from tests.test_cost_profiles import _measured

PATTERNS = ("2:4", "1:4", "4:8", "2:4-T")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = ResNet(8, width=8).eval()
    analysis = analyse(model, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(nm_patterns=PATTERNS))
    return analysis, space


def _policies(space: SearchSpace) -> tuple[Policy, Policy]:
    """A policy whose free layers cycle through the patterns, and its dense twin (same bits)."""
    dense = space.uniform(4, 8, sparsity=0.25)
    out, k = [], 0
    for (name, lp), s in zip(dense, space.layers, strict=True):
        nm = ""
        allowed = [p for p in PATTERNS if p in s.nm_patterns]
        if allowed:
            nm = allowed[k % len(allowed)]
            k += 1
        out.append((name, LayerPolicy(lp.act_bits, lp.weight_bits, nm)))
    return Policy(tuple(out)), dense


def _batch(cm: CostModel, policy: Policy):
    bits, act = cm.policy_arrays(policy)
    return cm.layer_batch(bits[None, :], act[None, :], cm.policy_nm(policy))


def test_a_pattern_fits_the_kernels_whose_constraint_it_implies():
    assert nm_fits("2:4", "2:4") and nm_fits("2:4-T", "2:4") and nm_fits("1:4", "2:4")
    assert nm_fits("2:4", "4:8") and nm_fits("1:4", "4:8")
    assert not nm_fits("4:8", "2:4") and not nm_fits("2:4", "1:4")


def test_no_shipped_profile_but_the_sparse_example_declares_nm_and_their_prices_equal_dense(setup):
    analysis, space = setup
    declared = {n: load_profile(n).nm_speedup for n in shipped_profiles()}
    assert declared.pop("sparse_accel") == (("2:4", 2.0),)
    assert set(declared) >= {"accel_roofline", "bitserial", "bitserial_shift"}
    assert all(v == () for v in declared.values())
    profiles = (*load_profiles(declared), _measured(analysis))
    cm = CostModel(analysis, space, profiles)
    sparse, dense = _policies(space)
    a, b = cm.price(sparse), cm.price(dense)
    assert a.latency_ms == b.latency_ms  # bit for bit
    assert a.size_bytes < b.size_bytes and a.macs == b.macs and a.bitops == b.bitops  # only size knows N:M there


def test_on_the_sparse_profile_fitting_layers_compute_in_half_the_time(setup):
    analysis, space = setup
    sparse_p, base = load_profile("sparse_accel"), load_profile("accel_roofline")
    cm = CostModel(analysis, space, [sparse_p, base])
    sparse, dense = _policies(space)
    bs, bd = _batch(cm, sparse), _batch(cm, dense)
    c_s, m_s, o_s = sparse_p.layer_terms(bs)
    c_d, m_d, o_d = sparse_p.layer_terms(bd)
    factor = np.array([2.0 if lp.nm and lp.nm != "4:8" else 1.0 for _, lp in sparse])  # 4:8 does not fit 2:4
    assert {lp.nm for _, lp in sparse} >= set(PATTERNS)
    assert np.allclose(c_d[0] / c_s[0], factor, rtol=1e-12)
    assert np.array_equal(m_s, m_d) and np.array_equal(o_s, o_d)  # memory traffic and overheads stay dense
    # the whole price: the layer model with the halved compute; dense layers priced as accel_roofline
    expected = (np.maximum(c_d / factor, m_d + sparse_p.output_ms(bd.out_elems, bd.out_bits)) + o_d).sum()
    got = cm.price(sparse).value("latency@sparse_accel")
    assert got == pytest.approx(expected + sparse_p.network_overhead_ms, rel=1e-12)
    assert got < cm.price(dense).value("latency@sparse_accel")
    assert cm.price(dense).value("latency@sparse_accel") == cm.price(dense).value("latency@accel_roofline")
    assert cm.price(sparse).value("latency@accel_roofline") == cm.price(dense).value("latency@accel_roofline")


def test_every_profile_kind_applies_the_declared_speedup(setup):
    analysis, space = setup
    kinds = [load_profile("bitserial").to_dict(), load_profile("accel_roofline").to_dict(), _measured(analysis).to_dict()]
    sparse, dense = _policies(space)
    for data in kinds:
        plain = profile_from_dict(data)
        fast = profile_from_dict(data | {"name": "fast", "nm_speedup": {"4:8": 1.5}})
        assert profile_from_dict(fast.to_dict()) == fast
        cm = CostModel(analysis, space, [plain, fast])
        c_plain = plain.layer_terms(_batch(cm, sparse))[0][0]
        c_fast = fast.layer_terms(_batch(cm, sparse))[0][0]
        # every pattern here fits 4:8 (2:4 and 1:4 hold at most 4 of every 8)
        factor = np.array([1.5 if lp.nm else 1.0 for _, lp in sparse])
        assert np.allclose(c_plain / c_fast, factor, rtol=1e-12), plain.kind
        assert cm.price(dense).value("latency@fast") == cm.price(dense).value(f"latency@{plain.name}")


def test_lowest_costs_stay_a_lower_bound_with_sparse_macs(setup):
    analysis, space = setup
    cm = CostModel(analysis, space, [load_profile("sparse_accel")])
    low = cm.lowest_costs().value("latency@sparse_accel")
    rng = np.random.default_rng(0)
    assert all(cm.price(space.sample(rng)).value("latency@sparse_accel") >= low for _ in range(30))
    divisor = load_profile("sparse_accel").nm_divisor
    assert dict(zip(NM_CHOICES, divisor, strict=True)) == {
        "": 1.0, "2:4": 2.0, "1:4": 2.0, "4:8": 1.0, "2:4-T": 2.0, "1:4-T": 2.0, "4:8-T": 1.0}


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"2:4": 3.0}, r"speedup of 2:4 must be a number in \[1, 2\].*got 3.0"),
        ({"4:8": 0.5}, r"speedup of 4:8 must be a number in \[1, 2\]"),
        ({"1:4": True}, r"speedup of 1:4 must be a number in \[1, 4\]"),
        ({"3:4": 2.0}, r"names the pattern '3:4'; expected one of \['2:4', '1:4', '4:8'\]"),
        ({"2:4-T": 2.0}, r"a transposable -T layer runs on its plain pattern's kernels"),
        ({124: 2.0}, r"bare 2:4 as the base-60 number 124\). Quote it"),
        ("fast", r"must be a mapping of N:M pattern -> MAC speedup"),
    ],
)
def test_a_bad_nm_speedup_names_the_key_and_the_fix(value, match):
    data = load_profile("accel_roofline").to_dict() | {"nm_speedup": value}
    with pytest.raises(ProfileError, match="key 'nm_speedup'") as err:
        profile_from_dict(data, "mine.yaml")
    assert err.match(match) and "profile mine.yaml" in str(err.value)


def test_a_bare_yaml_pattern_is_caught_and_a_quoted_one_round_trips(tmp_path):
    text = tmp_path / "p.yaml"
    base = yaml.safe_dump(load_profile("accel_roofline").to_dict() | {"name": "p"})
    text.write_text(base + "nm_speedup:\n  2:4: 2.0\n")
    with pytest.raises(ProfileError, match="number 124"):
        load_profile(text)
    text.write_text(base + 'nm_speedup: {"2:4": 2.0}\n')
    profile = load_profile(text)
    assert profile.nm_speedup == (("2:4", 2.0),)
    assert load_profile(save_profile(profile, tmp_path / "again.yaml")) == profile
