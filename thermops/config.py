"""`params.yaml` is the single source of every knob; this module reads it at the edge.

Each step turns its section into a frozen dataclass once (`section`), so functions
take typed values, never the whole namespace. Unknown or missing keys and wrong
types are rejected with the key's dotted name.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

T = TypeVar("T")
DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is missing a key, has an unknown one, or a value of the wrong type."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ParamsError as err:
                errors.append(str(err))
        raise ParamsError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ParamsError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return section_from_mapping(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def section_from_mapping(cls: type[T], mapping: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, checking keys and types."""
    if not isinstance(mapping, dict):
        raise ParamsError(f"{where}: expected a mapping, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs = {}
    for name, f in fields.items():
        if name in mapping:
            kwargs[name] = _coerce(mapping[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{where}: missing key {name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ParamsError(f"{where}: {err}") from None


def merge_params(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a deep copy of `base`, mapping by mapping (neither is changed)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge_params(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """The `name` section of params as a `cls` dataclass."""
    if name not in params:
        raise ParamsError(f"params: missing section {name!r}")
    return section_from_mapping(cls, params[name], name)


def get(params: dict[str, Any], key: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """The value at dotted `key` (`data.sources`), checked against `kind`; ParamsError names the key."""
    value: Any = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ParamsError(f"params: missing key {key}")
        value = value[part]
    if kind is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float))):
        raise ParamsError(f"params: {key} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def seed_of(params: dict[str, Any]) -> int:
    """The top-level `seed`."""
    return get(params, "seed", int)


def classes_of(params: dict[str, Any]) -> list[str]:
    """The top-level `classes`: a non-empty list of names."""
    classes = get(params, "classes", list)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise ParamsError(f"params: classes must be a non-empty list of names, got {classes!r}")
    return list(classes)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) PyTorch; make PyTorch deterministic on CPU."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import torch
    except ImportError:  # the data steps run without torch
        return
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
