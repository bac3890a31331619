"""Hardware profiles: latency of a policy on a bit-serial accelerator, a CPU roofline, or a
table measured on this machine.

A profile is a YAML file. Shipped profiles live in ``automl/cost/profiles/*.yaml`` and are
named by their file stem; a user profile is any path. Every file is validated on load, and a
bad value raises :class:`~automl.errors.ProfileError` naming the key.

Every profile is monotone: fewer channels, fewer bits or fewer activation bits never cost
more latency, which the feasibility check (:meth:`automl.problem.budget.Budget.bind`) relies on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from automl.cost.analytic import BitSerialProfile, RooflineProfile
from automl.cost.hardware import PROFILE_SCHEMA_VERSION, HardwareProfile, Reader
from automl.cost.tabulated import MeasuredLayer, MeasuredProfile, interpolate, monotone_tables
from automl.errors import ConfigError, ProfileError

SHIPPED_DIR = Path(__file__).parent / "profiles"

__all__ = [
    "PROFILE_KINDS", "BitSerialProfile", "HardwareProfile", "MeasuredLayer", "MeasuredProfile", "RooflineProfile",
    "interpolate", "load_profile", "load_profiles", "monotone_tables", "profile_from_dict", "save_profile",
    "shipped_profiles",
]


PROFILE_KINDS: dict[str, type[Any]] = {c.kind: c for c in (BitSerialProfile, RooflineProfile, MeasuredProfile)}


def profile_from_dict(data: Any, source: str = "<dict>") -> HardwareProfile:
    """Validate ``data`` and build the profile of its ``kind``."""
    r = Reader(data, source)
    kind = data.get("kind")
    if kind not in PROFILE_KINDS:
        raise r.fail("kind", f"one of {sorted(PROFILE_KINDS)}", kind)
    version = data.get("schema_version", PROFILE_SCHEMA_VERSION)
    if version != PROFILE_SCHEMA_VERSION:
        raise r.fail("schema_version", str(PROFILE_SCHEMA_VERSION), version)
    return PROFILE_KINDS[kind].from_dict(data, source)


def shipped_profiles() -> tuple[str, ...]:
    """Names of the profiles shipped with automl-mpq."""
    return tuple(sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml")))


def load_profile(ref: str | Path) -> HardwareProfile:
    """Load a shipped profile by name, or a profile YAML file by path.

    Raises:
        ProfileError: the name is unknown, the file cannot be parsed, or a key is bad.
    """
    shipped = SHIPPED_DIR / f"{ref}.yaml"
    path = shipped if isinstance(ref, str) and "/" not in ref and shipped.is_file() else Path(ref)
    if not path.is_file():
        raise ProfileError(
            f"no hardware profile {str(ref)!r}: expected a shipped profile name ({', '.join(shipped_profiles())}) "
            "or the path of a profile YAML file (write one with `automl profile-hardware`)."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"profile {path}: not valid YAML ({exc})") from exc
    return profile_from_dict(data, str(path))


def load_profiles(refs: Iterable[str | Path]) -> tuple[HardwareProfile, ...]:
    """Load several profiles (see :func:`load_profile`), each once."""
    return tuple(load_profile(r) for r in dict.fromkeys(refs))


def save_profile(profile: HardwareProfile, path: str | Path) -> Path:
    """Write ``profile`` as YAML to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile.to_dict(), sort_keys=False, default_flow_style=None, width=120))
    return path


def check_profile_scales(profiles: Sequence[HardwareProfile], power_of_two: bool) -> None:
    """Refuse to price shift-only hardware for a search that does not use power-of-two scales.

    Raises:
        ConfigError: a profile declares ``scales: power_of_two`` and ``power_of_two`` is off.
    """
    for p in profiles:
        if getattr(p, "scales", "any") == "power_of_two" and not power_of_two:
            raise ConfigError(
                f"profile {p.name!r} is shift-only hardware (scales: power_of_two), but the search quantizes with "
                "arbitrary scales, which that hardware cannot apply. Pass --power-of-two (evaluation: {power_of_two: true}) "
                "or price another profile."
            )
