"""The gate step end to end on tiny real models: outputs, baseline, enforcement, regression, errors.

An adversarially trained tiny model passes the test thresholds with no production model
to compare with (and says so); promoted (its gated dir as the baseline stage would write
it), it is the baseline of the next runs: a deliberately fragile model (plain training,
judged against a robust-accuracy bar it cannot meet) fails and exits 3 under
`gate.enforce`; a model worse than production fails on regression even with loose
absolute thresholds. The gate never writes its baseline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from browser_helpers import inspect_page, needs_chromium
from robustness_helpers import gate_params, one_thread, save_tiny, train_tiny  # noqa: F401 (autouse fixture)
from training_helpers import make_prepared

from components._cli import EXIT_GATE_FAILED
from thermops.config import section
from thermops.model.card import load_card
from thermops.robustness.params import GateParams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    prepared = make_prepared(root / "prepared", n_per_class=40, seed=3)
    robust = save_tiny(root / "robust", train_tiny(prepared, epochs=6, adv_eps=0.1))
    plain = save_tiny(root / "plain", train_tiny(prepared, epochs=6, adv_eps=0.0))
    return {"root": root, "prepared": prepared, "robust": robust, "plain": plain}


@pytest.fixture(autouse=True)
def _timings_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("THERMOPS_TIMINGS_DIR", str(tmp_path / "timings"))


def no_baseline(folder: Path) -> Path:
    """What the baseline stage writes when nothing has been promoted."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "production.json").write_text(json.dumps({"version": None, "note": "no production model: test"}))
    return folder


def as_baseline(gated: Path, folder: Path, version: int = 1) -> Path:
    """A gated model dir as the baseline stage writes a promoted one (model, card, production.json)."""
    shutil.copytree(gated, folder)
    rec = {"version": version, "tag": f"thermops-test:{version:016d}", "digest": "sha256:" + "a" * 64}
    (folder / "production.json").write_text(json.dumps(rec))
    return folder


def _run(world, model: Path, tag: str, baseline: Path, **over):
    from components import gate

    p = section({"gate": gate_params(**over)}, "gate", GateParams)
    out = world["root"] / tag
    res = gate.run(p, 7, model, world["prepared"], baseline, out / "gated", out / "report", out / "gate.json")
    return res, out


@pytest.fixture(scope="module")
def passed(world):
    res, out = _run(world, world["robust"], "pass", no_baseline(world["root"] / "none"))
    return res, out, as_baseline(out / "gated", world["root"] / "production-v1")


def test_a_passing_model_is_gated_and_reported_without_a_baseline(passed, world):
    res, out, _ = passed
    assert res["passed"], res["reasons"]
    assert res["baseline"]["version"] is None and "no production model" in res["baseline"]["note"]
    gate = json.loads((out / "report" / "gate.json").read_text())
    for key in (
        "passed",
        "reasons",
        "clean_accuracy",
        "robust_accuracy",
        "mean_ce",
        "corruption_ce",
        "flip_rate",
        "stability_slope",
        "envelope",
        "sanity",
        "checks",
    ):
        assert key in gate, key
    assert set(gate["robust_accuracy"]) == {"linf", "l2"}
    assert set(gate["robust_accuracy"]["linf"]) >= {"fgsm", "pgd", "apgd_ce", "apgd_dlr", "worst", "random_noise"}
    assert len(gate["corruption_ce"]) == 9 and gate["mean_ce"] == pytest.approx(1.0)  # no baseline: its own normalizer
    assert "normalizer is the model itself" in gate["mean_ce_note"] and "no regression check" in gate["mean_ce_note"]
    assert "timing_s" not in gate and "timing" not in (out / "report" / "index.html").read_text().lower()
    # metrics/gate.json: the decision figures only, flat enough for `dvc metrics show`
    figures = json.loads((out / "gate.json").read_text())
    assert set(figures) == {
        "passed",
        "failed_checks",
        "clean_accuracy",
        "robust",
        "mean_ce",
        "flip_rate",
        "slope",
        "baseline",
        "worst_camera_drop",
    }
    assert figures["passed"] is True and figures["failed_checks"] == 0 and figures["baseline"] == 0
    assert figures["worst_camera_drop"] is None  # no production model: no camera compared
    assert figures["clean_accuracy"] == round(gate["clean_accuracy"], 4)
    worst = gate["robust_accuracy"]
    assert figures["robust"] == {
        "linf@0.05": round(worst["linf"]["worst"]["0.05"], 4),
        "l2@0.5": round(worst["l2"]["worst"]["0.5"], 4),
    }
    assert len((out / "gate.json").read_text()) < 400
    card = load_card(out / "gated")
    env = card["envelope"]
    for part, key in (
        ("geometric", "max_corner_px"),
        ("geometric", "max_scale_change"),
        ("radiometric", "max_gain_change"),
        ("radiometric", "max_offset_k"),
    ):
        assert isinstance(env[part][key], float) and env[part][key] >= 0.0
    assert env["geometric"]["input_size_px"] == 16 and env["geometric"]["window_px_median"] == 32.0
    assert card["gate"]["passed"] is True and card["gate"]["decision"] == "pass"
    assert (out / "gated" / "model.pt").read_bytes() == (world["robust"] / "model.pt").read_bytes()
    lin = card["gate"]["lineage"]
    assert set(lin["inputs"]) == {"data/prepared", "models/finetuned", "models/baseline"}
    assert all(v.endswith(".dir") for v in lin["inputs"].values())
    html = (out / "report" / "index.html").read_text()
    for png in ("accuracy_vs_eps.png", "corruptions.png", "stability.png", "adversarial_linf.png", "attributions.png"):
        assert (out / "report" / png).stat().st_size > 5000, png
        assert f"alt='{png}'" in html
    # self-contained: every image inlined, byte for byte, nothing loaded by path or URL
    import base64
    import re

    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) == 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    inlined = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert (out / "report" / "attributions.png").read_bytes() in inlined
    assert not re.search(r"(href|src)=['\"](?!data:|#)", html)


def test_the_envelope_is_readable_by_the_calibration_watcher(passed):
    from thermops.camera.change import Envelope

    _, out, _ = passed
    env = Envelope.from_card(load_card(out / "gated"))
    assert env.max_corner_px is not None and env.max_gain_change is not None and env.input_size == 16


def test_a_fragile_model_fails_and_leaves_the_baseline_alone(world, passed):
    _, _, baseline = passed
    before = {p.name: p.read_bytes() for p in baseline.iterdir() if p.is_file()}
    res, out = _run(
        world,
        world["plain"],
        "fragile",
        baseline,
        thresholds={"robust_accuracy": {"linf": {0.1: 0.25}}},
        regression={"accuracy_tol": 1.0, "relative_tol": 10.0},
    )
    assert not res["passed"]
    assert any(r.startswith("robust_accuracy[linf][0.1]") for r in res["reasons"]), res["reasons"]
    assert {p.name: p.read_bytes() for p in baseline.iterdir() if p.is_file()} == before
    card = load_card(out / "gated")
    assert card["gate"]["decision"] == "fail" and card["gate"]["baseline"]["version"] == 1


def test_a_regression_against_production_is_caught(world, passed):
    _, _, baseline = passed
    loose = {
        "clean_accuracy": 0.0,
        "robust_accuracy": {"linf": {0.05: 0.0}},
        "max_mean_ce": 100.0,
        "max_flip_rate": 1.0,
        "max_stability_slope": 100.0,
    }
    res, out = _run(world, world["plain"], "regress", baseline, thresholds=loose)
    assert not res["passed"]
    assert res["baseline"]["metrics_source"].startswith("stored") and res["baseline"]["version"] == 1
    assert "production version 1 (thermops-test:0000000000000001)" in (out / "report" / "index.html").read_text()
    assert json.loads((out / "gate.json").read_text())["baseline"] == 1
    regress = [r for r in res["reasons"] if r.startswith("regression:")]
    assert regress, res["reasons"]
    assert all(c["passed"] for c in res["checks"] if c["kind"] == "absolute")


def _cli(
    world, tmp_path, model: Path, params_file: Path | None = None, baseline: Path | None = None, **over
) -> subprocess.CompletedProcess:
    if params_file is None:
        params = {"seed": 7, "gate": gate_params(**over)}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = [
        "--params",
        str(tmp_path / "params.yaml"),
        "--model",
        str(model),
        "--data",
        str(world["prepared"]),
        "--baseline",
        str(baseline or no_baseline(tmp_path / "baseline")),
        "--out",
        str(tmp_path / "gated"),
        "--report",
        str(tmp_path / "report"),
        "--metrics",
        str(tmp_path / "gate.json"),
    ]
    env = {**os.environ, "THERMOPS_TIMINGS_DIR": str(tmp_path / "timings")}
    return subprocess.run(
        [sys.executable, "-m", "components.gate", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )


def test_enforce_makes_a_failing_gate_exit_nonzero(world, tmp_path):
    # A deliberately fragile model: nothing survives eps 0.2 of a plain model.
    proc = _cli(
        world,
        tmp_path,
        world["plain"],
        thresholds={"robust_accuracy": {"linf": {0.2: 0.5}}},
        attack_subset=16,
        corruptions={"subset": 8},
        perspective={"subset": 8},
    )
    assert proc.returncode == EXIT_GATE_FAILED == 3, proc.stderr
    assert "error: gate failed" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "gate.json").read_text())["passed"] is False
    assert "against no production model" in proc.stdout
    # timings went to the untracked timings folder, nowhere else
    assert json.loads((tmp_path / "timings" / "gate.json").read_text())["total"] > 0


def test_bad_inputs_give_one_clear_error_line(world, tmp_path):
    proc = _cli(world, tmp_path, tmp_path / "no-model")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "card.json" in proc.stderr
    proc = _cli(world, tmp_path, world["robust"], baseline=tmp_path)  # a folder that is no baseline stage output
    assert proc.returncode == 1 and "no production.json" in proc.stderr and "Traceback" not in proc.stderr
    bad = gate_params()
    bad["threat_models"]["linf"]["eps"] = "big"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 1, "gate": bad}))
    proc = _cli(world, tmp_path, world["robust"], params_file=tmp_path / "params.yaml")
    assert proc.returncode == 1 and "gate.threat_models.linf.eps" in proc.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def _geometry_twin(world, folder: Path) -> Path:
    """The robust tiny model as a classifier taking geometry features (metric_scale, known): its
    encoder and image head columns copied, small fixed weights on the geometry embedding."""
    import torch

    from thermops.model.card import load_model_dir, model_config_from_card, save_model_dir
    from thermops.model.network import TubeletClassifier

    plain, card = load_model_dir(world["robust"])
    card = {**card, "input": {**card["input"], "geometry": ["metric_scale", "known"]}}
    torch.manual_seed(0)
    model = TubeletClassifier(model_config_from_card(card), len(card["classes"]), geo_dim=2)
    state = {k: v for k, v in plain.state_dict().items() if k != "head.weight"}
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        e = plain.head.weight.shape[1]
        model.head.weight[:, :e] = plain.head.weight
        model.head.weight[:, e:] = 0.01 * torch.randn(model.head.weight.shape[0], model.head.weight.shape[1] - e)
    save_model_dir(folder, model.eval(), card)
    return folder


def test_the_gate_judges_a_classifier_taking_geometry_features(world, passed, tmp_path):
    """End to end through the CLI: every figure, the report with its attributions, the gated card;
    the clean accuracy is the one the evaluation's inference path (each row's own features) gives.
    Then against a geometry-free production model, and as a production model re-measured for a
    geometry-free candidate: each model gets its own features from its own card."""
    import numpy as np

    from thermops.data.prepared import load_prepared
    from thermops.evaluation.inference import probabilities
    from thermops.io import read_json, write_json
    from thermops.model.card import load_model_dir

    geo_dir = _geometry_twin(world, tmp_path / "geo")
    proc = _cli(world, tmp_path, geo_dir)
    assert proc.returncode == 0, proc.stderr
    assert "gate passed" in proc.stdout, proc.stdout
    gate = json.loads((tmp_path / "report" / "gate.json").read_text())
    assert "metric_scale" in gate["geometry_note"] and "held fixed" in gate["geometry_note"]
    data = load_prepared(world["prepared"])
    idx = data.indices("test")
    model, card = load_model_dir(geo_dir)
    pred = probabilities(model, card, data, idx).argmax(1)
    assert gate["clean_accuracy"] == pytest.approx(float(np.mean(pred == data.labels(card["classes"])[idx])))
    assert set(gate["robust_accuracy"]) == {"linf", "l2"} and gate["sanity_passed"]
    assert len(gate["corruption_errors"]) == 9 and gate["perspective"]["worst_case"]["n"] == 8
    for png in ("adversarial_linf.png", "attributions.png", "stability.png"):
        assert (tmp_path / "report" / png).stat().st_size > 5000, png
    gated = load_card(tmp_path / "gated")
    assert gated["gate"]["decision"] == "pass" and gated["input"]["geometry"] == ["metric_scale", "known"]

    # a geometry candidate against the geometry-free production model (its stored figures apply)
    free, _, baseline = passed
    res, _ = _run(world, geo_dir, "geo-vs-free", baseline)
    assert res["baseline"]["version"] == 1 and res["baseline"]["metrics_source"].startswith("stored")
    cams = {c["camera"]: c for c in res["checks"] if c.get("camera") is not None and not c.get("skipped")}
    assert set(cams) == {"cam0", "cam1"}
    assert all(c["blessed_value"] == free["per_camera"][cam]["accuracy"] for cam, c in cams.items())

    # the geometry model in production, re-measured (data changed) for a geometry-free candidate
    prod = as_baseline(tmp_path / "gated", tmp_path / "production-geo", version=2)
    stored = read_json(prod / "card.json")
    stored["gate"]["metrics"]["data_hash"] = "another-dataset"
    write_json(prod / "card.json", stored)
    res, _ = _run(world, world["robust"], "free-vs-geo", prod)
    assert res["baseline"]["version"] == 2 and res["baseline"]["metrics_source"].startswith("re-measured")
    cams = {c["camera"]: c for c in res["checks"] if c.get("camera") is not None and not c.get("skipped")}
    assert set(cams) == {"cam0", "cam1"}  # the production figures re-measured with its own features:
    assert all(c["blessed_value"] == pytest.approx(gate["per_camera"][cam]["accuracy"]) for cam, c in cams.items())


def test_the_production_model_is_re_measured_when_the_data_changed(world, passed):
    from thermops.io import read_json, write_json

    _, _, baseline = passed
    copy = world["root"] / "baseline-other-data"
    shutil.copytree(baseline, copy)
    card = read_json(copy / "card.json")
    card["gate"]["metrics"]["data_hash"] = "another-dataset"
    write_json(copy / "card.json", card)
    loose = {
        "clean_accuracy": 0.0,
        "robust_accuracy": {"linf": {0.05: 0.0}},
        "max_mean_ce": 100.0,
        "max_flip_rate": 1.0,
        "max_stability_slope": 100.0,
    }
    res, _ = _run(world, world["plain"], "remeasure", copy, thresholds=loose)
    assert res["baseline"]["metrics_source"].startswith("re-measured")
    assert any(r.startswith("regression:robust_accuracy[linf][0.05]") for r in res["reasons"]), res["reasons"]
    assert "the production model's" in res["mean_ce_note"] and res["mean_ce"] != 1.0


@needs_chromium
def test_the_gate_report_opened_alone_shows_its_images(passed, tmp_path):
    """The KFP HTML artifact is the page alone: copied into an empty folder, every image still decodes."""
    _, out, _ = passed
    alone = tmp_path / "artifact.html"
    shutil.copyfile(out / "report" / "index.html", alone)
    seen = inspect_page(alone)
    assert len(seen["images"]) == 6 and all(i["ok"] for i in seen["images"]), seen["images"]
    assert seen["text_chars"] > 500


# --- per-camera regression check -------------------------------------------------------------


def test_per_camera_accuracy_is_computed_from_the_same_predictions(passed, world):
    import numpy as np
    import torch

    from thermops.data.prepared import load_prepared
    from thermops.model.card import input_spec_from_card, load_model_dir
    from thermops.model.preprocess import prepare_batch

    res, out, _ = passed
    data = load_prepared(world["prepared"])
    idx = data.indices("test")
    model, card = load_model_dir(world["robust"])
    with torch.no_grad():
        x = prepare_batch(
            np.asarray(data.tubelets[idx]), [data.rows[i]["units"] for i in idx], input_spec_from_card(card)
        )
        ok = (model(x).argmax(1) == torch.as_tensor(data.labels(card["classes"])[idx])).numpy()
    cams = np.array([data.rows[i]["camera_id"] for i in idx])
    expected = {c: {"accuracy": float(ok[cams == c].mean()), "n": int((cams == c).sum())} for c in ("cam0", "cam1")}
    assert res["per_camera"] == expected
    assert sum(v["n"] for v in res["per_camera"].values()) == res["n_test"]
    weighted = sum(v["accuracy"] * v["n"] for v in res["per_camera"].values()) / res["n_test"]
    assert weighted == pytest.approx(res["clean_accuracy"])
    # stored in the card, so the next gate compares with it; no check without a production model
    assert load_card(out / "gated")["gate"]["metrics"]["per_camera"] == res["per_camera"]
    assert not any(c["name"].startswith("regression:") for c in res["checks"])
    html = (out / "report" / "index.html").read_text()
    assert "<h2>Clean accuracy per camera</h2>" in html and html.count("no production model</td>") == 2


def test_the_production_model_against_itself_passes_every_camera(world, passed):
    _, _, baseline = passed
    res, out = _run(world, world["robust"], "self", baseline)
    assert res["baseline"]["metrics_source"].startswith("stored")
    cams = {c["name"]: c for c in res["checks"] if c["name"].startswith("regression:clean_accuracy[")}
    assert set(cams) == {"regression:clean_accuracy[cam0]", "regression:clean_accuracy[cam1]"}
    for c in cams.values():
        assert c["passed"] and not c["skipped"] and c["value"] == c["blessed_value"] and c["n"] == 16
        assert c["limit"] < c["blessed_value"]  # a margin: tol + z SE on 16 tubelets each side
    assert res["passed"], res["reasons"]
    assert json.loads((out / "gate.json").read_text())["worst_camera_drop"] == 0.0
    html = (out / "report" / "index.html").read_text()
    assert html.count("<td>pass</td>") == 2


def _fpn_camera_data(root: Path, wrong_camera: str | None) -> Path:
    """Prepared data whose cam1 has a column fixed-pattern (its look: stripes 2 columns wide, +-2 K);
    with `wrong_camera`, that camera's training labels are shifted by one class (a labelling error)."""
    import numpy as np

    from thermops.data.prepared import MANIFEST_COLUMNS
    from thermops.io import read_csv, write_csv

    classes = ["person", "vehicle", "animal", "nuisance"]
    d = make_prepared(root, n_per_class=80, seed=3)
    t = np.load(d / "tubelets.npy")
    rows = read_csv(d / "manifest.csv")
    stripes = np.where((np.arange(t.shape[-1]) // 2) % 2 == 0, 2.0, -2.0).astype(np.float32)
    for i, r in enumerate(rows):
        if r["camera_id"] == "cam1":
            t[i] += stripes
        if r["camera_id"] == wrong_camera and r["split"] == "train":
            r["label"] = classes[(classes.index(r["label"]) + 1) % len(classes)]
    np.save(d / "tubelets.npy", t)
    write_csv(d / "manifest.csv", rows, MANIFEST_COLUMNS)
    return d


def test_a_candidate_as_good_overall_but_worse_on_one_camera_fails(tmp_path):
    """Production learned cam0 wrong and cam1 right; the retrain learned cam0 right and cam1 wrong.
    Overall they are about as good (the whole-split check passes); cam1 collapses, and the gate says so."""
    from components import gate

    data = _fpn_camera_data(tmp_path / "test-data", None)
    production = save_tiny(tmp_path / "production", train_tiny(_fpn_camera_data(tmp_path / "a", "cam0"), epochs=15))
    candidate = save_tiny(tmp_path / "candidate", train_tiny(_fpn_camera_data(tmp_path / "b", "cam1"), epochs=15))
    baseline = tmp_path / "baseline"
    shutil.copytree(production, baseline)
    (baseline / "production.json").write_text(json.dumps({"version": 3, "tag": "t:3", "digest": "sha256:" + "b" * 64}))
    loose = {"clean_accuracy": 0.0, "robust_accuracy": {"linf": {0.05: 0.0}}, "max_mean_ce": 100.0}
    p = section({"gate": gate_params(thresholds=loose, regression={"relative_tol": 100.0})}, "gate", GateParams)
    out = tmp_path / "run"
    res = gate.run(p, 7, candidate, data, baseline, out / "gated", out / "report", out / "gate.json")
    checks = {c["name"]: c for c in res["checks"]}
    overall = checks["regression:clean_accuracy"]
    assert overall["passed"], overall  # the whole test split alone would have let it through
    cam0, cam1 = checks["regression:clean_accuracy[cam0]"], checks["regression:clean_accuracy[cam1]"]
    assert cam0["passed"] and cam0["value"] > cam0["blessed_value"]  # the candidate fixed cam0
    assert not cam1["passed"] and cam1["n"] == 32 and cam1["blessed_n"] == 32
    assert cam1["blessed_value"] - cam1["value"] > 0.5
    clean_reasons = [r for r in res["reasons"] if r.startswith("regression:clean_accuracy")]
    assert not res["passed"] and len(clean_reasons) == 1, res["reasons"]
    assert clean_reasons[0].startswith("regression:clean_accuracy[cam1]: camera cam1 clean accuracy")
    figures = json.loads((out / "gate.json").read_text())
    assert figures["worst_camera_drop"] == round(cam1["blessed_value"] - cam1["value"], 4)
    assert figures["failed_checks"] == len(res["reasons"]) and figures["passed"] is False
    html = (out / "report" / "index.html").read_text()
    import re

    rows = dict(re.findall(r"<tr><td>(cam\d)</td><td>32</td>(.*?)</tr>", html))  # the per-camera table
    assert rows["cam1"].endswith("<td class='fail'>FAIL</td>") and rows["cam0"].endswith("<td>pass</td>")


def test_an_old_production_card_without_per_camera_is_re_measured(world, passed):
    from thermops.io import read_json, write_json

    _, _, baseline = passed
    old = world["root"] / "baseline-before-per-camera"
    shutil.copytree(baseline, old)
    card = read_json(old / "card.json")
    del card["gate"]["metrics"]["per_camera"]  # a card the gate wrote before per-camera figures
    write_json(old / "card.json", card)
    res, _ = _run(world, world["robust"], "old-card", old)
    assert res["baseline"]["metrics_source"] == (
        "re-measured on this test data (the stored figures have no per-camera accuracy)"
    )
    names = {c["name"] for c in res["checks"] if c["kind"] == "regression"}
    assert {"regression:clean_accuracy[cam0]", "regression:clean_accuracy[cam1]"} <= names
    assert res["passed"], res["reasons"]
