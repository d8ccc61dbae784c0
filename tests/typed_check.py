"""Strict validation of JSON values against a provider package's TypedDict types.

The `anthropic` package publishes its request types as TypedDicts
(`MessageCreateParams` and everything under it). pydantic's TypeAdapter checks
them only loosely for this purpose: it ignores unknown keys and validates
`Iterable` fields lazily. :func:`check` walks the value and the type together
instead and fails on anything the type does not declare: an unknown key, a
missing required key, a wrong literal or scalar type, in any nested block.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

import typing_extensions
from pydantic import BaseModel


class TypeMismatch(AssertionError):
    pass


_WRAPPERS = {
    typing_extensions.Required,
    typing_extensions.NotRequired,
    typing_extensions.ReadOnly,
    typing.Required,
    typing.NotRequired,
}
_SEQUENCES = {
    list,
    collections.abc.Iterable,
    collections.abc.Sequence,
    collections.abc.Collection,
    typing.List,  # noqa: UP006 - the origin some packages still use
}
_MAPPINGS = {dict, collections.abc.Mapping, typing.Dict}  # noqa: UP006


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def check(value: Any, tp: Any, path: str = "$") -> None:
    """Raise TypeMismatch (with a JSON path) unless `value` is exactly a `tp`."""
    origin = typing.get_origin(tp)
    if origin in _WRAPPERS:
        check(value, typing.get_args(tp)[0], path)
        return
    if origin is typing.Annotated:
        check(value, typing.get_args(tp)[0], path)
        return
    if tp is Any or tp is object:
        return
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                check(value, option, path)
            except TypeMismatch as err:
                errors.append(str(err))
            else:
                return
        raise TypeMismatch(f"{path}: {_describe(value)} matches no option: " + " | ".join(errors))
    if origin in (typing.Literal, typing_extensions.Literal):
        if value not in typing.get_args(tp) or isinstance(value, bool) != any(
            isinstance(a, bool) for a in typing.get_args(tp) if a == value
        ):
            raise TypeMismatch(f"{path}: {_describe(value)} is not one of {typing.get_args(tp)}")
        return
    if tp is type(None):
        if value is not None:
            raise TypeMismatch(f"{path}: expected null, got {_describe(value)}")
        return
    if typing_extensions.is_typeddict(tp):
        _check_typeddict(value, tp, path)
        return
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        # Response models appear in some request unions; a request never holds one.
        raise TypeMismatch(f"{path}: a request body cannot hold a {tp.__name__}")
    if origin is not None and getattr(origin, "__name__", "") == "SequenceNotStr":
        origin = list
    if getattr(tp, "__name__", "") == "SequenceNotStr":
        tp, origin = list[Any], list
    if origin in _SEQUENCES or tp in _SEQUENCES:
        if not isinstance(value, list):
            raise TypeMismatch(f"{path}: expected a list, got {_describe(value)}")
        args = typing.get_args(tp)
        for index, item in enumerate(value):
            check(item, args[0] if args else Any, f"{path}[{index}]")
        return
    if origin in _MAPPINGS or tp in _MAPPINGS:
        if not isinstance(value, dict):
            raise TypeMismatch(f"{path}: expected an object, got {_describe(value)}")
        args = typing.get_args(tp)
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeMismatch(f"{path}: object keys must be strings")
            check(item, args[1] if len(args) == 2 else Any, f"{path}.{key}")
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeMismatch(f"{path}: expected a number, got {_describe(value)}")
        return
    if tp in (str, int, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise TypeMismatch(f"{path}: expected {tp.__name__}, got {_describe(value)}")
        return
    if tp is bytes or getattr(tp, "__name__", "") in ("PathLike", "IO", "BufferedReader"):
        raise TypeMismatch(f"{path}: a JSON body cannot hold {tp!r}")
    raise TypeMismatch(f"{path}: unsupported type {tp!r} in the checker")


def _check_typeddict(value: Any, tp: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise TypeMismatch(f"{path}: expected an object ({tp.__name__}), got {_describe(value)}")
    hints = typing.get_type_hints(tp, include_extras=True)
    config = getattr(tp, "__pydantic_config__", None) or {}
    if config.get("extra") != "allow":
        unknown = sorted(set(value) - set(hints))
        if unknown:
            raise TypeMismatch(f"{path}: unknown keys {unknown} for {tp.__name__}")
    missing = sorted(set(tp.__required_keys__) - set(value))
    if missing:
        raise TypeMismatch(f"{path}: missing required keys {missing} of {tp.__name__}")
    for key, item in value.items():
        if key in hints:
            check(item, hints[key], f"{path}.{key}")
