"""Names and range checks of the research options (AdaQuant, data-free calibration, PSG).

One place validates them for both :class:`~automl.evaluation.evaluator.EvalConfig` and the flat
``eval_*`` / ``finetune_*`` fields of :class:`~automl.runs.config.SearchConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from automl.errors import ConfigError

if TYPE_CHECKING:
    from automl.cost.hardware import HardwareProfile

PTQ_METHODS = ("none", "adaquant", "adaquant-final")
CALIBRATIONS = ("data", "data-free")


def check_method_options(ptq: str, adaquant_steps: int, calibration: str, psg: float) -> None:
    """Raise :class:`ConfigError` for an unknown method name or an out-of-range value."""
    if ptq not in PTQ_METHODS:
        raise ConfigError(f"ptq must be one of {PTQ_METHODS}, got {ptq!r}; e.g. --ptq adaquant")
    if isinstance(adaquant_steps, bool) or not isinstance(adaquant_steps, int) or adaquant_steps < 1:
        raise ConfigError(f"adaquant steps must be an integer >= 1, got {adaquant_steps!r}")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}; e.g. --calibration data-free")
    if isinstance(psg, bool) or not isinstance(psg, (int, float)) or not 0.0 <= psg <= 1.0:
        raise ConfigError(f"PSG strength must be a number in [0, 1] (0 = off), got {psg!r}")


def check_profile_scales(profiles: Sequence[HardwareProfile], power_of_two: bool) -> None:
    """Refuse to price shift-only hardware for a search that does not use power-of-two scales.

    Raises:
        ConfigError: a profile declares ``scales: power_of_two`` and ``power_of_two`` is off.
    """
    for p in profiles:
        if getattr(p, "scales", "any") == "power_of_two" and not power_of_two:
            raise ConfigError(
                f"profile {p.name!r} is shift-only hardware (scales: power_of_two), but the search quantizes with "
                "arbitrary scales, which that hardware cannot apply. Pass --power-of-two (eval_power_of_two: true) "
                "or price another profile."
            )
