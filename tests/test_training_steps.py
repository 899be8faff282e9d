"""The pretrain and finetune steps through their CLIs: outputs, metrics, card lineage, clear errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.training_helpers import CLASSES, full_plan, make_prepared, make_unlabeled, small_training_params
from thermops.model.card import load_model_dir

ROOT = Path(__file__).resolve().parents[1]


def _step(module: str, *args: str, timings: Path | None = None) -> subprocess.CompletedProcess:
    """Run a step; its wall-clock timings go to `timings`, never into the repository's `.thermops/`."""
    env = {**os.environ, **({"THERMOPS_TIMINGS_DIR": str(timings)} if timings else {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("steps")
    prepared = make_prepared(d / "prepared", n_per_class=10, seed=2)
    unlabeled = make_unlabeled(d / "unlabeled")
    params = small_training_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["classes"] = CLASSES
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    pre = _step(
        "components.pretrain",
        "--params",
        str(d / "params.yaml"),
        "--data",
        str(prepared),
        "--unlabeled",
        str(unlabeled),
        "--out",
        str(d / "pretrained"),
        "--metrics",
        str(d / "m/pretrain.json"),
        "--curve",
        str(d / "m/pretrain_loss.csv"),
        "--checkpoints",
        str(d / "ck/pre"),
        "--warmstart",
        str(full_plan(d / "warmstart")),
        timings=d / "timings",
    )
    assert pre.returncode == 0, pre.stderr[-2000:]
    ft = _step(
        "components.finetune",
        "--params",
        str(d / "params.yaml"),
        "--data",
        str(prepared),
        "--pretrained",
        str(d / "pretrained"),
        "--out",
        str(d / "finetuned"),
        "--metrics",
        str(d / "m/finetune.json"),
        "--confusion",
        str(d / "m/confusion.csv"),
        "--curve",
        str(d / "m/curve.csv"),
        "--figures",
        str(d / "fig"),
        "--checkpoints",
        str(d / "ck/ft"),
        "--warmstart",
        str(full_plan(d / "warmstart")),
        timings=d / "timings",
    )
    assert ft.returncode == 0, ft.stderr[-2000:]
    return d, ft.stderr


def test_pretrain_writes_encoder_card_and_loss_curve(trained):
    d, _ = trained
    assert (d / "pretrained/encoder.pt").is_file()
    card = json.loads((d / "pretrained/card.json").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert card["method"] == params["pretrain"]["method"]
    # 24 train rows of the prepared data and all 24 unlabeled tubelets; no labels read
    assert card["data"]["n_labelled_pool"] == 24 and card["data"]["n_unlabeled"] == 24 and card["data"]["n_train"] == 48
    assert set(card["data"]["sources"]) == {"synthetic", "unlabeled"}
    assert "seconds" in json.loads((d / "timings/pretrain.json").read_text())
    assert not (d / "pretrained/timings.json").exists()  # not in the DVC output either
    assert "seconds" not in json.loads((d / "m/pretrain.json").read_text())
    rows = list(csv.DictReader(open(d / "m/pretrain_loss.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(float(r["loss"]) > 0 for r in rows)
    assert (d / "ck/pre/last.pt").is_file()


def test_finetune_metrics_confusion_and_card(trained):
    d, log = trained
    m = json.loads((d / "fig/finetune.json").read_text())  # the full record
    # metrics/finetune.json: the decision figures only, flat for `dvc metrics show`
    from components.finetune import DECISION

    decision = json.loads((d / "m/finetune.json").read_text())
    assert decision == {k: m[k] for k in DECISION if k in m} and "per_class" not in decision
    assert all(isinstance(v, (int, float, bool)) for v in decision.values())
    for k in (
        "accuracy",
        "macro_f1",
        "linear_probe_pretrained",
        "linear_probe_random",
        "few_label_macro_f1_pretrained",
        "few_label_macro_f1_scratch",
    ):
        assert 0.0 <= m[k] <= 1.0, k
    few = m["few_label"]
    seeds = yaml.safe_load((ROOT / "params.yaml").read_text())["finetune"]["low_label"]["seeds"]
    for arm in ("pretrained", "scratch"):
        per = few[arm]["macro_f1"]["per_seed"]
        assert (
            len(per) == len(seeds)
            and few[arm]["macro_f1"]["min"] == min(per)
            and few[arm]["macro_f1"]["max"] == max(per)
        )
    assert m["pretraining_gain_few_label"] == pytest.approx(
        few["pretrained"]["macro_f1"]["mean"] - few["scratch"]["macro_f1"]["mean"]
    )
    assert m["pretraining_ranges_overlap"] == (
        few["pretrained"]["macro_f1"]["min"] <= few["scratch"]["macro_f1"]["max"]
        and few["scratch"]["macro_f1"]["min"] <= few["pretrained"]["macro_f1"]["max"]
    )
    # wall clock lives in the untracked timings folder, never in metrics, the card or an output
    assert "seconds" not in m and "comparison_seconds" not in m
    assert json.loads((d / "timings/finetune.json").read_text())["seconds"] > 0
    assert not (d / "fig/timings.json").exists()
    assert set(m["per_class"]) == set(CLASSES)
    assert {"precision", "recall", "specificity"} <= set(m["per_class"]["person"])
    assert m["encoder_missing_keys"] == [] and m["encoder_unexpected_keys"] == []
    assert "missing keys []" in log
    rows = list(csv.DictReader(open(d / "m/confusion.csv")))
    assert len(rows) == m["n"] == 8 and {r["actual"] for r in rows} <= set(CLASSES)
    correct = sum(r["actual"] == r["predicted"] for r in rows)
    assert correct / len(rows) == pytest.approx(m["accuracy"])
    model, card = load_model_dir(d / "finetuned")
    assert card["classes"] == CLASSES and card["adversarial_training"] is False
    assert card["calibrations"] == {"cam0": "cam0-v1", "cam1": "cam1-v1"}
    assert card["data"]["n"] == {"train": 24, "val": 8, "test": 8} and card["data"]["sources"] == ["synthetic"]
    assert len(card["data"]["prepared_hash"]) == 64 and card["metrics"]["accuracy"] == m["accuracy"]
    assert card["data"]["split"] == "prepared" and "seconds" not in json.dumps(card)
    assert (d / "fig/confusion.png").stat().st_size > 1000


def test_missing_data_is_one_clear_error(tmp_path):
    r = _step(
        "components.pretrain",
        "--params",
        str(ROOT / "params.yaml"),
        "--data",
        str(tmp_path / "nope"),
        "--unlabeled",
        str(tmp_path / "nope2"),
        "--out",
        str(tmp_path / "o"),
        "--metrics",
        str(tmp_path / "m.json"),
        "--curve",
        str(tmp_path / "c.csv"),
        "--checkpoints",
        str(tmp_path / "ck"),
        "--warmstart",
        str(full_plan(tmp_path / "warmstart")),
    )
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr and "nope" in r.stderr
    assert not (tmp_path / "o").exists()
