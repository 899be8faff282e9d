"""The pretrain and finetune steps through their CLIs: outputs, metrics, card lineage, clear errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.training_helpers import CLASSES, full_plan, make_prepared, make_unlabeled, small_training_params
from thermops.model.card import load_model_dir

ROOT = Path(__file__).resolve().parents[1]


def _step(module: str, *args: str, timings: Path | None = None, bare: str | None = None) -> subprocess.CompletedProcess:
    """Run a step; its wall-clock timings go to `timings`, never into the repository's `.thermops/`.
    `bare`: as on a GPU node whose python has torch, numpy, pyyaml and these distributions (comma-separated;
    "" for none) alone (tests/bare_python.py)."""
    env = {**os.environ, **({"THERMOPS_TIMINGS_DIR": str(timings)} if timings else {})}
    run = [str(ROOT / "tests" / "bare_python.py"), "--with", bare or "", module] if bare is not None else ["-m", module]
    return subprocess.run([sys.executable, *run, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def _train(
    d: Path, out: Path, bare: str | None = None
) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """pretrain, then finetune, on the data and params in `d`, writing everything under `out`."""
    params, prepared, plan = str(d / "params.yaml"), str(d / "prepared"), str(full_plan(out / "warmstart"))
    pre = _step(
        "components.pretrain",
        *("--params", params, "--data", prepared, "--unlabeled", str(d / "unlabeled")),
        *("--out", str(out / "pretrained"), "--metrics", str(out / "m/pretrain.json")),
        *("--curve", str(out / "m/pretrain_loss.csv"), "--checkpoints", str(out / "ck/pre"), "--warmstart", plan),
        timings=out / "timings",
        bare=bare,
    )
    if pre.returncode:
        return pre, pre
    ft = _step(
        "components.finetune",
        *("--params", params, "--data", prepared, "--pretrained", str(out / "pretrained")),
        *("--out", str(out / "finetuned"), "--metrics", str(out / "m/finetune.json")),
        *("--confusion", str(out / "m/confusion.csv"), "--curve", str(out / "m/curve.csv")),
        *("--figures", str(out / "fig"), "--checkpoints", str(out / "ck/ft"), "--warmstart", plan),
        timings=out / "timings",
        bare=bare,
    )
    return pre, ft


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("steps")
    make_prepared(d / "prepared", n_per_class=10, seed=2)
    make_unlabeled(d / "unlabeled")
    params = small_training_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["classes"] = CLASSES
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    pre, ft = _train(d, d)
    assert pre.returncode == 0, pre.stderr[-2000:]
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
    # the fine-tuning budget the gain is measured at travels with it
    low = yaml.safe_load((d / "params.yaml").read_text())["finetune"]["low_label"]
    assert decision["few_label_epochs"] == few["epochs"] == low["optim"]["epochs"]
    assert few["pretrained_probe_init"] == low["pretrained_probe_init"]
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


def test_the_training_steps_run_on_a_bare_gpu_node(trained):
    """A bare GPU node's python has torch, torchmetrics, numpy and pyyaml: pretrain and finetune run
    there with every other third-party package missing (pydantic, matplotlib, bentoml, ...), and train
    exactly what they train in the full environment. Both import with torch, numpy and pyyaml alone."""
    d, _ = trained
    for step in ("components.pretrain", "components.finetune"):
        r = _step(step, "--help", bare="")
        assert r.returncode == 0, r.stderr[-2000:]
    pre, ft = _train(d, d / "bare", bare="torchmetrics")
    assert pre.returncode == 0 and ft.returncode == 0, (pre.stderr + ft.stderr)[-2000:]
    assert "no PNG figures" in ft.stderr and "matplotlib" in ft.stderr  # the one extra it skips
    for name in ("pretrained/encoder.pt", "finetuned/model.pt"):
        full, bare = (torch.load(root / name, weights_only=True) for root in (d, d / "bare"))
        assert full.keys() == bare.keys() and all(torch.equal(full[k], bare[k]) for k in full), name
    assert json.loads((d / "bare/m/finetune.json").read_text()) == json.loads((d / "m/finetune.json").read_text())


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
