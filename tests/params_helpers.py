"""Params dataclasses for tests, built from params.yaml (they have no defaults of their own)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from thermops.config import section_from_mapping

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
T = TypeVar("T")


def from_params(cls: type[T], path: str, **changes: Any) -> T:
    """`cls` built from params.yaml at the dotted `path`, with `changes` replacing fields."""
    value: Any = PARAMS
    for key in path.split("."):
        value = value[key]
    return dataclasses.replace(section_from_mapping(cls, value, path), **changes)
