"""End to end: a calibration edit, the watcher in local mode, `dvc repro`, a new bento with the new version.

Runs the real pipeline (synthesize -> prepare -> validate -> pretrain -> finetune ->
gate -> package) twice in a scratch copy of the working tree with tiny params: once
to deploy a model, once through the watcher after re-aiming one camera.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import copy_repo

from tests.calibration_helpers import REPO, git

# Shrink every step to seconds; loosen the gate so a seconds-trained model passes (this
# test is about the trigger's plumbing, the gate's own tests judge models).
TINY = {
    "synth": {
        "clips": {"train": 2, "val": 1, "test": 2},
        "frames": {"train": 16, "val": 16, "test": 8},
        "stills": {"train": 2, "val": 1, "test": 2},
    },
    "pretrain": {"optim": {"epochs": 1, "batch_size": 64}},
    "finetune": {
        "optim": {"epochs": 1},
        "probe": {"iters": 10},
        "low_label": {"optim": {"epochs": 1}, "seeds": [0]},
    },
    "gate": {
        "attack_subset": 8,
        "threat_models": {
            "linf": {"eps": [0.01], "attacks": ["fgsm"]},
            "l2": {"eps": [0.25], "attacks": ["pgd"]},
        },
        "pgd": {"steps": 2},
        "apgd": {"steps": 2},
        "cw": {"subset": 2, "steps": 2, "search_steps": 1},
        "sanity": {
            "monotone_tol": 1.0,
            "large_eps_max_accuracy": 1.0,
            "more_steps_tol": 1.0,
            "max_zero_grad_fraction": 1.0,
            "black_box_tol": 1.0,
            "random_draws": 1,
        },
        "corruptions": {"subset": 8},
        "perspective": {
            "subset": 8,
            "magnitudes_px": [1.0, 2.0],
            "decision_px": 1.0,
            "worst_case": {"subset": 4, "budget_px": 1.0, "steps": 1},
        },
        "radiometric": {"gain_changes": [0.1], "offset_k": [0.5]},
        "thresholds": {
            "clean_accuracy": 0.0,
            "robust_accuracy": {"linf": {0.01: 0.0}, "l2": {0.25: 0.0}},
            "max_mean_ce": 1000.0,
            "max_flip_rate": 1.0,
            "max_stability_slope": 1000.0,
        },
        "regression": {"accuracy_tol": 1.0, "relative_tol": 1000.0},
    },
}


def _override(base: dict, over: dict) -> dict:
    """Apply `over` to keys that exist in `base` (a renamed key is skipped, not invented)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in out:
            continue
        if isinstance(v, dict) and isinstance(out[k], dict) and not all(isinstance(x, float) for x in v):
            out[k] = _override(out[k], v)
        else:
            out[k] = v
    return out


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": "",
    }


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def _ran(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


def _bento_calibrations(root: Path, env: dict[str, str]) -> dict:
    script = (
        "import json, pathlib, bentoml, yaml\n"
        "info = json.loads(pathlib.Path('models/bento.json').read_text())\n"
        "m = bentoml.models.get(info['model_tag'])\n"
        "b = bentoml.get(info['bento_tag'])\n"
        "snap = {p.stem: yaml.safe_load(p.read_text())['version'] for p in pathlib.Path(m.path, 'calibration').glob('*.yaml')}\n"
        "d = b.info.to_dict()\n"
        "refs = [x['tag'] for s in d['services'] for x in s['models']] + [d['args'].get('model_tag')]\n"
        "print(json.dumps({'metadata': m.info.metadata['calibrations'], 'snapshot': snap,\n"
        "                  'bento_models': refs, 'model_tag': info['model_tag']}))\n"
    )
    return json.loads(_run([sys.executable, "-c", script], root, env).strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_reaimed_camera_retrains_through_dvc_and_new_bento_carries_the_version(tmp_path):
    # the working tree without pipeline outputs or the lock, so the first run starts clean; tiny params
    root = copy_repo(REPO, tmp_path / "repo", _override(yaml.safe_load((REPO / "params.yaml").read_text()), TINY))
    env = _env(tmp_path)

    # 1. Deploy: the first full run gates and packages a model on fence_mid 2026-11-01.1.
    _run([sys.executable, "-m", "dvc", "repro"], root, env)
    card = json.loads((root / "models" / "gated" / "card.json").read_text())
    assert card["calibrations"]["fence_mid"] == "2026-11-01.1"
    first = _bento_calibrations(root, env)
    assert first["metadata"]["fence_mid"] == "2026-11-01.1"

    # 2. Re-aim fence_mid by 3 degrees through the registry CLI, commit it.
    out = _run(
        [
            sys.executable,
            "-m",
            "pipeline.recalibrate",
            "record",
            "fence_mid",
            "--set",
            "geometry.pitch_deg=8.0",
            "--valid-from",
            "2026-11-22",
        ],
        root,
        env,
    )
    assert "recorded fence_mid version 2026-11-22.1" in out
    git(root, "add", "data/calibration/fence_mid.yaml")
    git(root, "commit", "-q", "-m", "fence_mid re-aimed")

    # 3. The watcher sees a material change and runs `dvc repro` once.
    log = _run([sys.executable, "-m", "pipeline.recalibrate", "watch", "--once", "--mode", "local"], root, env)
    assert "fence_mid 2026-11-01.1 -> 2026-11-22.1: MATERIAL" in log
    assert "triggered: local: python -m dvc repro succeeded" in log
    ran = _ran(log)
    assert "synthesize@fence_mid" in ran and {"prepare", "finetune", "gate", "package"} <= ran
    assert not ran & {"synthesize@gate_wide", "synthesize@perimeter_long"}  # untouched cameras
    assert "Data and pipelines are up to date" in _run([sys.executable, "-m", "dvc", "status"], root, env)

    # 4. The new model and bento carry the new calibration version.
    card = json.loads((root / "models" / "gated" / "card.json").read_text())
    assert card["calibrations"]["fence_mid"] == "2026-11-22.1"
    new = _bento_calibrations(root, env)
    assert new["metadata"]["fence_mid"] == "2026-11-22.1" and new["snapshot"]["fence_mid"] == "2026-11-22.1"
    # The bento serves that model: its service's model reference and its build args name it.
    assert new["model_tag"] != first["model_tag"] and set(new["bento_models"]) == {new["model_tag"]}

    # 5. A second pass finds the change handled: nothing runs.
    log = _run([sys.executable, "-m", "pipeline.recalibrate", "watch", "--once"], root, env)
    assert "no retrain triggered" in log and not _ran(log) and "fence_mid: deployed" in log
