"""Checking a searcher's ``options`` against its constructor before any work."""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Mapping
from typing import Any

import pydantic

from automl.errors import ConfigError


def _type_name(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return text.replace("typing.", "")


def _describe(value: Any) -> str:
    text = repr(value)
    return (text[:80] + "...") if len(text) > 80 else text

def _constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword parameters of ``cls(...)``, following ``**kwargs`` up the base classes."""
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        for name, p in params.items():
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                out.setdefault(name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return out


def check_searcher_options(name: str, cls: type, options: Mapping[str, Any], reserved: Mapping[str, str]) -> None:
    """Check ``searcher.options`` against the searcher's constructor before any work.

    Args:
        name: the searcher's name (for messages).
        cls: the searcher class.
        options: the user's options.
        reserved: constructor parameters the run sets itself -> the config key that sets them.

    Raises:
        ConfigError: an unknown option (naming it and the known ones), a reserved one, or
            a value of the wrong type.
    """
    params = _constructor_parameters(cls)
    known = sorted(set(params) - set(reserved) - {"objective"})
    for key, value in options.items():
        if key in reserved:
            raise ConfigError(f"searcher option {key!r} is set by the run; use the configuration key {reserved[key]!r} instead.")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"unknown option {key!r} for searcher {name!r}.{hint} Its options are: {', '.join(known) or 'none'}."
            )
        try:
            hints = typing.get_type_hints(_owner_init(cls, key))
        except Exception:  # noqa: BLE001 - an unresolvable annotation: the constructor checks the value
            continue
        if key in hints:
            try:
                pydantic.TypeAdapter(hints[key]).validate_python(value, strict=True)
            except pydantic.ValidationError:
                raise ConfigError(
                    f"searcher option {key!r} of {name!r}: expected {_type_name(hints[key])}, got {_describe(value)} "
                    f"({type(value).__name__})."
                ) from None
            except pydantic.PydanticSchemaGenerationError:
                continue


def _owner_init(cls: type, param: str) -> Any:
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and param in inspect.signature(init).parameters:
            return init
    return cls.__init__
