"""Helpers for the calibration registry and watcher tests: a tiny git project with a deployed model folder."""

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


def write_deployed(
    root: Path, calibrations: dict[str, str], envelope: dict[str, Any] | None = ENVELOPE, passed: bool = True
) -> Path:
    """A deployed model folder as the package step stores it: card.json (calibrations, envelope, input
    size, the gate's decision) and calibration/<camera>.yaml snapshots of the cameras whose current
    file has the deployed version."""
    card = {
        "format": "thermops-model/1",
        "classes": ["person", "vehicle", "animal", "nuisance"],
        "model": {},
        "input": {"frames": 8, "size": 32, "celsius_scale_k": 5.0, "robust_floor": 1.0},
        "calibrations": calibrations,
        "data": {},
        "gate": {"passed": passed, "decision": "pass" if passed else "fail"},
    }
    if envelope is not None:
        card["envelope"] = envelope
    folder = root / "models" / "deployed"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "calibration").mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    for cam, version in calibrations.items():
        src = root / "data" / "calibration" / f"{cam}.yaml"
        if src.is_file() and yaml.safe_load(src.read_text()).get("version") == version:
            shutil.copy(src, folder / "calibration" / f"{cam}.yaml")
    return folder


# Stands in for `dvc repro` in the fast tests: a real process that counts its runs, optionally
# sleeps, optionally writes the gate's verdict file, and exits with the status asked of it.
FAKE_RETRAIN = """
import json, os, pathlib, sys, time
root = pathlib.Path.cwd()
with open(root / "retrain-calls.txt", "a") as fh:
    fh.write(f"{os.getpid()}\\n")
cfg = json.loads((root / "retrain.json").read_text()) if (root / "retrain.json").exists() else {}
time.sleep(cfg.get("sleep", 0))
if "gate" in cfg:
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "gate.json").write_text(json.dumps(cfg["gate"]))
print(cfg.get("output", "fake retrain"), flush=True)
sys.exit(cfg.get("status", 0))
"""


class Retrain:
    """The fake retrain of a project made by `make_project`: what it does next, and how often it ran."""

    def __init__(self, root: Path, status: int = 0, **cfg: Any):
        self.root = root
        self.set(status=status, **cfg)

    def set(self, **cfg: Any) -> Retrain:
        (self.root / "retrain.json").write_text(json.dumps(cfg))
        return self

    @property
    def calls(self) -> list[str]:
        path = self.root / "retrain-calls.txt"
        return path.read_text().split() if path.exists() else []


def make_project(
    tmp_path: Path,
    cameras: tuple[str, ...] = SYNTHETIC,
    envelope: dict | None = ENVELOPE,
    trigger: dict[str, Any] | None = None,
) -> Path:
    """A git repo with params.yaml, the cameras' calibrations and a model deployed on them.

    The watcher's local retrain is the fake one above (`trigger.retrain_command`), with
    no wait between retries; `trigger` overrides more keys.
    """
    root = tmp_path / "proj"
    (root / "data" / "calibration").mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["trigger"].update({"retrain_command": ["python", "retrain.py"], "retry_backoff_s": 0.0, **(trigger or {})})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "retrain.py").write_text(FAKE_RETRAIN)
    versions = {}
    for cam in cameras:
        shutil.copy(REPO / "data" / "calibration" / f"{cam}.yaml", root / "data" / "calibration" / f"{cam}.yaml")
        versions[cam] = yaml.safe_load((root / "data" / "calibration" / f"{cam}.yaml").read_text())["version"]
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("models/\nmetrics/\n.thermops/\nretrain-calls.txt\nretrain.json\n")
    write_deployed(root, versions, envelope)
    commit_all(root, "deployed calibrations")
    return root


def deployed_dir(root: Path) -> Path:
    return root / "models" / "deployed"


def process_table_with(marker: str, value: str | None = None) -> list[int]:
    """Pids of live processes whose environment holds `marker` (=`value` if given): the process table."""
    found = []
    needle = f"{marker}={value}".encode() if value else f"{marker}=".encode()
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            data = env.read_bytes()
            state = (env.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(item.startswith(needle) for item in data.split(b"\0")):
            found.append(int(env.parent.name))
    return found


# -- a tiny DVC project whose pipeline is shaped like thermops's end: train, gate, package ------------

TOY_STEPS = '''
"""Toy train / gate / package for the watcher's supervision tests (seconds, not minutes)."""
import json, os, pathlib, shutil, sys, time
import yaml

p = yaml.safe_load(open("params.yaml"))
step = sys.argv[1]
cals = {c: yaml.safe_load(open(f"data/calibration/{c}.yaml"))["version"] for c in p["cameras"]}
if step == "train":
    with open("train-runs.txt", "a") as fh:  # every start of the training command
        fh.write(f"{os.getpid()} {json.dumps(cals)}\\n")
    pathlib.Path("train-started").write_text(str(os.getpid()))
    deadline = time.monotonic() + p["toy"]["train_s"]
    while time.monotonic() < deadline:
        time.sleep(0.1)
    out = pathlib.Path("models/candidate")
    out.mkdir(parents=True, exist_ok=True)
    card = {"calibrations": cals, "input": {"size": 32}, "envelope": p["toy"]["envelope"]}
    (out / "card.json").write_text(json.dumps(card, indent=2))
elif step == "gate":
    card = json.loads(pathlib.Path("models/candidate/card.json").read_text())
    refused = p["toy"]["refuse"]
    reasons = ["flip rate 0.125 > 0.1 (perspective)"] if refused else []
    card["gate"] = {"passed": not refused, "decision": "fail" if refused else "pass", "reasons": reasons}
    out = pathlib.Path("models/gated")  # written even when the gate refuses, as the real gate does
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.json").write_text(json.dumps(card, indent=2))
    pathlib.Path("metrics").mkdir(exist_ok=True)
    pathlib.Path("metrics/gate.json").write_text(json.dumps({"passed": not refused, "reasons": reasons}))
    if refused:
        print("error: gate failed: " + "; ".join(reasons), file=sys.stderr)
        sys.exit(3)
elif step == "package":
    assert json.loads(pathlib.Path("metrics/gate.json").read_text())["passed"] is True
    out = pathlib.Path("models/deployed")
    (out / "calibration").mkdir(parents=True, exist_ok=True)
    shutil.copy("models/gated/card.json", out / "card.json")
    for cam in cals:
        shutil.copy(f"data/calibration/{cam}.yaml", out / "calibration" / f"{cam}.yaml")
'''

TOY_DVC = {
    "stages": {
        "train": {
            "cmd": "python steps.py train",
            "deps": ["steps.py", "data/calibration"],
            "params": ["cameras", "toy.train_s"],
            "outs": ["models/candidate"],
        },
        "gate": {
            "cmd": "python steps.py gate",
            "deps": ["steps.py", "models/candidate"],
            "params": ["toy.refuse"],
            "outs": ["models/gated"],
            "metrics": [{"metrics/gate.json": {"cache": False}}],
        },
        "package": {
            "cmd": "python steps.py package",
            "deps": ["steps.py", "models/gated", "metrics/gate.json"],
            "outs": ["models/deployed"],
        },
    }
}


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a watcher or DVC run as an operator would have it (this venv, this checkout)."""
    import sys

    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "DVC_NO_ANALYTICS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        **extra,
    }


def set_toy(root: Path, **toy: Any) -> None:
    """Change the toy pipeline's knobs (params.yaml `toy`)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["toy"].update(toy)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_dvc_project(tmp_path: Path, cameras: tuple[str, ...] = ("fence_mid", "gate_wide")) -> Path:
    """A git + DVC project (toy train/gate/package) whose first `dvc repro` deployed a model.

    The watcher runs there with `--deployed-model models/deployed` and its default
    retrain command, `python -m dvc repro`.
    """
    import sys

    root = tmp_path / "dvcproj"
    (root / "data" / "calibration").mkdir(parents=True)
    for cam in cameras:
        shutil.copy(REPO / "data" / "calibration" / f"{cam}.yaml", root / "data" / "calibration")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["cameras"] = list(cameras)
    params["trigger"].update({"retry_backoff_s": 0.0, "stop_grace_s": 5.0})
    params["toy"] = {"train_s": 0.0, "refuse": False, "envelope": ENVELOPE}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "steps.py").write_text(TOY_STEPS)
    (root / "dvc.yaml").write_text(yaml.safe_dump(TOY_DVC, sort_keys=False))
    (root / ".gitignore").write_text(".thermops/\ntrain-runs.txt\ntrain-started\n")
    env = subprocess_env()
    git(root, "init", "-q", "-b", "main")
    for cmd in (["init", "-q"], ["config", "core.autostage", "false"], ["repro", "-q"]):
        subprocess.run([sys.executable, "-m", "dvc", *cmd], cwd=root, env=env, check=True, capture_output=True)
    (root / "train-runs.txt").unlink()
    (root / "train-started").unlink()
    commit_all(root, "a deployed model")
    return root
