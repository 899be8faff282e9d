"""scripts/eval_real.py: its figures on a hand-made prepared set with known predictions, its params handling
and its one-line errors. The full run (ingest, prepare, pretrain, fine-tune on HIT-UAV) is not run here: it
takes 10-20 minutes (docs/training.md, "Real imagery")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.training_helpers import CLASSES, make_prepared
from thermops.data.prepared import MANIFEST_COLUMNS
from thermops.io import read_csv, write_csv

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("eval_real", ROOT / "scripts" / "eval_real.py")
eval_real = importlib.util.module_from_spec(_spec)
sys.modules["eval_real"] = eval_real
_spec.loader.exec_module(eval_real)

P, V, A, N = range(4)  # person, vehicle, animal, nuisance


class Replay(torch.nn.Module):
    """A stand-in classifier that answers the given class indices, in call order (rows in manifest order)."""

    def __init__(self, preds: list[int]):
        super().__init__()
        self.preds = list(preds)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, self.preds = self.preds[: len(x)], self.preds[len(x) :]
        assert len(out) == len(x), "more rows than predictions"
        return torch.nn.functional.one_hot(torch.tensor(out), len(CLASSES)).float()


CARD = {"classes": CLASSES, "input": {"frames": 8, "size": 32, "celsius_scale_k": 5.0, "robust_floor": 1.0}}


def test_score_by_hand():
    target = torch.tensor([P, P, P, V, A, N])
    preds = torch.tensor([P, P, V, P, A, V])
    s = eval_real.score(preds, target, CLASSES, "person")
    # person vs rest: TP 2, FN 1, FP 1, TN 2
    assert s["person_vs_rest_accuracy"] == pytest.approx(4 / 6)
    assert s["person_recall"] == pytest.approx(2 / 3)
    assert s["person_precision"] == pytest.approx(2 / 3)
    assert s["accuracy"] == pytest.approx(3 / 6)
    assert (s["n"], s["n_person"], s["n_predicted_person"]) == (6, 3, 3)
    assert s["n_per_label"] == {"person": 3, "vehicle": 1, "animal": 1, "nuisance": 1}
    assert s["person_vs_rest_confusion"]["matrix"] == [[2, 1], [1, 2]]
    # undefined ratios are None, not torchmetrics' 0
    none = eval_real.score(torch.tensor([V, V]), torch.tensor([V, A]), CLASSES, "person")
    assert none["person_recall"] is None and none["person_precision"] is None
    assert none["person_vs_rest_accuracy"] == 1.0


def test_evaluate_prepared_per_source_and_split(tmp_path):
    root = make_prepared(tmp_path / "prep", n_per_class=5)  # 20 rows; k % 5 == 4 -> test: one per class
    rows = read_csv(root / "manifest.csv")
    for i, r in enumerate(rows):
        r["source"] = "hit-uav" if i % 2 else "synthetic"
    write_csv(root / "manifest.csv", rows, MANIFEST_COLUMNS)
    test = [i for i, r in enumerate(rows) if r["split"] == "test"]
    assert [rows[i]["label"] for i in test] == CLASSES
    assert [rows[i]["source"] for i in test] == ["synthetic", "hit-uav", "synthetic", "hit-uav"]
    # test rows: person->person (synthetic), vehicle->person (hit-uav), animal->animal (synthetic), nuisance->vehicle (hit-uav)
    res = eval_real.evaluate_prepared(Replay([P, P, A, V]), CARD, root, "person", "test", torch.device("cpu"))
    assert set(res) == {"all", "synthetic", "hit-uav"}
    assert res["all"]["accuracy"] == pytest.approx(2 / 4)
    assert res["all"]["person_recall"] == 1.0 and res["all"]["person_precision"] == pytest.approx(1 / 2)
    assert res["all"]["person_vs_rest_accuracy"] == pytest.approx(3 / 4)
    assert res["synthetic"]["accuracy"] == 1.0 and res["synthetic"]["n"] == 2
    assert res["hit-uav"]["accuracy"] == 0.0 and res["hit-uav"]["n_person"] == 0
    assert res["hit-uav"]["person_recall"] is None and res["hit-uav"]["person_precision"] == 0.0
    assert res["hit-uav"]["person_vs_rest_accuracy"] == pytest.approx(1 / 2)
    # split None: every row (the held-out sets are evaluated whole)
    preds = [CLASSES.index(r["label"]) for r in rows]
    everything = eval_real.evaluate_prepared(Replay(preds), CARD, root, "person", None, torch.device("cpu"))
    assert everything["all"]["n"] == 20 and everything["all"]["accuracy"] == 1.0
    assert everything["all"]["person_recall"] == 1.0 and everything["all"]["n_person"] == 5


def test_step_params_overrides_sources_and_roots(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = eval_real.section_from_mapping(eval_real.RealEvalParams, params["real_eval"], "real_eval")
    p = eval_real.step_params(params, cfg, cfg.train_sources, tmp_path)
    assert p["data"]["sources"] == cfg.train_sources == ["synthetic", "hit-uav"]
    assert cfg.heldout_sources == ["tno-fel"]
    assert p["pretrain"]["optim"]["epochs"] == 4 and p["finetune"]["optim"]["epochs"] == 4
    assert p["pretrain"]["optim"]["lr"] == params["pretrain"]["optim"]["lr"]  # the rest of the section stays
    assert p["ingest"]["sources"]["hit-uav"]["root"] == str((tmp_path / "../shared/data/real/hit-uav").resolve())
    assert params["data"]["sources"] == ["synthetic"]  # the loaded params are not modified


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"train_sources": ["synthetic", "tno-fel"], "heldout_sources": ["tno-fel"]},
            "both in train_sources and heldout_sources",
        ),
        ({"positive": "dragon"}, "real_eval.positive: 'dragon'"),
        ({"epochs": 3}, "real_eval: unknown key(s) epochs"),
    ],
)
def test_bad_params_one_line_error(tmp_path, capsys, section, message):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["real_eval"] = section
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exc:
        eval_real.main(["--params", str(path), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_clip_overlap(tmp_path):
    root = make_prepared(tmp_path / "prep", n_per_class=5)  # clip c<class>: 3 train, 1 val, 1 test tubelets each
    rows = read_csv(root / "manifest.csv")
    rows[19]["clip_id"] = "only-test"  # the nuisance test tubelet: its own clip
    write_csv(root / "manifest.csv", rows, MANIFEST_COLUMNS)
    assert eval_real.clip_overlap(root) == {"synthetic": {"n": 4, "clip_also_in_train": 3}}
