"""The base of every configuration section: a frozen, strictly validated pydantic model.

Each component owns its settings (the search space :class:`~search_spaces.space.SpaceConfig`,
the evaluator's :class:`~automl.evaluation.config.EvalConfig`, the fine-tune's
:class:`~automl.evaluation.config.FinetuneConfig`, ...); :class:`~automl.runs.config.SearchConfig`
nests them, so a YAML section maps one to one onto the component that reads it.

A :class:`Settings` model:

- is frozen and refuses unknown keys (with the close matches named);
- checks types strictly (``steps: "many"`` is refused, an integer is accepted for a float), bounds
  as ``Field`` constraints, cross-field rules in validators;
- turns JSON/YAML lists into the tuples it holds, and a lone string into a 1-tuple of strings;
- raises the project's own errors (:class:`~automl.errors.ConfigError` by default), whose message
  names each offending key as the user wrote it (``finetune.steps``), what was expected and what
  arrived, never a pydantic traceback.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic
from typing_extensions import Self

from automl.errors import AutoMLError, ConfigError


def _describe(value: Any) -> str:
    text = repr(value)
    return (text[:80] + "...") if len(text) > 80 else text


def _expected(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> str:
    """The annotation of the field at ``loc`` (through nested sections), as readable text."""
    cls: Any = model
    annotation: Any = None
    for part in loc:
        fields = getattr(cls, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            break
        annotation = fields[part].annotation
        cls = annotation
    if annotation is None:
        return "?"
    if loc and isinstance(loc[-1], int) and typing.get_args(annotation):
        annotation = typing.get_args(annotation)[0]
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None) or repr(annotation)
    if typing.get_origin(annotation) is not None:
        text = repr(annotation)
    return str(text).replace("typing.", "").replace("collections.abc.", "")


def _known_keys(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cls: Any = model
    for part in loc[:-1]:
        fields = getattr(cls, "model_fields", None)
        if fields is None or part not in fields:
            return []
        cls = fields[part].annotation
    fields = getattr(cls, "model_fields", None)
    return sorted(fields) if fields else []


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, (list, tuple)) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _key(loc: tuple[Any, ...]) -> str:
    """``("space", "weight_bits", 1)`` -> ``space.weight_bits[1]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def problems_of(model: type[pydantic.BaseModel], exc: pydantic.ValidationError, data: Any) -> list[tuple[str, str]]:
    """Each problem of ``exc`` as (dotted key, what was expected and what arrived)."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        key = _key(loc)
        kind = err["type"]
        cause = err.get("ctx", {}).get("error")
        if kind == "value_error" and isinstance(cause, AutoMLError) and getattr(cause, "problems", None):
            out += [(".".join(p for p in (key, inner) if p), text) for inner, text in cause.problems]
        elif kind == "extra_forbidden":
            known = _known_keys(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            out.append((key, f"unknown key.{hint} Known keys here: {', '.join(known)}"))
        elif kind == "value_error" and isinstance(cause, Exception):
            out.append((key, str(cause)))
        elif kind == "missing":
            out.append((key, "required, but not given"))
        else:
            value = err.get("input", _value_at(data, loc) if loc else data)
            got = f"got {_describe(value)} ({type(value).__name__})"
            msg = str(err["msg"])
            if kind.endswith(("_type", "_parsing")):
                out.append((key, f"expected {_expected(model, loc)}, {got}"))
            elif msg.startswith("Input should be "):
                out.append((key, f"must be {msg.removeprefix('Input should be ')}, {got}"))
            else:
                out.append((key, f"{msg[0].lower()}{msg[1:]}, {got}"))
    return out


def render(problems: list[tuple[str, str]]) -> str:
    """``key: problem; key: problem`` (a problem of the whole section without its key)."""
    return "; ".join(f"{key}: {text}" if key else text for key, text in problems)


def _tuple_kinds(annotation: Any) -> tuple[bool, bool]:
    """(is a tuple field, is a tuple of strings) for one field annotation (``X | None`` included)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if union else (annotation,)
    for arg in args:
        if typing.get_origin(arg) is tuple:
            return True, typing.get_args(arg)[:1] == (str,)
    return False, False


class Settings(pydantic.BaseModel):
    """A frozen, strictly validated configuration section (see the module docstring).

    Subclasses set :attr:`error` to the project error their component raises.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True, validate_default=True)
    error: ClassVar[type[AutoMLError]] = ConfigError
    message: ClassVar[str] = "{problems}"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            problems = problems_of(type(self), exc, data)
            error = self.error(self.message.format(problems=render(problems)))
            error.problems = problems  # type: ignore[attr-defined]  # read by an enclosing section's validation
            raise error from None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _tuples_from_lists(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for name, info in cls.model_fields.items():
            if name not in out:
                continue
            is_tuple, of_str = _tuple_kinds(info.annotation)
            value = out[name]
            if is_tuple and isinstance(value, list):
                out[name] = tuple(value)
            elif of_str and isinstance(value, str):
                out[name] = (value,)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a mapping (a YAML section, a saved JSON): keys and types checked."""
        if not isinstance(data, Mapping):
            raise cls.error(f"expected a mapping of key: value for {cls.__name__}, got {type(data).__name__}")
        return cls(**{str(k).replace("-", "_"): v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (nested sections as dicts, tuples as lists) that :meth:`from_dict` reads back."""
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated again (``model_copy`` would skip validation)."""
        return type(self)(**{**self.model_dump(), **changes})
