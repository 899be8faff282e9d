"""The package step: refuses a failed gate, records lineage, builds an offline bento.

The step runs as its CLI in a subprocess (as `dvc repro` runs it), each with its
own BENTOML_HOME, so the tests never touch the user's store.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.serving_helpers import (
    ROOT,
    display8_calibration,
    make_gated_model,
    package_in_subprocess,
    packaged_once,
    radiometric_calibration,
    small_package_params,
    write_params,
)
from thermops.camera.calibration import write_calibration
from thermops.io import read_json
from thermops.model.card import input_spec_from_card, model_config_from_card
from thermops.model.network import TubeletClassifier


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """One real package run: (project paths, BENTOML_HOME, bento.json content)."""
    return packaged_once(tmp_path_factory)


def _model_dir(home: Path, tag: str) -> Path:
    name, version = tag.split(":")
    return home / "models" / name / version


def test_refuses_a_failed_gate(tmp_path):
    paths = make_gated_model(tmp_path, passed=False)
    home, out = tmp_path / "bentoml", tmp_path / "models" / "bento.json"
    proc = package_in_subprocess(paths, home, out, write_params(tmp_path / "params.yaml", small_package_params()))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "gate did not pass" in lines[0] and "too weak" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not (home / "models").exists() or not any((home / "models").rglob("model.yaml"))


def test_refuses_a_calibration_the_model_was_not_gated_on(tmp_path):
    paths = make_gated_model(tmp_path)
    write_calibration(radiometric_calibration(version="v2"), paths["calibration"])  # recalibrated since
    out = tmp_path / "models" / "bento.json"
    proc = package_in_subprocess(
        paths, tmp_path / "bentoml", out, write_params(tmp_path / "params.yaml", small_package_params())
    )
    assert proc.returncode == 1
    assert "cam-lin" in proc.stderr and "'v2'" in proc.stderr and "'v1'" in proc.stderr
    assert not out.exists()


def test_bento_json_names_the_bento_and_model(packaged):
    _, home, result = packaged
    params = small_package_params()
    assert re.fullmatch(rf"{params.bento_name}:[0-9a-f]{{16}}", result["bento_tag"])
    assert re.fullmatch(rf"{params.model_name}:[0-9a-f]{{16}}", result["model_tag"])
    assert set(result) == {"bento_tag", "model_tag"}  # nothing of this machine: dvc.lock hashes the file
    name, version = result["bento_tag"].split(":")
    assert (home / "bentos" / name / version / "bento.yaml").is_file()


def test_model_metadata_carries_lineage_and_calibration_versions(packaged):
    paths, home, result = packaged
    info = yaml.safe_load((_model_dir(home, result["model_tag"]) / "model.yaml").read_text())
    meta, labels = info["metadata"], info["labels"]
    assert meta["calibrations"] == {"cam-lin": "v1", "cam-d8": "d1"}
    assert meta["gate"]["passed"] is True and meta["gate"]["metrics"]["clean_macro_f1"] == 0.5
    assert meta["envelope"] == {"pitch_deg": [-3.0, 3.0], "gain_rel": [0.9, 1.1]}
    assert meta["data_version"] == "0123456789abcdef" * 2 and labels["data_version"] == meta["data_version"]
    assert re.fullmatch(r"([0-9a-f]{40}(-dirty)?|unknown)", meta["git_revision"])
    assert labels["gate"] == "passed"
    assert meta["params"]["package"]["max_batch_size"] == small_package_params().max_batch_size
    assert meta["classes"] == ["person", "vehicle", "animal", "nuisance"]


def test_model_entry_loads_with_weights_only_and_holds_the_calibrations(packaged):
    paths, home, result = packaged
    entry = _model_dir(home, result["model_tag"])
    card = read_json(entry / "card.json")
    state = torch.load(entry / "model.pt", map_location="cpu", weights_only=True)
    model = TubeletClassifier(model_config_from_card(card), len(card["classes"]))
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    spec = input_spec_from_card(card)
    assert model.eval()(torch.zeros(2, 1, spec.frames, spec.size, spec.size)).shape == (2, 4)
    cals = sorted(p.name for p in (entry / "calibration").glob("*.yaml"))
    assert cals == ["cam-d8.yaml", "cam-lin.yaml"]
    assert (entry / "calibration" / "cam-d8.yaml").read_text() == display8_calibration().to_yaml()


def test_bento_holds_only_what_serving_needs_with_pinned_deps(packaged):
    _, home, result = packaged
    name, version = result["bento_tag"].split(":")
    bento = home / "bentos" / name / version
    src = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*") if p.is_file()}
    assert {"service.py", "thermops/serve/requests.py", "thermops/model/preprocess.py", "thermops/model/card.py"} <= src
    assert not any(s.startswith(("data/", "tests/", "models/", "components/", "pipeline/")) for s in src), src
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["args"]["model_tag"] == result["model_tag"]
    assert info["args"]["max_batch_size"] == small_package_params().max_batch_size
    assert [m["tag"] for m in info["services"][0]["models"]] == [result["model_tag"]]
    reqs = (bento / "env" / "python" / "requirements.txt").read_text().split()
    assert "torch==2.14.1" in reqs and not any(r.startswith(("dvc", "great-expectations", "kfp")) for r in reqs)


def test_bentofile_pins_agree_with_the_project_pins():
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert bentofile["python"]["lock_packages"] is False
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            k, v = line.split("==", 1)
            constraints[k.strip().lower().replace("_", "-")] = v.strip()
    pins = dict(p.split("==") for p in bentofile["python"]["packages"])
    assert len(pins) == len(bentofile["python"]["packages"]), "every bento package needs an explicit pin"
    for pkg, version in pins.items():
        assert constraints.get(pkg.lower()) == version, (
            f"{pkg}=={version} vs constraints {constraints.get(pkg.lower())}"
        )
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.14.1"' in pyproject and pins["torch"] == "2.14.1"


def test_packaging_twice_gives_the_same_tags(packaged, tmp_path):
    paths, home, result = packaged
    out = tmp_path / "bento.json"
    proc = package_in_subprocess(paths, home, out, write_params(tmp_path / "params.yaml", small_package_params()))
    assert proc.returncode == 0, proc.stderr
    again = read_json(out)
    assert (again["bento_tag"], again["model_tag"]) == (result["bento_tag"], result["model_tag"])
    name = result["model_tag"].split(":")[0]
    assert len([p for p in (home / "models" / name).iterdir() if p.name != "latest"]) == 1
