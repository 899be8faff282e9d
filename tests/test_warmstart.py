"""The warm-start plan (thermops.learn.warmstart, components/warmstart.py): warm only when it may be.

Unit tests of `plan` on real cards' shapes, of the per-camera fingerprints on a real prepared
folder (one camera's rows changed moves only that camera), of the code record (an edited file
is seen), and of the step itself on a prepared folder with and without a production model.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from params_helpers import from_params
from training_helpers import make_prepared

from components import warmstart as step
from thermops.data.prepared import load_prepared
from thermops.io import read_csv, write_csv
from thermops.learn.datasets import SplitParams, split_rows
from thermops.learn.warmstart import (
    RetrainParams,
    camera_fingerprints,
    code_record,
    code_unchanged,
    plan,
    read_plan,
)

CFG = from_params(RetrainParams, "retrain")
PARAMS = {"seed": 1, "model": {"size": "tiny"}, "finetune": {"optim": {"lr": 0.003}}}
CAMS = {
    "a": {"sha256": "1" * 64, "n": 40},
    "b": {"sha256": "2" * 64, "n": 40},
    "c": {"sha256": "3" * 64, "n": 20},
}
PROD = {"version": 4, "tag": "thermops-classifier:x", "digest": "sha256:" + "f" * 64}
CODE_OK = (True, "training code unchanged")


def card(cameras=CAMS, params=PARAMS, chain=None) -> dict:
    c = {"params": copy.deepcopy(params), "data": {"per_camera": copy.deepcopy(cameras)}}
    if chain is not None:
        c["warm_start"] = {"chain": chain}
    return c


def moved(name: str) -> dict:
    return {**CAMS, name: {**CAMS[name], "sha256": "9" * 64}}


def test_one_moved_camera_plans_a_warm_retrain_that_names_it():
    p = plan(CFG, PROD, card(), PARAMS, moved("c"), CODE_OK)
    assert p["mode"] == "warm" and p["moved_cameras"] == ["c"] and p["moved_fraction"] == 0.2
    assert p["production"] == PROD and p["chain"] == 1
    assert (p["epochs"], p["lr_scale"]) == (CFG.epochs, CFG.lr_scale)


def test_a_new_camera_counts_as_moved():
    now = {**CAMS, "d": {"sha256": "4" * 64, "n": 10}}
    p = plan(CFG, PROD, card(), PARAMS, now, CODE_OK)
    assert p["mode"] == "warm" and p["moved_cameras"] == ["d"] and p["moved_fraction"] == round(10 / 110, 4)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"production": {"version": None}, "production_card": None}, "no production model"),
        ({"params_now": {**PARAMS, "finetune": {"optim": {"lr": 0.01}}}}, "training params differ"),
        ({"code_now": (False, "the training code changed since")}, "the training code changed"),
        ({"cameras_now": CAMS}, "no camera's data moved"),
        ({"cameras_now": {**moved("a"), "b": {**CAMS["b"], "sha256": "8" * 64}}}, "more than retrain.max_moved"),
        ({"production_card": card(chain=CFG.max_chain)}, "warm retrains from a full one"),
        ({"cameras_now": {k: v for k, v in moved("a").items() if k != "c"}}, "are gone: ['c']"),
        ({"production_card": {"params": PARAMS, "data": {}}}, "no per-camera data fingerprints"),
    ],
)
def test_full_whenever_a_condition_fails_and_the_reason_says_which(kwargs, reason):
    args = {
        "production": PROD,
        "production_card": card(),
        "params_now": PARAMS,
        "cameras_now": moved("c"),
        "code_now": CODE_OK,
        **kwargs,
    }
    p = plan(CFG, **args)
    assert p["mode"] == "full" and any(reason in r for r in p["reasons"]), p["reasons"]


def test_warm_start_off_is_always_full():
    off = from_params(RetrainParams, "retrain", warm_start=False)
    p = plan(off, PROD, card(), PARAMS, moved("c"), CODE_OK)
    assert p["mode"] == "full" and p["reasons"] == ["retrain.warm_start is off"]


@pytest.mark.parametrize("change", [{"max_moved_fraction": 0.0}, {"max_chain": 0}, {"epochs": 0}, {"lr_scale": 1.5}])
def test_bad_retrain_params_are_refused(change):
    with pytest.raises(ValueError, match="retrain"):
        from_params(RetrainParams, "retrain", **change)


@pytest.fixture
def prepared(tmp_path) -> Path:
    """A real prepared folder whose rows belong to two cameras."""
    root = make_prepared(tmp_path / "prepared", n_per_class=12, seed=5)
    rows = read_csv(root / "manifest.csv")
    for i, r in enumerate(rows):
        r["camera_id"] = "cam_a" if i % 2 else "cam_b"
    write_csv(root / "manifest.csv", rows, list(rows[0]))
    return root


def _prints(root: Path) -> dict:
    data = load_prepared(root)
    return camera_fingerprints(data, split_rows(data.rows, None))


def test_fingerprints_move_only_for_the_camera_whose_tubelets_changed(prepared):
    before = _prints(prepared)
    assert set(before) == {"cam_a", "cam_b"} and all(v["n"] > 0 for v in before.values())
    rows = read_csv(prepared / "manifest.csv")
    arr = np.load(prepared / "tubelets.npy")
    i = next(k for k, r in enumerate(rows) if r["camera_id"] == "cam_a" and r["split"] == "train")
    arr[i] += 0.5  # one train tubelet of cam_a re-cut differently
    np.save(prepared / "tubelets.npy", arr)
    after = _prints(prepared)
    assert after["cam_a"]["sha256"] != before["cam_a"]["sha256"]
    assert after["cam_b"] == before["cam_b"]


def test_test_rows_do_not_move_a_camera(prepared):
    before = _prints(prepared)
    rows = read_csv(prepared / "manifest.csv")
    arr = np.load(prepared / "tubelets.npy")
    for k, r in enumerate(rows):
        if r["split"] == "test":
            arr[k] -= 1.0
    np.save(prepared / "tubelets.npy", arr)
    assert _prints(prepared) == before


def test_code_record_sees_an_edited_file(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    rec = code_record(["pkg/m.py"], tmp_path)
    assert code_unchanged(rec, tmp_path) == (True, "training code unchanged")
    (tmp_path / "pkg" / "m.py").write_text("x = 2\n")
    ok, why = code_unchanged(rec, tmp_path)
    assert not ok and "changed" in why
    (tmp_path / "pkg" / "m.py").unlink()
    assert "gone" in code_unchanged(rec, tmp_path)[1]
    assert not code_unchanged(None, tmp_path)[0]


def test_the_step_plans_full_without_production_and_writes_only_the_mode(prepared, tmp_path):
    base = tmp_path / "baseline"
    base.mkdir()
    (base / "production.json").write_text(json.dumps({"version": None, "note": "none"}))
    out, metrics = tmp_path / "warm", tmp_path / "warmstart.json"
    p = step.run(CFG, {}, from_params(SplitParams, "split"), base, prepared, out, metrics)
    assert p["mode"] == "full"
    assert json.loads((out / "plan.json").read_text()) == {"mode": "full"}
    assert sorted(x.name for x in out.iterdir()) == ["plan.json"]
    m = json.loads(metrics.read_text())
    assert m["mode"] == "full" and m["production"] == 0 and "no production model" in m["reasons"][0]


def test_the_step_copies_the_production_model_for_a_warm_plan(prepared, tmp_path):
    """A production card made on this data, then one camera's data moved: warm, the model beside the plan."""
    from robustness_helpers import save_tiny, train_tiny

    data = load_prepared(prepared)
    prints = camera_fingerprints(data, split_rows(data.rows, None))
    model_dir = save_tiny(tmp_path / "prod", train_tiny(prepared, epochs=1, adv_eps=0.0))
    prod_card = json.loads((model_dir / "card.json").read_text())
    params = {"seed": 3}
    prod_card["params"] = params
    prod_card["data"]["per_camera"] = {**prints, "cam_a": {**prints["cam_a"], "sha256": "0" * 64}}
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "m.py").write_text("x = 1\n")
    prod_card["training_code"] = code_record(["pkg/m.py"], code)
    base = tmp_path / "baseline"
    shutil.copytree(model_dir, base)
    (base / "card.json").write_text(json.dumps(prod_card))
    (base / "production.json").write_text(json.dumps(PROD))
    out, metrics = tmp_path / "warm", tmp_path / "warmstart.json"
    p = step.run(CFG, params, from_params(SplitParams, "split"), base, prepared, out, metrics, code_root=code)
    assert p["mode"] == "warm" and p["moved_cameras"] == ["cam_a"], p["reasons"]
    got = read_plan(out)
    assert got["production"]["version"] == 4 and "reasons" not in got
    assert (out / "model.pt").read_bytes() == (base / "model.pt").read_bytes()
    # the code edited since production was trained: full, and the reason says so
    (code / "pkg" / "m.py").write_text("x = 2\n")
    p = step.run(CFG, params, from_params(SplitParams, "split"), base, prepared, out, metrics, code_root=code)
    assert p["mode"] == "full" and any("training code changed" in r for r in p["reasons"])
    assert not (out / "model.pt").exists()


def test_read_plan_refuses_what_the_step_did_not_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="plan.json"):
        read_plan(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"mode": "lukewarm"}))
    with pytest.raises(ValueError, match="neither"):
        read_plan(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"mode": "warm"}))
    with pytest.raises(ValueError, match="model.pt"):
        read_plan(tmp_path)
