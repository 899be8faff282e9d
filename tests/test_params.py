"""params.yaml is the one source of every knob: the params dataclasses cannot contradict it.

Params dataclasses have no defaults, so every value is read from params.yaml and
a key it lacks is an error that names the path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml

from components.finetune import FinetuneParams
from components.pretrain import PretrainParams
from pipeline.pipeline import KubeflowParams
from thermops.camera.change import TriggerParams
from thermops.config import ParamsError, section_from_mapping
from thermops.data.extract import PrepareParams
from thermops.data.importers import IngestParams
from thermops.data.validation import ValidateParams
from thermops.evaluation.heldout import RealEvalParams
from thermops.model.network import ModelConfig
from thermops.model.preprocess import InputSpec
from thermops.model.releases import ProductionParams
from thermops.robustness.params import GateParams
from thermops.serve.requests import PackageParams
from thermops.world.synth import SynthParams

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
SECTIONS = {
    "synth": SynthParams,
    "prepare": PrepareParams,
    "ingest": IngestParams,
    "validate": ValidateParams,
    "model": ModelConfig,
    "input": InputSpec,
    "pretrain": PretrainParams,
    "finetune": FinetuneParams,
    "gate": GateParams,
    "package": PackageParams,
    "trigger": TriggerParams,
    "kubeflow": KubeflowParams,
    "production": ProductionParams,
    "real_eval": RealEvalParams,
}


def _dataclass_in(tp) -> type | None:
    """The dataclass a field holds directly, or as the value type of a dict (`sources`)."""
    if dataclasses.is_dataclass(tp):
        return tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            found = _dataclass_in(a)
            if found:
                return found
    return None


# Per-source descriptors of real data sets are data, not knobs: a source names only the
# keys its format needs, and an absent key means "not used by this source".
DESCRIPTORS = {"SourceParams"}


def defaulted_fields(cls, where: str, seen: set | None = None) -> list[str]:
    """Fields with a default in `cls` and in every params dataclass it nests."""
    seen = set() if seen is None else seen
    if cls in seen or cls.__name__ in DESCRIPTORS:
        return []
    seen.add(cls)
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            out.append(f"{where}.{f.name} ({cls.__name__})")
        inner = _dataclass_in(hints[f.name])
        if inner is not None:
            out += defaulted_fields(inner, f"{where}.{f.name}", seen)
    return out


def test_every_section_builds_from_params_yaml():
    for name, cls in SECTIONS.items():
        section_from_mapping(cls, PARAMS[name], name)


def test_params_dataclasses_have_no_defaults():
    """Every knob's value comes from params.yaml: no default can contradict it."""
    bad = [d for name, cls in SECTIONS.items() for d in defaulted_fields(cls, name)]
    assert not bad, f"give these no default (params.yaml sets them): {bad}"


def test_a_default_is_caught():
    @dataclasses.dataclass(frozen=True)
    class WithDefault:
        size: int = 32

    assert defaulted_fields(WithDefault, "input") == ["input.size (WithDefault)"]


def test_unknown_keys_are_refused():
    with pytest.raises(ParamsError, match="unknown key"):
        section_from_mapping(InputSpec, {**PARAMS["input"], "sise": 32}, "input")


def test_missing_keys_are_refused():
    mapping = dict(PARAMS["input"])
    del mapping["size"]
    with pytest.raises(ParamsError, match="missing key size"):
        section_from_mapping(InputSpec, mapping, "input")
