"""Device names a configuration may hold, checked without importing torch.

A configuration is validated before torch is imported (a bad option answers at once), so the
syntax of ``--device`` lives here; :func:`automl.quant.device.resolve_device` then asks the
hardware.
"""

from __future__ import annotations

import re

from automl.errors import ConfigError

DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(?::\d+)?)$")


def check_device_spec(spec: object) -> str:
    """``spec`` as a valid device name (lower case, trimmed), without looking at the hardware.

    Accepts a string or a ``torch.device``.

    Raises:
        ConfigError: ``spec`` is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """
    text = str(spec).strip().lower() if isinstance(spec, str) or type(spec).__name__ == "device" else None
    if text is None or not DEVICE_SPEC.match(text):
        raise ConfigError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N = a GPU index), got {spec!r}; "
            "e.g. --device cuda:0, or --device auto to use a GPU when there is one"
        )
    return text


def split_devices(devices: str) -> tuple[str, ...]:
    """A comma-separated device list (``--devices cuda:0,cuda:1``), each name checked.

    Raises:
        ConfigError: an empty list or a malformed name.
    """
    names = tuple(check_device_spec(d) for d in str(devices).split(",") if d.strip())
    if not names:
        raise ConfigError(f"devices must name at least one device (e.g. 'cuda:0,cuda:1' or 'auto'), got {devices!r}")
    return names
