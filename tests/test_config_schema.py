"""SearchConfig validation: pydantic types, nested YAML sections, searcher options."""

from __future__ import annotations

import pytest

from automl.errors import ConfigError
from automl.runs.config import SearchConfig, load_config


@pytest.mark.parametrize(
    "data,match",
    [
        ({"evaluations": "many"}, r"evaluations: expected int, got 'many' \(str\)"),
        ({"threads": "two"}, r"threads: expected int, got 'two' \(str\)"),
        ({"seed": [1, 2]}, r"seed: expected int, got \[1, 2\] \(list\)"),
        ({"allow_pruning": "yes"}, r"allow_pruning: expected bool, got 'yes'"),
        ({"weight_bits": [2, "x"]}, r"weight_bits\[1\]: expected tuple\[int, \.\.\.\]"),
        ({"finetune": {"steps": "10"}}, r"finetune\.steps: expected int, got '10'"),
        ({"evaluation": {"weight_method": "fancy"}}, r"evaluation\.weight_method: expected Literal\['mse', 'max'\]"),
        ({"searcher_options": [1]}, r"searcher_options: expected Mapping"),
        ({"evaluatons": 5}, r"unknown configuration key 'evaluatons'. Did you mean 'evaluations'"),
        ({"space": {"min_sparsty": 0.1}}, r"unknown configuration key 'space.min_sparsty'. Did you mean 'min_sparsity'"),
        ({"searcher": {"nme": "tpe"}}, r"unknown configuration key 'searcher.nme'"),
        ({"finetune_steps": -1}, r"finetune_steps must be >= 0"),
        ({"space": {"min_sparsity": 0.9}}, r"section 'space'.*min_sparsity"),
        ({"eval": {"calib_batches": 0}}, r"section 'evaluation'.*calib_batches"),
        ({"finetune": {"steps": 3}, "finetune_steps": 4}, r"already set"),
    ],
)
def test_bad_values_name_the_key_the_type_and_the_value(data, match):
    with pytest.raises(ConfigError, match=match):
        SearchConfig.from_dict(data)


def test_the_python_api_is_checked_too():
    with pytest.raises(ConfigError, match="evaluations: expected int, got '5'"):
        SearchConfig(evaluations="5")  # type: ignore[arg-type]
    assert SearchConfig(max_sparsity=0).max_sparsity == 0.0  # an int for a float field is fine
    assert SearchConfig(weight_bits=[2, 4]).weight_bits == (2, 4)  # type: ignore[arg-type]


def test_nested_sections_map_to_the_flat_fields(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "searcher: {name: random, options: {max_tries: 7}}\n"
        "space: {min_sparsity: 0.25, sparsity_step: 0.25, pin_first_last: false, pinned_bits: 6, importance: l2,"
        " n_groups: 2, pinned: [layer1.0.conv1]}\n"
        "evaluation: {weight_method: max, act_method: percentile, power_of_two: true, calib_batches: 1,"
        " qat_steps: 5, fidelity: 3}\n"
        "finetune: {steps: 0}\n"
        "budget: size<=0.2x\n"
    )
    cfg = load_config(path)
    assert cfg.searcher == "random" and cfg.searcher_options == {"max_tries": 7}
    assert (cfg.space_min_sparsity, cfg.space_sparsity_step, cfg.space_pin_first_last, cfg.space_pinned_bits) == (0.25, 0.25, False, 6)
    assert cfg.space_importance == "l2" and cfg.n_groups == 2 and cfg.space_pinned == ("layer1.0.conv1",)
    assert (cfg.eval_weight_method, cfg.eval_act_method, cfg.eval_power_of_two) == ("max", "percentile", True)
    assert (cfg.eval_calib_batches, cfg.eval_qat_steps, cfg.fidelity, cfg.finetune_steps) == (1, 5, 3, 0)
    assert cfg.budget == ("size<=0.2x",)
    space, ev = cfg.space_config(), cfg.eval_config()
    assert space.sparsity_levels() == (0.25, 0.5, 0.75) and not space.pin_first_last and space.pinned_bits == 6
    assert ev.weight_method == "max" and ev.power_of_two and ev.qat_steps == 5 and ev.importance == "l2"
    flat = SearchConfig.from_dict(cfg.to_dict())  # the flat keys round-trip
    assert flat == cfg


def test_every_field_is_type_checked_even_new_ones():
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Extended(SearchConfig):
        export_format: str = "ampq"
        sensitivity_batches: int = 2
        extra_map: dict = field(default_factory=dict)

    with pytest.raises(ConfigError, match="sensitivity.batches: expected int, got 'x'"):
        Extended.from_dict({"sensitivity": {"batches": "x"}})
    assert Extended.from_dict({"export": {"format": "onnx"}}).export_format == "onnx"


def test_searcher_options_are_checked_against_the_constructor():
    from agents import searcher_class
    from automl.runs.config_schema import check_searcher_options
    from automl.runs.runner import RESERVED_OPTIONS

    tpe = searcher_class("tpe")
    check_searcher_options("tpe", tpe, {"n_startup_trials": 3, "warm_start": False}, RESERVED_OPTIONS)
    with pytest.raises(ConfigError, match=r"unknown option 'n_startup' for searcher 'tpe'. Did you mean 'n_startup_trials'"):
        check_searcher_options("tpe", tpe, {"n_startup": 3}, RESERVED_OPTIONS)
    with pytest.raises(ConfigError, match=r"'seed' is set by the run"):
        check_searcher_options("tpe", tpe, {"seed": 3}, RESERVED_OPTIONS)
    with pytest.raises(ConfigError, match=r"searcher option 'n_startup_trials' of 'tpe': expected int, got 'ten'"):
        check_searcher_options("tpe", tpe, {"n_startup_trials": "ten"}, RESERVED_OPTIONS)
