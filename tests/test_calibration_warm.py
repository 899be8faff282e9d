"""End to end: with a production model, a one-camera recalibration is a warm (cheap) retrain.

In a scratch copy of the working tree with tiny params: a full `dvc repro`, promoted to
production (version 1); `fence_mid` re-aimed through the registry CLI; the watcher's
`dvc repro` then re-synthesizes only fence_mid, plans a warm retrain (the warmstart stage),
reuses production's encoder unchanged (pretrain trains nothing), continues fine-tuning from the
production classifier and gates the result against production camera by camera. Promoting
that candidate makes the next plan full again: nothing moved since, and a warm model is
followed by the full retrain it stood in for.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml
from pipeline_helpers import copy_repo
from test_calibration_e2e import TINY, _env, _override, _ran, _run

from tests.calibration_helpers import REPO, git


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_recalibration_with_production_is_a_warm_retrain(tmp_path):
    root = copy_repo(REPO, tmp_path / "repo", _override(yaml.safe_load((REPO / "params.yaml").read_text()), TINY))
    env = _env(tmp_path)
    py = sys.executable

    # 1. A full run, promoted: production version 1.
    first = _run([py, "-m", "dvc", "repro"], root, env)
    assert "warmstart: full retrain (no production model to start from)" in first
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first run")
    out = _run([py, "-m", "pipeline.production", "promote", "--note", "first", "--commit"], root, env)
    assert "production is now version 1" in out
    prod_card = json.loads((root / "models" / "gated" / "card.json").read_text())
    assert prod_card["warm_start"] is None and set(prod_card["data"]["per_camera"]) == set(prod_card["calibrations"])
    assert prod_card["training_code"]["files"] and "components/finetune.py" in prod_card["training_code"]["files"]

    # 2. Re-aim fence_mid; the watcher's retrain is warm.
    _run([py, "-m", "pipeline.recalibrate", "record", "fence_mid", "--set", "geometry.pitch_deg=8.0"], root, env)
    git(root, "commit", "-q", "-am", "fence_mid re-aimed")
    log = _run([py, "-m", "pipeline.recalibrate", "watch", "--once", "--mode", "local"], root, env)
    assert "triggered: local: python -m dvc repro succeeded" in log
    ran = _ran(log)
    assert "synthesize@fence_mid" in ran and not {s for s in ran if s.startswith("synthesize@")} - {
        "synthesize@fence_mid"
    }
    assert "warmstart: warm retrain from production version 1: fence_mid moved" in log
    assert "the encoder of production version 1 reused (no epoch)" in log
    assert "continuing from the production classifier" in log
    assert "retrained (warm, from production version 1)" in log  # the camera's state says how
    assert "Data and pipelines are up to date" in _run([py, "-m", "dvc", "status"], root, env)

    # The encoder is production's, byte for byte in value; the fine-tuned card says how it was made.
    enc = torch.load(root / "models" / "pretrained" / "encoder.pt", weights_only=True)
    prod = torch.load(root / "models" / "baseline" / "model.pt", weights_only=True)
    assert enc.keys() == {k[len("encoder.") :] for k in prod if k.startswith("encoder.")}
    assert all(torch.equal(v, prod["encoder." + k]) for k, v in enc.items())
    card = json.loads((root / "models" / "gated" / "card.json").read_text())
    ws = card["warm_start"]
    assert ws["chain"] == 1 and ws["moved_cameras"] == ["fence_mid"] and ws["production"]["version"] == 1
    assert card["calibrations"]["fence_mid"] != prod_card["calibrations"]["fence_mid"]
    assert card["metrics"]["comparisons_from"] == "production version 1 (encoder reused)"
    assert card["metrics"]["linear_probe_pretrained"] == prod_card["metrics"]["linear_probe_pretrained"]
    weights = torch.load(root / "models" / "gated" / "model.pt", weights_only=True)
    assert any(not torch.equal(weights[k], prod[k]) for k in prod)  # fine-tuning moved the model
    gate = json.loads((root / "reports" / "gate" / "gate.json").read_text())
    assert gate["baseline"]["version"] == 1 and gate["passed"]
    names = {c["name"] for c in gate["checks"]}  # judged camera by camera (skipped where too few test tubelets)
    assert {f"regression:clean_accuracy[{cam}]" for cam in prod_card["calibrations"]} <= names
    assert json.loads((root / "metrics" / "warmstart.json").read_text())["mode"] == "warm"

    # 3. Promoted, the warm candidate is production version 2; nothing moved since: the next plan is full.
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "warm retrain")
    _run([py, "-m", "pipeline.production", "promote", "--note", "fence_mid re-aimed", "--commit"], root, env)
    _run([py, "-m", "dvc", "repro", "warmstart"], root, env)
    m = json.loads((root / "metrics" / "warmstart.json").read_text())
    assert m["mode"] == "full" and m["production"] == 2
    assert any("no camera's data moved" in r for r in m["reasons"]), m["reasons"]
