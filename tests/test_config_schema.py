"""SearchConfig validation: nested pydantic sections, one per component; searcher options."""

from __future__ import annotations

import pytest

from automl.errors import ConfigError, SearchSpaceError
from automl.evaluation.config import EvalConfig, FinetuneConfig
from automl.runs.config import RunConfig, SearchConfig, SearcherConfig, TrackingConfig, load_config
from search_spaces.space import SpaceConfig


@pytest.mark.parametrize(
    "data,match",
    [
        ({"run": {"evaluations": "many"}}, r"run\.evaluations: expected int, got 'many' \(str\)"),
        ({"run": {"threads": "two"}}, r"run\.threads: expected int, got 'two' \(str\)"),
        ({"run": {"seed": [1, 2]}}, r"run\.seed: expected int, got \[1, 2\] \(list\)"),
        ({"space": {"allow_pruning": "yes"}}, r"space\.allow_pruning: expected bool, got 'yes'"),
        ({"space": {"weight_bits": [2, "x"]}}, r"space\.weight_bits\[1\]: expected int, got 'x'"),
        ({"finetune": {"steps": "10"}}, r"finetune\.steps: expected int, got '10'"),
        ({"evaluation": {"weight_method": "fancy"}}, r"evaluation\.weight_method: must be 'mse' or 'max', got 'fancy'"),
        ({"searcher": {"options": [1]}}, r"searcher\.options: expected dict\[str, Any\], got \[1\]"),
        ({"evaluatons": 5}, r"evaluatons: unknown key. Did you mean 'evaluation'\? Known keys here: budget, data_dir, evaluation"),
        ({"space": {"min_sparsty": 0.1}}, r"space\.min_sparsty: unknown key. Did you mean 'min_sparsity'"),
        ({"searcher": {"nme": "tpe"}}, r"searcher\.nme: unknown key. Did you mean 'name'"),
        ({"finetune": {"steps": -1}}, r"finetune\.steps: must be greater than or equal to 0, got -1"),
        ({"space": {"min_sparsity": 0.9}}, r"space: need 0 <= min_sparsity <= max_sparsity < 1, got 0.9 and 0.75"),
        ({"evaluation": {"calib_batches": 0}}, r"evaluation\.calib_batches: must be greater than or equal to 1"),
        ({"run": {"evaluations": 10**12}}, r"run\.evaluations: must be less than or equal to 10000000"),
        ({"budget": []}, r"budget: .*at least 1 item"),
    ],
)
def test_bad_values_name_the_key_the_type_and_the_value(data, match):
    with pytest.raises(ConfigError, match=match) as info:
        SearchConfig.from_dict(data)
    assert str(info.value).startswith("invalid configuration: ")
    assert str(info.value).endswith("Fix the value in the YAML file (--config) or on the command line.")


@pytest.mark.parametrize(
    "key,section",
    [("finetune_steps", "finetune"), ("evaluations", "run"), ("eval_bn_samples", "evaluation"),
     ("space_pinned_bits", "space"), ("sensitivity_method", "searcher"), ("searcher_options", "searcher")],
)
def test_a_key_of_the_flat_layout_says_which_section_it_belongs_to(key, section):
    with pytest.raises(ConfigError, match=rf"'{key}' belongs to the section '{section}': write `{section}: "):
        SearchConfig.from_dict({key: 1})


def test_the_python_api_is_checked_too():
    with pytest.raises(ConfigError, match="run.evaluations: expected int, got '5'"):
        SearchConfig(run={"evaluations": "5"})  # type: ignore[arg-type]
    assert SearchConfig(space={"max_sparsity": 0}).space.max_sparsity == 0.0  # an int for a float field is fine
    assert SearchConfig(space={"weight_bits": [2, 4]}).space.weight_bits == (2, 4)  # type: ignore[arg-type]
    with pytest.raises(SearchSpaceError, match="n_groups: must be greater than or equal to 1"):
        SpaceConfig(n_groups=0)
    with pytest.raises(ConfigError, match="steps: must be greater than or equal to 0"):
        FinetuneConfig(steps=-1)


def test_sections_map_one_to_one_onto_the_components_settings(tmp_path):
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
    assert isinstance(cfg.space, SpaceConfig) and isinstance(cfg.evaluation, EvalConfig)
    assert isinstance(cfg.finetune, FinetuneConfig) and isinstance(cfg.searcher, SearcherConfig)
    assert isinstance(cfg.tracking, TrackingConfig) and isinstance(cfg.run, RunConfig)
    assert cfg.searcher.name == "random" and cfg.searcher.options == {"max_tries": 7}
    assert (cfg.space.min_sparsity, cfg.space.sparsity_step, cfg.space.pin_first_last, cfg.space.pinned_bits) == (0.25, 0.25, False, 6)
    assert cfg.space.importance == "l2" and cfg.space.n_groups == 2 and cfg.space.pinned == ("layer1.0.conv1",)
    assert (cfg.evaluation.weight_method, cfg.evaluation.act_method, cfg.evaluation.power_of_two) == ("max", "percentile", True)
    assert (cfg.evaluation.calib_batches, cfg.evaluation.qat_steps, cfg.evaluation.fidelity, cfg.finetune.steps) == (1, 5, 3, 0)
    assert cfg.budget == ("size<=0.2x",)
    assert cfg.space.sparsity_levels() == (0.25, 0.5, 0.75)
    assert SearchConfig.from_dict(cfg.to_dict()) == cfg  # the JSON round trip (config.json of a run)


def test_no_setting_exists_twice():
    """Every leaf key of the configuration is in exactly one section (no prefixed copies)."""
    from automl.runs.config import dotted_keys

    leaves = sorted(dotted_keys(SearchConfig().to_dict()))
    names = [k.rsplit(".", 1)[-1] for k in leaves if k != "searcher.name"]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]


def test_searcher_options_are_checked_against_the_constructor():
    from agents import searcher_class
    from automl.runs.runner import RESERVED_OPTIONS
    from automl.runs.searcher_options import check_searcher_options

    tpe = searcher_class("tpe")
    check_searcher_options("tpe", tpe, {"n_startup_trials": 3, "warm_start": False}, RESERVED_OPTIONS)
    with pytest.raises(ConfigError, match=r"unknown option 'n_startup' for searcher 'tpe'. Did you mean 'n_startup_trials'"):
        check_searcher_options("tpe", tpe, {"n_startup": 3}, RESERVED_OPTIONS)
    with pytest.raises(ConfigError, match=r"'seed' is set by the run; use the configuration key 'run.seed'"):
        check_searcher_options("tpe", tpe, {"seed": 3}, RESERVED_OPTIONS)
    with pytest.raises(ConfigError, match=r"searcher option 'n_startup_trials' of 'tpe': expected int, got 'ten'"):
        check_searcher_options("tpe", tpe, {"n_startup_trials": "ten"}, RESERVED_OPTIONS)
