"""Validation of :class:`automl.runs.config.SearchConfig` with pydantic, and its YAML layout.

The configuration stays a frozen dataclass (the project's value style); pydantic checks it.
A strict pydantic model is derived from the dataclass's own fields, so every field anyone
adds to ``SearchConfig`` is type-checked without further code: ``evaluations: "many"``,
``threads: "two"`` or ``seed: [1, 2]`` name the key, the expected type and the value.

YAML files may group keys in nested sections; a section maps to the flat fields with its
prefix (``finetune: {steps: 50}`` is ``finetune_steps: 50``), and the flat keys are accepted
as well. Unknown keys are errors that list the close matches.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import pydantic

from automl.errors import ConfigError

# A section name -> (prefix of its flat fields, older unprefixed fields that belong to it).
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "space": ("space_", ("n_groups", "max_sparsity", "weight_bits", "act_bits", "allow_pruning")),
    "evaluation": ("eval_", ("fidelity",)),
    "eval": ("eval_", ("fidelity",)),
    "finetune": ("finetune_", ()),
    "fine_tune": ("finetune_", ()),
    "sensitivity": ("sensitivity_", ()),
    "export": ("export_", ()),
    "tracking": ("tracking_", ("experiment", "storage")),
}
# Inside ``searcher: {...}``: ``name`` is the searcher, ``options`` its constructor options.
SEARCHER_SECTION = {"name": "searcher", "options": "searcher_options"}


def _type_name(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return text.replace("typing.", "")


@functools.cache
def _model(cls: type) -> tuple[type[pydantic.BaseModel], dict[str, str]]:
    """A strict pydantic model with the fields of dataclass ``cls`` (built once per class)."""
    hints = typing.get_type_hints(cls)
    spec = {f.name: (hints[f.name], ...) for f in fields(cls)}
    model = pydantic.create_model(  # type: ignore[call-overload]
        f"{cls.__name__}Schema", __config__=pydantic.ConfigDict(strict=True, arbitrary_types_allowed=True), **spec
    )
    return model, {f.name: _type_name(f.type) for f in fields(cls)}


def _tuple_fields(cls: type) -> dict[str, bool]:
    """Field name -> whether it is a tuple of strings (a lone string becomes a 1-tuple)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple:
            out[f.name] = typing.get_args(hint)[:1] == (str,)
    return out


def normalise(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Lists from YAML/JSON become the tuples the dataclass holds; a lone string of a
    tuple-of-strings field (``budget: size<=0.125x``) becomes a 1-tuple."""
    out = dict(values)
    for name, of_str in _tuple_fields(cls).items():
        v = out.get(name)
        if isinstance(v, list):
            out[name] = tuple(v)
        elif of_str and isinstance(v, str):
            out[name] = (v,)
    return out


def _describe(value: Any) -> str:
    text = repr(value)
    return (text[:80] + "...") if len(text) > 80 else text


def check_types(cls: type, values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Validate ``values`` (every field of ``cls``) strictly; return them as pydantic coerced
    them (an int given for a float field becomes a float).

    Raises:
        ConfigError: naming each offending key (as the user spelled it), the expected type
            and the value that arrived.
    """
    model, types = _model(cls)
    try:
        checked = model.model_validate(dict(values))
    except pydantic.ValidationError as exc:
        names = names or {}
        problems = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "?"
            where = names.get(key, key)
            sub = "".join(f"[{p}]" for p in err["loc"][1:])
            value = values.get(key) if not sub else err.get("input")
            why = f" ({err['msg'][0].lower()}{err['msg'][1:]} at {sub})" if sub else ""
            problems.append(f"{where}{sub}: expected {types.get(key, '?')}{why}, got {_describe(value)} ({type(value).__name__})")
        raise ConfigError(
            "invalid configuration: " + "; ".join(problems) + ". Fix the value in the YAML file or on the command line."
        ) from None
    return {f.name: getattr(checked, f.name) for f in fields(cls)}


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], [k.split(".")[-1] for k in known], n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown configuration key {key!r}.{hint} Known keys: {', '.join(sorted(known))}.")


def flatten_sections(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Map nested YAML sections to flat field names.

    Returns:
        The flat values and, for each flat key, the name the user wrote (``finetune.steps``),
        so error messages quote the file.

    Raises:
        ConfigError: for an unknown key (top-level or inside a section) or a key given twice.
    """
    field_names = {f.name for f in fields(cls)}
    flat: dict[str, Any] = {}
    names: dict[str, str] = {}

    def put(flat_key: str, value: Any, written: str) -> None:
        if flat_key in flat:
            raise ConfigError(f"configuration key {written!r} sets {flat_key!r}, which {names[flat_key]!r} already set; keep one.")
        flat[flat_key] = value
        names[flat_key] = written

    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key == "searcher" and isinstance(value, Mapping):
            for sub, v in value.items():
                sub = str(sub).replace("-", "_")
                target = SEARCHER_SECTION.get(sub) or (f"searcher_{sub}" if f"searcher_{sub}" in field_names else None)
                if target is None:
                    raise _unknown(f"searcher.{sub}", [f"searcher.{k}" for k in SEARCHER_SECTION])
                put(target, v, f"searcher.{sub}")
        elif key in field_names:
            put(key, value, key)
        elif isinstance(value, Mapping) and (key in SECTIONS or any(n.startswith(key + "_") for n in field_names)):
            prefix, legacy = SECTIONS.get(key, (key + "_", ()))
            members = [n for n in field_names if n.startswith(prefix)] + list(legacy)
            for sub, v in value.items():
                sub = str(sub).replace("-", "_")
                target = sub if sub in legacy else prefix + sub
                if target not in field_names:
                    raise _unknown(f"{key}.{sub}", [f"{key}.{m.removeprefix(prefix)}" for m in members])
                put(target, v, f"{key}.{sub}")
        else:
            sections = [k for k, (p, _) in SECTIONS.items() if any(n.startswith(p) for n in field_names)]
            raise _unknown(key, sorted(field_names - {"extra"}) + sections)
    return flat, names


# searcher options --------------------------------------------------------------------------
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
    """Check ``searcher_options`` against the searcher's constructor before any work.

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
