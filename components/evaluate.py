"""Step `evaluate`: the fine-tuned model on the synthetic test split and on the real held-out sources.

    python -m components.evaluate --params params.yaml --model models/finetuned --data data/prepared \
        --heldout data/heldout --metrics metrics/real_eval.json --report reports/real_eval

Per source: 4-class accuracy, balanced accuracy, macro-F1, per-class recall, and
the person-vs-rest alarm figures (balanced accuracy with its standard error,
AUROC of p(person), recall, specificity); the synthetic test split also per
ground-range bin, every source per apparent-size bin. A model trained on a
source of `real_eval.heldout`, or on an image that `real_eval.by_image` scores,
is refused (exit 1). Writes the DVC metric (decision figures only) and a
self-contained HTML report (PNG figures inlined) with details.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components._cli import parser, run_cli
from thermops.config import classes_of, load_params, section
from thermops.data.prepared import load_prepared
from thermops.evaluation.heldout import SYNTHETIC, RealEvalParams, check_by_image, check_heldout
from thermops.evaluation.inference import probabilities
from thermops.evaluation.page import write_report
from thermops.evaluation.scores import bins_of, score
from thermops.io import read_json, write_json
from thermops.model.card import load_model_dir


def _num(v: str) -> float | None:
    return float(v) if v not in ("", None) else None


def _binned(probs, target, rows, key: str, edges: list[float], classes, positive) -> dict:
    labels = bins_of([_num(r[key]) for r in rows], edges)
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        name = f"{lo:g}-{hi:g}"
        sel = np.array([lab == name for lab in labels], dtype=bool)
        if sel.any():
            s = score(probs[sel], target[sel], classes, positive)
            pvr = s[f"{positive}_vs_rest"]
            out[name] = {
                "n": s["n"],
                "accuracy": s["accuracy"],
                "macro_f1": s["macro_f1"],
                f"{positive}_recall": pvr["recall"],
                f"{positive}_balanced_accuracy": pvr["balanced_accuracy"],
            }
    return out


def _by_motion(probs, target, rows, classes, positive) -> dict:
    """Figures of still tubelets (one frame repeated: still images, snapshots) and of sequences apart."""
    still = np.array([r["frame_start"] == r["frame_end"] for r in rows], dtype=bool)
    out = {}
    for name, sel in (("still", still), ("sequence", ~still)):
        if sel.any():
            s = score(probs[sel], target[sel], classes, positive)
            out[name] = {
                "n": s["n"],
                "accuracy": s["accuracy"],
                "macro_f1": s["macro_f1"],
                f"{positive}_balanced_accuracy": s[f"{positive}_vs_rest"]["balanced_accuracy"],
            }
    return out


def metric_view(s: dict, positive: str) -> dict:
    """One source's figures in the full view (`decision_view` picks the few the metrics file keeps)."""
    pvr = s[f"{positive}_vs_rest"]
    return {
        "n": s["n"],
        f"n_{positive}": pvr["n_pos"],
        f"{positive}_balanced_accuracy": pvr["balanced_accuracy"],
        f"{positive}_balanced_accuracy_se": pvr["balanced_accuracy_se"],
        f"{positive}_auroc": pvr["auroc"],
        f"{positive}_recall": pvr["recall"],
        f"{positive}_specificity": pvr["specificity"],
        f"{positive}_precision": pvr["precision"],
        "accuracy": s["accuracy"],
        "balanced_accuracy": s["balanced_accuracy"],
        "macro_f1": s["macro_f1"],
        "recall": s["recall"],
    }


def decision_view(metrics: dict, positive: str) -> dict:
    """What metrics/real_eval.json keeps: per source its size and headline figures, and the worst
    real source (flat numbers for `dvc metrics show`); the full view goes to the report's details.json."""
    keys = ("n", f"{positive}_balanced_accuracy", f"{positive}_auroc", "macro_f1")
    return {
        "sources": {
            name: {k: v[k] for k in keys} if v["status"] == "scored" else {"n": 0}
            for name, v in metrics["sources"].items()
        },
        "real": {k: v for k, v in metrics["real"].items() if k.startswith("min_")},
    }


def run(
    cfg: RealEvalParams,
    classes: list[str],
    model_dir: Path,
    prepared_dir: Path,
    heldout_dir: Path,
    metrics_path: Path,
    report_dir: Path,
) -> dict:
    """Score the model; write the metrics file and the report.

    Args:
        cfg: the `real_eval` params.
        classes: the model classes (the card's must match).
        model_dir: models/finetuned.
        prepared_dir: data/prepared (its test split: synthetic and trained sources).
        heldout_dir: data/heldout (the `heldout` step's output).
        metrics_path: metrics/real_eval.json (`decision_view` of the full view).
        report_dir: reports/real_eval (index.html, details.json: the full view under `metrics`).

    Returns:
        The full view (every figure per source, per range and motion).
    """
    model, card = load_model_dir(model_dir)
    if list(card["classes"]) != list(classes):
        raise ValueError(f"{model_dir}: the model's classes {card['classes']} are not params classes {classes}")
    if cfg.positive not in classes:
        raise ValueError(f"real_eval.positive: {cfg.positive!r} is not one of the classes {classes}")
    trained = list(card.get("data", {}).get("sources") or [])
    check_heldout(cfg, trained)
    prepared = load_prepared(prepared_dir)
    held = load_prepared(heldout_dir / "prepared")
    status = read_json(heldout_dir / "status.json")["sources"]
    check_by_image(held, prepared, [s for s in cfg.by_image if s in trained])
    listed = [s for s in cfg.sources if s not in status]
    if listed:
        raise ValueError(f"{heldout_dir}: no status for {listed}; re-run the heldout step (dvc repro heldout)")

    device = "cpu"
    metrics: dict = {"positive": cfg.positive, "trained_on": sorted(trained), "sources": {}}
    details: dict = {"sources": {}}
    examples: dict = {}
    groups = []  # (source, scope, data, idx)
    for source in sorted({r["source"] for r in prepared.rows if r["split"] == "test"}):
        if source in cfg.sources:
            continue  # scored from data/heldout, cut the held-out way
        idx = np.array([i for i, r in enumerate(prepared.rows) if r["split"] == "test" and r["source"] == source])
        groups.append((source, "test split", prepared, idx))
    for source in cfg.sources:
        if status[source]["status"] != "scored":
            metrics["sources"][source] = {"status": "missing"}
            details["sources"][source] = status[source]
            continue
        idx = np.array([i for i, r in enumerate(held.rows) if r["source"] == source])
        groups.append((source, status[source]["scope"], held, idx))
    for source, scope, data, idx in groups:
        probs = probabilities(model, card, data, idx, device)
        target = data.labels(classes)[idx]
        rows = [data.rows[i] for i in idx]
        s = score(probs, target, classes, cfg.positive)
        view = {"status": "scored", "scope": scope, **metric_view(s, cfg.positive)}
        if source == SYNTHETIC:
            view["by_range_m"] = _binned(probs, target, rows, "distance_m", cfg.range_bins_m, classes, cfg.positive)
            view["by_motion"] = _by_motion(probs, target, rows, classes, cfg.positive)
        metrics["sources"][source] = view
        details["sources"][source] = {
            "scope": scope,
            "score": s,
            "by_size_px": _binned(probs, target, rows, "box_px", cfg.size_bins_px, classes, cfg.positive),
            "by_agc": {
                agc or "counts/unknown": metric_view(
                    score(probs[sel], target[sel], classes, cfg.positive), cfg.positive
                )
                for agc in sorted({r["agc"] for r in rows})
                for sel in [np.array([r["agc"] == agc for r in rows])]
            },
        }
        examples[source] = (data, idx, probs, target)
    real = [k for k, v in metrics["sources"].items() if k != SYNTHETIC and v["status"] == "scored"]
    pos = cfg.positive

    def worst(key: str) -> float | None:
        vals = [metrics["sources"][k][key] for k in real if metrics["sources"][k][key] is not None]
        return min(vals) if vals else None

    metrics["real"] = {
        "scored": real,
        "missing": [k for k, v in metrics["sources"].items() if v["status"] == "missing"],
        f"min_{pos}_balanced_accuracy": worst(f"{pos}_balanced_accuracy"),
        f"min_{pos}_auroc": worst(f"{pos}_auroc"),
    }
    details["metrics"] = metrics
    write_report(report_dir, metrics, details, examples, classes, cfg, card)
    write_json(metrics_path, decision_view(metrics, pos))  # last: a failed report leaves the previous metrics
    return metrics


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; the knobs come from params.yaml."""
    args = parser(
        __doc__,
        ("--model", "models/finetuned"),
        ("--data", "data/prepared"),
        ("--heldout", "data/heldout"),
        ("--metrics", "metrics/real_eval.json"),
        ("--report", "reports/real_eval"),
    ).parse_args(argv)

    def go() -> str:
        params = load_params(args.params)
        m = run(
            section(params, "real_eval", RealEvalParams),
            classes_of(params),
            args.model,
            args.data,
            args.heldout,
            args.metrics,
            args.report,
        )
        pos = m["positive"]
        lines = []
        for name, v in m["sources"].items():
            if v["status"] != "scored":
                lines.append(f"evaluate: {name}: missing")
                continue
            ba, auc = v[f"{pos}_balanced_accuracy"], v[f"{pos}_auroc"]
            lines.append(
                f"evaluate: {name} ({v['scope']}): n {v['n']}, {pos} {v[f'n_{pos}']}, "
                f"{pos}-vs-rest balanced accuracy {ba if ba is None else round(ba, 3)}, "
                f"AUROC {auc if auc is None else round(auc, 3)}, 4-class accuracy {v['accuracy']:.3f}, "
                f"macro-F1 {v['macro_f1']:.3f}"
            )
        return "\n".join(lines)

    run_cli(go)


if __name__ == "__main__":
    main()
