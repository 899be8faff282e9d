"""The gate step end to end on tiny real models: outputs, blessing, enforcement, regression, errors.

An adversarially trained tiny model passes the test thresholds and is blessed; a
deliberately fragile one (plain training, judged against a robust-accuracy bar it
cannot meet) fails, exits 1 under `gate.enforce` and leaves the blessed model alone;
a model worse than the blessed one fails on regression even with loose absolute
thresholds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
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


def _run(world, model: Path, tag: str, blessed: Path, **over):
    from components import gate

    p = section({"gate": gate_params(**over)}, "gate", GateParams)
    out = world["root"] / tag
    res = gate.run(p, 7, model, world["prepared"], blessed, out / "gated", out / "report", out / "gate.json")
    return res, out


@pytest.fixture(scope="module")
def passed(world):
    blessed = world["root"] / "blessed"
    res, out = _run(world, world["robust"], "pass", blessed)
    return res, out, blessed


def test_a_passing_model_is_gated_blessed_and_reported(passed):
    res, out, blessed = passed
    assert res["passed"], res["reasons"]
    gate = json.loads((out / "gate.json").read_text())
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
    assert len(gate["corruption_ce"]) == 9 and gate["mean_ce"] == pytest.approx(1.0)  # first model: its own normalizer
    assert "normalizer is the model itself" in gate["mean_ce_note"]
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
    assert (out / "gated" / "model.pt").read_bytes() == (blessed / "model.pt").read_bytes()
    assert load_card(blessed)["gate"]["passed"] is True
    html = (out / "report" / "index.html").read_text()
    for png in ("accuracy_vs_eps.png", "corruptions.png", "stability.png", "adversarial_linf.png", "attributions.png"):
        assert (out / "report" / png).stat().st_size > 5000, png
        assert png in html


def test_the_envelope_is_readable_by_the_calibration_watcher(passed):
    from thermops.camera.change import Envelope

    _, out, _ = passed
    env = Envelope.from_card(load_card(out / "gated"))
    assert env.max_corner_px is not None and env.max_gain_change is not None and env.input_size == 16


def test_a_fragile_model_fails_and_keeps_the_blessed_model(world, passed):
    _, _, blessed = passed
    before = (blessed / "model.pt").read_bytes()
    res, out = _run(
        world,
        world["plain"],
        "fragile",
        blessed,
        thresholds={"robust_accuracy": {"linf": {0.1: 0.25}}},
        regression={"accuracy_tol": 1.0, "relative_tol": 10.0},
    )
    assert not res["passed"]
    assert any(r.startswith("robust_accuracy[linf][0.1]") for r in res["reasons"]), res["reasons"]
    assert (blessed / "model.pt").read_bytes() == before
    assert load_card(out / "gated")["gate"]["decision"] == "fail"


def test_a_regression_against_the_blessed_model_is_caught(world, passed):
    _, _, blessed = passed
    loose = {
        "clean_accuracy": 0.0,
        "robust_accuracy": {"linf": {0.05: 0.0}},
        "max_mean_ce": 100.0,
        "max_flip_rate": 1.0,
        "max_stability_slope": 100.0,
    }
    res, _ = _run(world, world["plain"], "regress", blessed, thresholds=loose)
    assert not res["passed"]
    assert res["blessed"]["metrics_source"].startswith("stored")
    regress = [r for r in res["reasons"] if r.startswith("regression:")]
    assert regress, res["reasons"]
    assert all(c["passed"] for c in res["checks"] if c["kind"] == "absolute")


def _cli(world, tmp_path, model: Path, params_file: Path | None = None, **over) -> subprocess.CompletedProcess:
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
        "--blessed",
        str(tmp_path / "blessed"),
        "--out",
        str(tmp_path / "gated"),
        "--report",
        str(tmp_path / "report"),
        "--metrics",
        str(tmp_path / "gate.json"),
    ]
    return subprocess.run([sys.executable, "-m", "components.gate", *args], cwd=ROOT, capture_output=True, text=True)


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
    # DVC declares models/blessed as an output: it exists (empty) even before any model passed.
    assert (tmp_path / "blessed" / "README.txt").is_file() and not (tmp_path / "blessed" / "card.json").exists()


def test_bad_inputs_give_one_clear_error_line(world, tmp_path):
    proc = _cli(world, tmp_path, tmp_path / "no-model")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "card.json" in proc.stderr
    bad = gate_params()
    bad["threat_models"]["linf"]["eps"] = "big"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 1, "gate": bad}))
    proc = _cli(world, tmp_path, world["robust"], params_file=tmp_path / "params.yaml")
    assert proc.returncode == 1 and "gate.threat_models.linf.eps" in proc.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_blessed_model_is_re_measured_when_the_data_changed(world, passed):
    from thermops.io import read_json, write_json

    _, _, blessed = passed
    copy = world["root"] / "blessed-other-data"
    shutil.copytree(blessed, copy)
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
    assert res["blessed"]["metrics_source"].startswith("re-measured")
    assert any(r.startswith("regression:robust_accuracy[linf][0.05]") for r in res["reasons"]), res["reasons"]
    assert "the blessed model's" in res["mean_ce_note"] and res["mean_ce"] != 1.0
