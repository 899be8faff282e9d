"""Helpers for the calibration registry and trigger tests: a tiny git project with a deployed card."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = ("fence_mid", "gate_wide", "perimeter_long")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "thermops-test",
    "GIT_AUTHOR_EMAIL": "test@thermops.invalid",
    "GIT_COMMITTER_NAME": "thermops-test",
    "GIT_COMMITTER_EMAIL": "test@thermops.invalid",
}

# A validated envelope as the gate writes it (model-input pixels of a 32-pixel window).
ENVELOPE = {
    "geometric": {"max_corner_px": 2.0, "max_scale_change": 0.1, "units": "model-input pixels", "input_size_px": 32},
    "radiometric": {"max_gain_change": 0.05, "max_offset_k": 1.0, "uniform_offset_invariant": True},
}


def git(root: Path, *args: str) -> str:
    """Run git in `root` with a fixed identity; return stdout."""
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True).stdout


def commit_all(root: Path, message: str) -> None:
    """Commit everything in the scratch repo."""
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


def write_card(root: Path, calibrations: dict[str, str], envelope: dict[str, Any] | None = ENVELOPE) -> Path:
    """A gated model card with the keys the watcher reads (calibrations, envelope, input size)."""
    card = {
        "format": "thermops-model/1",
        "classes": ["person", "vehicle", "animal", "nuisance"],
        "model": {},
        "input": {"frames": 8, "size": 32, "celsius_scale_k": 5.0, "robust_floor": 1.0},
        "calibrations": calibrations,
        "data": {},
    }
    if envelope is not None:
        card["envelope"] = envelope
    path = root / "models" / "gated" / "card.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2))
    return path


def make_project(tmp_path: Path, cameras: tuple[str, ...] = SYNTHETIC, envelope: dict | None = ENVELOPE) -> Path:
    """A git repo with params.yaml, the cameras' calibrations and a card deployed on them."""
    root = tmp_path / "proj"
    (root / "data" / "calibration").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    versions = {}
    for cam in cameras:
        shutil.copy(REPO / "data" / "calibration" / f"{cam}.yaml", root / "data" / "calibration" / f"{cam}.yaml")
        versions[cam] = yaml.safe_load((root / "data" / "calibration" / f"{cam}.yaml").read_text())["version"]
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("models/\n")
    write_card(root, versions, envelope)
    commit_all(root, "deployed calibrations")
    return root


class CountingRunner:
    """Stands in for `dvc repro` in fast tests: counts calls, returns a fixed status."""

    def __init__(self, status: int = 0):
        self.calls: list[tuple[list[str], Path]] = []
        self.status = status

    def __call__(self, cmd: list[str], cwd: Path) -> int:
        self.calls.append((cmd, cwd))
        return self.status
