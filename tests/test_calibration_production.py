"""The watcher's deployed lineage is the production model (deploy/production.json + the store).

Order (pipeline.watch.deployed_lineage): --deployed-model, else the production model, else (only
when nothing was ever promoted) the packaged candidate of models/bento.json. A retrain that passed
the gate is a candidate: its camera waits for promotion and is not retrained again; with
`trigger.auto_promote` the watcher promotes it itself, once. The registry and the folder store are
real (pipeline.production); the retrain is a real process (calibration_helpers.FAKE_RETRAIN, or
below a script that packages a real BentoML model and bento).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline import production as P
from pipeline.recalibrate import main, watch_once
from pipeline.watch import deployed_lineage
from tests.calibration_helpers import ENVELOPE, REPO, Retrain, deployed_dir, make_project, write_deployed
from thermops.camera.calibration import CalibrationError
from thermops.camera.registry import record_calibration

NEW = "2026-11-22.1"


def _versions(root: Path) -> dict[str, str]:
    return {
        p.stem: yaml.safe_load(p.read_text())["version"] for p in sorted((root / "data" / "calibration").glob("*.yaml"))
    }


def _candidate(root: Path, calibrations: dict[str, str], name: str) -> Path:
    """A gated candidate folder (card.json, calibration/ snapshots, weights, entry.json) as the store holds it."""
    folder = write_deployed(root, calibrations)  # models/deployed: card + snapshots of the current files
    out = root / "candidates" / name
    shutil.copytree(folder, out)
    shutil.rmtree(folder)
    (out / "model.pt").write_bytes(b"weights " + name.encode())
    (out / "bento").mkdir()
    (out / "bento" / f"thermops-{name}.bento").write_bytes(b"not a real bento")
    entry = {
        "format": P.ENTRY_FORMAT,
        "model_tag": f"thermops-classifier:{name}",
        "bento_tag": f"thermops:{name}",
        "bento_archive": f"bento/thermops-{name}.bento",
        "labels": {},
        "metadata": {},
    }
    (out / "entry.json").write_text(json.dumps(entry))
    return out


def _promote(root: Path, calibrations: dict[str, str], name: str) -> int:
    digest = P.open_store(root).put_folder(_candidate(root, calibrations, name))
    return P.promote(root, f"test: {name}", digest=digest).version


def _project(tmp_path: Path, **trigger) -> Path:
    root = make_project(tmp_path, trigger=trigger or None)
    shutil.rmtree(deployed_dir(root))  # no --deployed-model here: production is the deployed model
    P.init(root)
    return root


def _record(root: Path, cam: str, **sets) -> None:
    record_calibration(root / "data" / "calibration", cam, assignments=list(sets.items()), version=NEW)


def _watch(root: Path, **kw):
    return watch_once(params_path=root / "params.yaml", **kw)


def test_production_beats_the_packaged_candidate_and_an_operator_folder_beats_production(tmp_path):
    root = _project(tmp_path)
    assert deployed_lineage(root) is None  # empty registry, no models/bento.json: nothing deployed
    old = _versions(root)
    assert _promote(root, old, "v1") == 1
    # A packaged candidate whose model is in no BentoML store: reading it would be an error, so
    # the lineage below comes from production without ever looking at models/bento.json.
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "bento.json").write_text(json.dumps({"bento_tag": "x:1", "model_tag": "nowhere:1"}))
    dep = deployed_lineage(root)
    assert dep.source.startswith("production version 1 (thermops-classifier:v1, store ")
    assert dep.calibrations == old and dep.envelope.max_corner_px == 2.0
    assert dep.snapshot_dir is not None and sorted(p.stem for p in dep.snapshot_dir.glob("*.yaml")) == sorted(old)
    # The operator's folder wins over production.
    folder = write_deployed(root, {"fence_mid": "2026-01-01.1"})
    dep = deployed_lineage(root, model_dir=folder)
    assert dep.source.startswith("model folder") and dep.calibrations == {"fence_mid": "2026-01-01.1"}
    # A watcher pass compares against production: every camera is deployed, nothing retrains.
    retrain = Retrain(root)
    res = _watch(root)
    assert {s.state for s in res.states} == {"deployed"} and not res.triggered and retrain.calls == []


def test_a_promoted_version_missing_from_the_store_is_a_clear_error(tmp_path, capsys):
    root = _project(tmp_path)
    _promote(root, _versions(root), "v1")
    assert deployed_lineage(root).source.startswith("production version 1")  # fetched into .thermops/production
    # Another machine: the registry names a version that neither its cache nor its store holds.
    shutil.rmtree(root / ".dvc-storage" / "production")
    shutil.rmtree(root / ".thermops" / "production")
    with pytest.raises(CalibrationError) as err:
        deployed_lineage(root)
    msg = str(err.value)
    assert "production" in msg and ".dvc-storage/production" in msg and "python -m pipeline.production pull" in msg
    # Never a silent fallback to the packaged candidate: the CLI says so in one line and exits 1.
    with pytest.raises(SystemExit) as exc:
        main(["--calibrations", str(root / "data" / "calibration"), "watch", "--params", str(root / "params.yaml")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and lines[-1].startswith("error: cannot read the production model")
    assert "python -m pipeline.production pull" in lines[-1]
    # A malformed registry is as clear.
    (root / "deploy" / "production.json").write_text("{not json")
    with pytest.raises(CalibrationError, match=r"cannot read the production model .*not JSON"):
        deployed_lineage(root)


def test_a_retrain_that_passed_waits_for_promotion_and_is_not_retrained_again(tmp_path):
    root = _project(tmp_path)
    old = _versions(root)
    _promote(root, old, "v1")
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    retrain = Retrain(root)
    first = _watch(root)
    assert first.triggered and first.state_of("fence_mid").state == "retrained" and len(retrain.calls) == 1
    command = f"python -m pipeline.production promote --note 'recalibration: fence_mid {old['fence_mid']} -> {NEW}'"
    for _ in range(2):  # the same watcher again, and a restarted one: handled, waiting for promotion
        res = _watch(root)
        st = res.state_of("fence_mid")
        assert not res.triggered and st.state == "awaiting_promotion" and res.exit_code == 0
        assert command in st.message and "production version 1" in st.message and "not retrained again" in st.message
    assert len(retrain.calls) == 1
    prom = (root / ".thermops" / "watcher.prom").read_text()
    assert 'thermops_watcher_camera_state{camera="fence_mid",state="awaiting_promotion"' in prom
    # A refused retrain of another camera is never handled: refused, then retried.
    _record(root, "gate_wide", **{"geometry.pitch_deg": 15.0})
    retrain.set(status=1, gate={"passed": False, "reasons": ["flip rate 0.125 > 0.1 (perspective)"]})
    res = _watch(root)
    assert res.state_of("gate_wide").state == "refused" and res.exit_code == 3 and len(retrain.calls) == 2
    retrain.set(status=0)
    res = _watch(root)
    assert res.state_of("gate_wide").state == "retrained" and len(retrain.calls) == 3
    # Promoted: deployed, still no second retrain of fence_mid.
    _promote(root, _versions(root), "v2")
    res = _watch(root)
    assert {s.state for s in res.states} == {"deployed"} and len(retrain.calls) == 3


# The retrain of the auto_promote test: package a real BentoML model (card, calibration snapshots)
# and bento, and name them in models/bento.json, as the package step does.
PACKAGE = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    import bentoml, yaml

    root = Path.cwd()
    ENVELOPE = json.loads((root / "envelope.json").read_text())
    with open(root / "retrain-calls.txt", "a") as fh:
        fh.write("package\\n")
    cals = {p.stem: yaml.safe_load(p.read_text())["version"] for p in sorted((root / "data/calibration").glob("*.yaml"))}
    card = {"format": "thermops-model/1", "calibrations": cals, "envelope": ENVELOPE, "input": {"size": 32},
            "gate": {"passed": True, "decision": "pass"}}
    with bentoml.models.create("thermops-classifier", metadata=card) as m:
        (Path(m.path) / "model.pt").write_bytes(b"weights")
        (Path(m.path) / "card.json").write_text(json.dumps(card))
        shutil.copytree(root / "data/calibration", Path(m.path) / "calibration")
    bento = bentoml.bentos.build(service="svc:Toy", include=["svc.py"], models=[str(m.tag)], build_ctx=str(root))
    (root / "models").mkdir(exist_ok=True)
    (root / "models/bento.json").write_text(json.dumps({"bento_tag": str(bento.tag), "model_tag": str(m.tag)}))
    """
)
SERVICE = textwrap.dedent(
    """
    import bentoml

    @bentoml.service
    class Toy:
        @bentoml.api
        def echo(self, x: int) -> int:
            return x
    """
)
# Runs in a subprocess so that BENTOML_HOME is set before bentoml is imported.
SCRIPT = textwrap.dedent(
    """
    import json, logging, subprocess, sys
    from pathlib import Path
    from pipeline import production as P
    from pipeline.recalibrate import watch_once
    from thermops.camera.registry import record_calibration

    root = Path(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    subprocess.run([sys.executable, "package.py"], cwd=root, check=True)  # the first packaged candidate
    out = {}
    first = watch_once(params_path=root / "params.yaml")
    out["first"] = {s.camera: s.state for s in first.states}
    record_calibration(root / "data/calibration", "fence_mid", assignments=[("geometry.pitch_deg", 8.0)],
                       version="2026-11-22.1")
    second = watch_once(params_path=root / "params.yaml")
    out["second"] = {s.camera: [s.state, s.message] for s in second.states}
    out["after_second"] = P.history(root)
    out["production_cals"] = P.current(root).card["calibrations"]
    third = watch_once(params_path=root / "params.yaml")
    out["third"] = {s.camera: s.state for s in third.states}
    out["after_third"] = len(P.history(root))
    state = json.loads((root / ".thermops/trigger-state.json").read_text())
    out["events"] = [e["kind"] for e in state["events"]]
    out["calls"] = (root / "retrain-calls.txt").read_text().split()
    print(json.dumps(out))
    """
)


def test_auto_promote_promotes_a_passed_retrain_once(tmp_path):
    root = _project(tmp_path, auto_promote=True, retrain_command=["python", "package.py"])
    (root / "package.py").write_text(PACKAGE)
    (root / "svc.py").write_text(SERVICE)
    (root / "envelope.json").write_text(json.dumps(ENVELOPE))
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Nothing promoted yet: the packaged candidate is the deployed lineage, and the log says so.
    assert set(out["first"].values()) == {"deployed"}
    assert "nothing was ever promoted to production" in proc.stderr
    # The material change retrains once and the watcher promotes the new candidate itself.
    state, message = out["second"]["fence_mid"]
    assert state == "retrained" and "promoted: production version 1" in message
    (promotion,) = out["after_second"]
    assert promotion["action"] == "promote" and promotion["note"] == "watcher: fence_mid 2026-11-01.1->2026-11-22.1"
    assert out["production_cals"]["fence_mid"] == "2026-11-22.1"
    # The next pass reads production (version 1): deployed, no retrain, no second promotion.
    assert set(out["third"].values()) == {"deployed"} and out["after_third"] == 1
    assert out["events"].count("promoted") == 1 and out["calls"] == ["package", "package"]
