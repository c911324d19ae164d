"""Typed config values: a raw YAML value checked, and lightly converted, against a type annotation; the error names
the dotted key. Shared by the run config (conspo.runconfig) and the objectives' hyperparameters (conspo.objective).

    typed_value("train.lr", float, "2e-6")        -> 2e-06   (YAML 1.1 reads 2e-6, without a dot, as a string)
    typed_value("tau", float, "fast", ParameterError)  raises ParameterError("tau: expected a number, got 'fast'")
"""

from __future__ import annotations

import math
import types
import typing


def typed_value(key: str, kind, raw, error: type[Exception] = ValueError):
    """`raw` as a value of annotation `kind` (bool, int, float, str, dict, tuple[...], X | None); `error` naming `key`
    otherwise. Ints pass as floats; numeric strings pass as floats; bools never pass as numbers."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if raw is None:
            return None
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return typed_value(key, options[0], raw, error)
    if kind is bool:
        if not isinstance(raw, bool):
            raise error(f"{key}: expected true or false, got {raw!r}")
        return raw
    if kind is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise error(f"{key}: expected an integer, got {raw!r}")
        return raw
    if kind is float:
        if isinstance(raw, str):
            try:
                raw = float(raw)
            except ValueError:
                raise error(f"{key}: expected a number, got {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise error(f"{key}: expected a finite number, got {raw!r}")
        return float(raw)
    if kind is str:
        if not isinstance(raw, str):
            raise error(f"{key}: expected a string, got {raw!r}")
        return raw
    if kind is dict or origin is dict:
        if not isinstance(raw, dict):
            raise error(f"{key}: expected a mapping, got {raw!r}")
        return dict(raw)
    if origin is tuple:
        items = typing.get_args(kind)
        if not isinstance(raw, (list, tuple)) or len(raw) != len(items):
            raise error(f"{key}: expected a list of {len(items)} values, got {raw!r}")
        return tuple(typed_value(f"{key}[{i}]", k, v, error) for i, (k, v) in enumerate(zip(items, raw)))
    raise TypeError(f"{key}: unsupported annotation {kind!r}")
