"""The real-imagery evaluation stages (`heldout`, `evaluate`): figures checked by hand, the leak guards, the
default run without the real data, and the held-out import of a real set."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from params_helpers import PARAMS, from_params

from components import evaluate, heldout
from tests.training_helpers import CLASSES, make_prepared
from thermops.data.extract import PrepareParams
from thermops.data.importers import IngestParams
from thermops.data.prepared import MANIFEST_COLUMNS, load_prepared
from thermops.evaluation.heldout import HeldoutLeak, RealEvalParams
from thermops.evaluation.scores import auroc, binary_scores, bins_of, multiclass_scores, roc_curve, score
from thermops.io import read_csv, read_json, write_csv, write_json
from thermops.model.card import make_card, save_model_dir
from thermops.model.network import ModelConfig, TubeletClassifier
from thermops.model.preprocess import InputSpec

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "data" / "real"
P, V, A, N = range(4)  # person, vehicle, animal, nuisance


def test_binary_figures_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    p = np.array([0.9, 0.8, 0.3, 0.8, 0.2, 0.1, 0.1, 0.05])
    s = binary_scores(p, y, p >= 0.5)
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (2, 1, 1, 4)
    assert s["recall"] == pytest.approx(2 / 3) and s["specificity"] == pytest.approx(4 / 5)
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert s["balanced_accuracy_se"] == pytest.approx(0.5 * np.sqrt((2 / 3) * (1 / 3) / 3 + 0.8 * 0.2 / 5))
    # AUROC: of 15 (positive, negative) pairs the positive wins 13, ties 1 (0.8 vs 0.8), loses 1 (0.3 < 0.8)
    assert s["auroc"] == pytest.approx(13.5 / 15)
    assert auroc(p, y) == s["auroc"]
    assert auroc(p, np.ones(8, dtype=bool)) is None
    fpr, tpr = roc_curve(p, y)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0) and np.all(np.diff(fpr) >= 0)
    none = binary_scores(np.zeros(2), np.zeros(2, dtype=bool), np.zeros(2, dtype=bool))
    assert none["recall"] is None and none["balanced_accuracy"] is None and none["precision"] is None


def test_multiclass_figures_over_the_classes_present():
    target = np.array([P, P, P, V, N, N])
    pred = np.array([P, P, V, V, N, V])
    m = multiclass_scores(pred, target, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    f1 = {"person": 2 * 2 / (3 + 2), "vehicle": 2 * 1 / (1 + 3), "nuisance": 2 * 1 / (2 + 1)}
    assert m["macro_f1"] == pytest.approx(np.mean(list(f1.values())))  # animal absent: not averaged
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert m["per_class"]["animal"] == {"support": 0, "recall": None, "precision": None, "f1": None}
    assert m["confusion"]["matrix"][P] == [2, 1, 0, 0]
    assert bins_of([3.0, 15.0, None, 500.0], [0, 15, 30]) == ["0-15", "15-30", None, None]
    probs = np.eye(4)[pred] * 0.7 + 0.075
    s = score(probs, target, CLASSES, "person")
    assert s["person_vs_rest"]["recall"] == pytest.approx(2 / 3) and s["recall"]["vehicle"] == 1.0
    with pytest.raises(ValueError, match="positive class"):
        score(probs, target, CLASSES, "dragon")


def _model_dir(root: Path, sources: list[str]) -> Path:
    cfg = from_params(ModelConfig, "model")
    card = make_card(
        classes=CLASSES,
        model_cfg=cfg,
        input_spec=from_params(InputSpec, "input"),
        calibrations={},
        data={"sources": sources},
    )
    save_model_dir(root, TubeletClassifier(cfg, len(CLASSES)), card)
    return root


def _heldout_dir(root: Path, sources: dict[str, str]) -> Path:
    """A data/heldout folder: prepared rows for the sources with status `scored` (source -> status)."""
    prep = make_prepared(root / "prepared", n_per_class=5, seed=3)
    rows = read_csv(prep / "manifest.csv")
    scored = [s for s, st in sources.items() if st == "scored"]
    for i, r in enumerate(rows):
        r["source"] = scored[i % len(scored)]
        r["clip_id"] = f"img{i}"
    write_csv(prep / "manifest.csv", rows, MANIFEST_COLUMNS)
    status = {s: ({"status": st, "scope": "test images"} if st == "scored" else {"status": st, "reason": "absent"})
              for s, st in sources.items()}  # fmt: skip
    write_json(root / "status.json", {"sources": status})
    return root


def _cfg(**kw) -> RealEvalParams:
    return from_params(RealEvalParams, "real_eval", **kw)


def test_evaluate_scores_every_source_and_writes_a_self_contained_report(tmp_path, monkeypatch):
    model = _model_dir(tmp_path / "model", ["synthetic"])
    prepared = make_prepared(tmp_path / "prepared", n_per_class=5)  # one test tubelet per class, synthetic
    held = _heldout_dir(
        tmp_path / "heldout", {"tno-fel": "scored", "hit-uav": "scored", "thermal-dogs-people": "missing"}
    )
    held_rows = read_csv(held / "prepared" / "manifest.csv")

    def oracle(model, card, data, idx, device="cpu"):  # right on every row but the tno-fel persons: called vehicle
        out = np.full((len(idx), 4), 0.02)
        for k, i in enumerate(idx):
            r = data.rows[i]
            c = CLASSES.index(r["label"])
            c = V if (r["source"] == "tno-fel" and c == P) else c
            out[k, c] = 0.94
        return out

    monkeypatch.setattr(evaluate, "probabilities", oracle)
    m = evaluate.run(_cfg(), CLASSES, model, prepared, held, tmp_path / "m.json", tmp_path / "report")
    # metrics file: flat decision figures; the full view is in the report's details.json
    assert read_json(tmp_path / "m.json") == evaluate.decision_view(m, "person")
    assert read_json(tmp_path / "m.json")["sources"]["thermal-dogs-people"] == {"n": 0}
    assert read_json(tmp_path / "report" / "details.json")["metrics"] == m
    syn, tno, hit = m["sources"]["synthetic"], m["sources"]["tno-fel"], m["sources"]["hit-uav"]
    assert syn["scope"] == "test split" and syn["n"] == 4 and syn["accuracy"] == 1.0
    assert set(syn["by_range_m"]) == {"30-60"}  # every hand-made tubelet is at 50 m
    assert set(syn["by_motion"]) == {"sequence"} and syn["by_motion"]["sequence"]["n"] == 4
    n_tno = sum(r["source"] == "tno-fel" for r in held_rows)
    n_tno_p = sum(r["source"] == "tno-fel" and r["label"] == "person" for r in held_rows)
    assert tno["n"] == n_tno and tno["n_person"] == n_tno_p
    assert tno["person_recall"] == 0.0 and tno["person_specificity"] == 1.0 and tno["person_balanced_accuracy"] == 0.5
    assert tno["person_auroc"] == 0.5  # every person and non-person at p(person) = 0.02: all ties
    assert hit["person_balanced_accuracy"] == 1.0 and hit["person_auroc"] == 1.0
    assert m["sources"]["thermal-dogs-people"] == {"status": "missing"}
    assert m["real"] == {
        "scored": ["tno-fel", "hit-uav"],
        "missing": ["thermal-dogs-people"],
        "min_person_balanced_accuracy": 0.5,
        "min_person_auroc": 0.5,
    }
    page = (tmp_path / "report" / "index.html").read_text()
    assert "tno-fel" in page and "missing" in page and page.count("data:image/png;base64,") >= 3
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # nothing linked: the page is shown alone
    # One column per figure (person recall once, not again among the per-class recalls), and a
    # balanced accuracy and its SE that do not break across lines in a narrow column.
    head = page.split("<table>")[1].split("</tr>")[0]  # the per-source table's header row
    assert head.count("<th>person recall</th>") == 1 and "<th>recall person</th>" not in head
    assert head.count("<th") == 13 and "<th>recall vehicle</th>" in head
    assert "colspan='12'>missing" in page  # the missing source's row spans the table
    assert "0.500&nbsp;&plusmn;&nbsp;" in page  # tno-fel's balanced accuracy
    details = read_json(tmp_path / "report" / "details.json")
    assert details["sources"]["tno-fel"]["score"]["confusion"]["matrix"][P][V] == n_tno_p


def test_a_model_trained_on_a_held_out_source_is_refused_and_nothing_is_written(tmp_path, capsys):
    model = _model_dir(tmp_path / "model", ["synthetic", "tno-fel"])
    prepared = make_prepared(tmp_path / "prepared", n_per_class=5)
    held = _heldout_dir(
        tmp_path / "heldout", {"tno-fel": "scored", "hit-uav": "scored", "thermal-dogs-people": "scored"}
    )
    with pytest.raises(HeldoutLeak, match=r"\['tno-fel'\] are in the model's training data"):
        evaluate.run(_cfg(), CLASSES, model, prepared, held, tmp_path / "m.json", tmp_path / "report")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--params", str(params), "--model", str(model), "--data", str(prepared), "--heldout",
                       str(held), "--metrics", str(tmp_path / "m.json"), "--report", str(tmp_path / "report")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1 and err[0].startswith("error: held-out source(s) ['tno-fel']")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "report").exists()


def test_a_scored_image_that_gave_training_tubelets_is_refused(tmp_path):
    model = _model_dir(tmp_path / "model", ["synthetic", "hit-uav"])  # hit-uav is by_image: allowed ...
    held = _heldout_dir(
        tmp_path / "heldout", {"tno-fel": "scored", "hit-uav": "scored", "thermal-dogs-people": "scored"}
    )
    prepared = make_prepared(tmp_path / "prepared", n_per_class=5)
    evaluate_ok = tmp_path / "ok"
    evaluate.run(_cfg(), CLASSES, model, prepared, held, evaluate_ok / "m.json", evaluate_ok / "r")
    scored = next(r["clip_id"] for r in read_csv(held / "prepared" / "manifest.csv") if r["source"] == "hit-uav")
    rows = read_csv(prepared / "manifest.csv")
    rows[0].update(source="hit-uav", clip_id=scored, split="train")  # ... but not on an image it is scored on
    write_csv(prepared / "manifest.csv", rows, MANIFEST_COLUMNS)
    with pytest.raises(HeldoutLeak, match="hit-uav: 1 scored image"):
        evaluate.run(_cfg(), CLASSES, model, prepared, held, tmp_path / "m.json", tmp_path / "r")


def test_params_never_train_on_a_held_out_source():
    """The default sources and the documented real-data switch keep every held-out camera out of training."""
    cfg = from_params(RealEvalParams, "real_eval")
    assert cfg.heldout and cfg.by_image
    for sources in (PARAMS["data"]["sources"], ["synthetic", "hit-uav"]):
        assert not set(cfg.heldout) & set(sources)
    assert set(cfg.sources) <= set(PARAMS["ingest"]["sources"])
    with pytest.raises(ValueError, match="both in heldout and by_image"):
        from_params(RealEvalParams, "real_eval", by_image=["tno-fel"])


def _heldout_run(tmp_path, cfg: RealEvalParams, roots: dict[str, Path] | None = None) -> dict:
    ingest = from_params(IngestParams, "ingest")
    if roots:
        import dataclasses

        ingest = dataclasses.replace(
            ingest,
            sources={k: dataclasses.replace(v, root=str(roots.get(k, v.root))) for k, v in ingest.sources.items()},
        )
    return heldout.run(cfg, ingest, from_params(PrepareParams, "prepare"), CLASSES, 7, ROOT / "data" / "calibration",
                       tmp_path / "heldout")  # fmt: skip


def test_the_default_run_without_the_real_data_reports_missing(tmp_path):
    absent = {s: tmp_path / "nowhere" / s for s in ("tno-fel", "hit-uav", "thermal-dogs-people")}
    s = _heldout_run(tmp_path, _cfg(), absent)
    assert {k: v["status"] for k, v in s["sources"].items()} == dict.fromkeys(absent, "missing")
    assert load_prepared(tmp_path / "heldout" / "prepared").tubelets.shape == (0, 8, 32, 32)
    with pytest.raises(ValueError, match="require"):
        _heldout_run(tmp_path / "again", _cfg(require=True), absent)
    assert not (tmp_path / "again" / "heldout").exists()


@pytest.mark.skipif(not (REAL / "tno-fel-sequences").is_dir(), reason="../shared/data/real is not here")
def test_a_held_out_camera_is_cut_whole_with_its_license(tmp_path):
    cfg = _cfg(heldout=["tno-fel"], by_image=[])
    roots = {"tno-fel": REAL / "tno-fel-sequences"}
    s = _heldout_run(tmp_path, cfg, roots)
    data = load_prepared(tmp_path / "heldout" / "prepared")
    assert {r["source"] for r in data.rows} == {"tno-fel"} and s["sources"]["tno-fel"]["tubelets"] == len(data.rows)
    assert {r["split"] for r in data.rows} >= {"train", "test"}  # whole: every split of the camera is scored
    assert sorted(p.name for p in (tmp_path / "heldout" / "licenses" / "tno-fel").iterdir()) == [
        "MANIFEST.md",
        "TNO_README.txt",
    ]
    dense = sum(r["label"] == "person" for r in data.rows)
    sparse = _heldout_run(tmp_path / "sparse", _cfg(heldout=["tno-fel"], by_image=[], stride=8), roots)
    assert dense > sparse["sources"]["tno-fel"]["by_label"]["person"]  # stride 2 cuts more windows of the walk
