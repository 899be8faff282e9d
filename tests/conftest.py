"""Session fixtures shared by the test modules.

`small_params` is params.yaml shrunk for tests; `prepared_dir` runs the real
synthesize and prepare steps once per session on it (a small embedded-world
dataset); `trained_model_dir` fine-tunes a small model on it once per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from thermops.config import merge_params

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# Shrink the default dataset for tests: fewer clips, same cameras and physics.
SMALL_OVERRIDES = {
    "synth": {"clips": {"train": 2, "val": 1, "test": 2}, "stills": {"train": 4, "val": 2, "test": 4}},
}


def write_params(params: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture(scope="session")
def small_params(default_params) -> dict:
    """params.yaml with the dataset shrunk for tests (a fresh deep copy each session)."""
    return merge_params(default_params, SMALL_OVERRIDES)


@pytest.fixture(scope="session")
def small_params_file(small_params, tmp_path_factory) -> Path:
    return write_params(small_params, tmp_path_factory.mktemp("params") / "params.yaml")


def run_step(module: str, *args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` as dvc.yaml does; return the completed process."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def raw_root(small_params, small_params_file, tmp_path_factory) -> Path:
    """data/raw-like folder with the embedded world for every synthetic camera."""
    root = tmp_path_factory.mktemp("raw")
    for cam in small_params["cameras"]:
        run_step(
            "components.synthesize",
            "--params",
            str(small_params_file),
            "--calibration",
            str(ROOT / "data" / "calibration" / f"{cam}.yaml"),
            "--out",
            str(root / "synthetic" / cam),
        )
    return root


@pytest.fixture(scope="session")
def prepared_dir(small_params, raw_root, tmp_path_factory) -> Path:
    """A small prepared dataset (tubelets.npy, manifest.csv, summary.json)."""
    from components import prepare
    from thermops.config import section
    from thermops.data.extract import PrepareParams

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare.run(
        section(small_params, "prepare", PrepareParams),
        ["synthetic"],
        list(small_params["classes"]),
        int(small_params["seed"]),
        raw_root,
        ROOT / "data" / "calibration",
        out,
    )
    return out
