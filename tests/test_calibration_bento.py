"""The deployed lineage from the packaged model (models/bento.json -> the BentoML model store): its
metadata and the calibration snapshot in the model entry; the gate's output folder is never read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.calibration_helpers import REPO, make_project

# Runs in a subprocess so that BENTOML_HOME is set before bentoml is imported.
SCRIPT = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    import bentoml
    from pipeline.recalibrate import watch_once
    from tests.calibration_helpers import ENVELOPE, Retrain
    from thermops.camera.registry import record_calibration

    root = Path(sys.argv[1])
    deployed = root / "deployed.yaml"  # the calibration the model was trained on, NOT in git
    meta = {"calibrations": {"fence_mid": "2026-10-01.1"}, "envelope": ENVELOPE, "input": {"size": 32},
            "gate": {"passed": True}}
    with bentoml.models.create("thermops-classifier", metadata=meta) as entry:
        (Path(entry.path) / "calibration").mkdir()
        shutil.copy(deployed, Path(entry.path) / "calibration" / "fence_mid.yaml")
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "bento.json").write_text(json.dumps({"bento_tag": "thermops:x", "model_tag": str(entry.tag)}))
    # The trap: a gate output folder that refused a model trained on another version.
    (root / "models" / "gated").mkdir(parents=True)
    (root / "models" / "gated" / "card.json").write_text(json.dumps(
        {"calibrations": {"fence_mid": "2026-11-01.1"}, "gate": {"passed": False}}))
    retrain = Retrain(root)
    first = watch_once(params_path=root / "params.yaml")
    record_calibration(root / "data" / "calibration", "fence_mid", assignments=[("geometry.pitch_deg", 8.0)])
    second = watch_once(params_path=root / "params.yaml")
    print(json.dumps({
        "first": [r.summary() for r in first.immaterial + first.material],
        "second_material": [r.old_version for r in second.material],
        "calls": len(retrain.calls),
    }))
    """
)


def test_the_packaged_model_is_the_deployed_lineage(tmp_path):
    root = make_project(tmp_path, cameras=("fence_mid",))
    # The deployed calibration: the current one, 0.05 degrees lower, under a version git never saw.
    cal = (root / "data" / "calibration" / "fence_mid.yaml").read_text()
    (root / "deployed.yaml").write_text(
        cal.replace("pitch_deg: 5.0", "pitch_deg: 4.95").replace("2026-11-01.1", "2026-10-01.1")
    )
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(root)], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Compared with the snapshot's content (0.05 deg: inside), not treated as unknown.
    (summary,) = out["first"]
    assert summary.startswith("fence_mid 2026-10-01.1 -> 2026-11-01.1: immaterial"), summary
    # Re-aimed by 3 degrees: material against the same deployed version, one retrain.
    assert out["second_material"] == ["2026-10-01.1"] and out["calls"] == 1
