"""Translate pydantic validation errors into YAML paths and readable reasons."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .checks_common import Issue, Path, quote
from .suggest import unknown_field_reason


def describe(value: object) -> str:
    """Short description of a YAML value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return quote(value)
    text = repr(value)
    # e.g. a 4,000-digit integer: keep the message one readable line
    return text if len(text) <= 80 else f"{text[:80]}... ({len(text)} characters)"


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the underlying type."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_fields_by_alias(model: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        out[info.alias or name] = info.annotation
        out.setdefault(name, info.annotation)
    return out


def _container_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> Any:
    """The (unwrapped) type that holds the last element of ``loc``."""
    tp: Any = root
    for part in loc[:-1]:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = _model_fields_by_alias(tp).get(str(part))
        elif origin in (tuple, list):
            tp = typing.get_args(tp)[0]
        elif origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
            tp = typing.get_args(tp)[1]
        else:
            return None
        if tp is None:
            return None
    return _unwrap(tp)


def _reason(err: ErrorDetails, root: type[BaseModel]) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    loc = err["loc"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        holder = _container_at(root, loc)
        valid: list[str] = []
        if isinstance(holder, type) and issubclass(holder, BaseModel):
            valid = [info.alias or name for name, info in holder.model_fields.items()]
        return unknown_field_reason(str(loc[-1]), valid)
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}, got {describe(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {describe(value)}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"must be a number, got {describe(value)}"
    if kind == "string_type":
        hint = f' (quote it: "{value}")' if isinstance(value, int | float | bool) else ""
        return f"must be a string, got {describe(value)}{hint}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list, got {describe(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {describe(value)}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}, got {describe(value)}"
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}, got {describe(value)}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])


def issues_from_validation_error(exc: ValidationError, root: type[BaseModel]) -> Iterator[Issue]:
    """Yield one :class:`Issue` per pydantic error, with a YAML-style path."""
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path: Path = tuple(p for p in loc if p != "[key]")
        yield Issue(path, _reason(err, root))
