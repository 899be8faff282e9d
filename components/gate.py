"""The gate step: robustness and adversarial gate of the fine-tuned model against production.

    python -m components.gate --params params.yaml --model models/finetuned \
        --data data/prepared --baseline models/baseline --out models/gated \
        --report reports/gate --metrics metrics/gate.json

Reads the fine-tuned model dir, the prepared test split and the baseline: the production
model as the `baseline` stage fetched it (models/baseline; with nothing promoted yet it
holds only `production.json` saying so, and the gate says it runs without a baseline).
Writes the gated model dir (the card gains `gate`, `envelope` and the gate's lineage),
`reports/gate/` (a self-contained `index.html` with its images inlined, the PNGs, and
`gate.json`, the full record) and `metrics/gate.json`, the decision figures only.

Passing the gate makes a candidate, never production: promotion is
`python -m pipeline.production promote`. With `gate.enforce: true` a failing gate exits
3, so `dvc repro` stops before packaging. Timings go to `.thermops/timings/gate.json`
(`thermops.io.write_timings`), never into a tracked file.

A classifier trained with geometry features (its card's `input.geometry`) is judged with
every figure a geometry-free one gets: each test row's features come from its manifest
`window_m` / `window_px` through the model's own input spec (`thermops.learn.datasets.
row_geometry`, as `thermops.evaluation.inference` computes them), and they are held fixed
while the pixels are attacked, corrupted, warped or drifted. The production model gets its
own features from its own card, so either model may take them or not.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from components._cli import Refused, parser, run_cli
from thermops.config import load_params, section, seed_everything, seed_of
from thermops.data.prepared import PreparedData, PreparedDataError, load_prepared
from thermops.io import atomic_dir, read_json, write_json, write_timings
from thermops.learn.datasets import row_geometry
from thermops.model.card import ModelCardError, input_spec_from_card, lineage, load_model_dir
from thermops.robustness.params import GateParams


class GateFailed(Refused):
    """The model did not pass the gate (raised by `main` only when `gate.enforce` is true): exit 3."""


def baseline_record(baseline_dir: Path) -> dict[str, Any]:
    """What models/baseline holds: the production version record, or {"version": None, "note"}."""
    rec_path = Path(baseline_dir) / "production.json"
    if not rec_path.is_file():
        raise ModelCardError(
            f"{baseline_dir}: no production.json; the baseline comes from the `baseline` stage "
            "(python -m components.baseline), not from a folder of its own"
        )
    rec = read_json(rec_path)
    if rec.get("version") is not None and not (Path(baseline_dir) / "card.json").is_file():
        raise ModelCardError(f"{baseline_dir}: production version {rec['version']} without its card.json")
    return rec


def _baseline_metrics(
    baseline_dir: Path,
    tubelets: np.ndarray,
    units: list[str],
    cameras: list[str],
    labels: np.ndarray,
    p: GateParams,
    seed: int,
    p_hash: str,
    data: PreparedData,
    idx: np.ndarray,
) -> tuple[dict | None, dict]:
    """The production model's metrics: stored in its card when data (the tubelets and, for a model
    taking geometry features, its features of them) and protocol match (and the stored figures hold
    per-camera accuracy), else re-measured with its own card's input spec."""
    from thermops.robustness.evaluate import data_hash, evaluate

    rec = baseline_record(baseline_dir)
    if rec.get("version") is None:
        return None, {"version": None, "note": rec.get("note", "no production model")}
    model, card = load_model_dir(baseline_dir)
    spec = input_spec_from_card(card)
    geo = row_geometry(data, idx, spec)  # its own features (None for a geometry-free production model)
    d_hash = data_hash(tubelets, labels, cameras, geo)
    stored = card.get("gate", {}).get("metrics")
    info = {
        "version": rec["version"],
        "tag": rec.get("tag"),
        "digest": rec.get("digest"),
        "git_revision": card.get("git_revision"),
        "data": card.get("data"),
    }
    same = bool(stored) and stored.get("data_hash") == d_hash and stored.get("params_hash") == p_hash
    if same and stored.get("per_camera"):
        info["metrics_source"] = "stored in the production card (same test data and protocol)"
        return stored, info
    m = evaluate(model, spec, tubelets, units, cameras, labels, p, seed, baseline=True, geo=geo)
    m.pop("_artefacts")
    m.pop("timing_s", None)
    info["metrics_source"] = (
        "re-measured on this test data (the stored figures have no per-camera accuracy)"
        if same
        else "re-measured on this test data (data or protocol changed)"
    )
    return m, info


def decision_figures(gate: dict[str, Any], params: GateParams) -> dict[str, Any]:
    """The few numbers the decision rests on: metrics/gate.json (what `dvc metrics show` and KFP show).

    Robust accuracy is the per-tubelet worst case over the attacks at each eps the
    thresholds judge; `worst_camera_drop` is the largest production-minus-candidate clean
    accuracy over the cameras the per-camera regression check compared (None without a
    production model or with no camera compared); everything else (curves, sweeps, every
    check, the per-camera table) is in reports/gate/gate.json.
    """
    robust = {}
    for threat, by_eps in params.thresholds.robust_accuracy.items():
        curve = gate["robust_accuracy"].get(threat, {}).get("worst", {})
        for eps in sorted(by_eps):
            val = next((v for k, v in curve.items() if abs(float(k) - float(eps)) < 1e-9), None)
            robust[f"{threat}@{eps:g}"] = None if val is None else round(float(val), 4)
    base = gate["baseline"]
    drops = [
        c["blessed_value"] - c["value"]
        for c in gate["checks"]
        if c["name"].startswith("regression:clean_accuracy[") and not c.get("skipped") and "blessed_value" in c
    ]
    return {
        "passed": bool(gate["passed"]),
        "failed_checks": len(gate["reasons"]),
        "clean_accuracy": round(float(gate["clean_accuracy"]), 4),
        "robust": robust,
        "mean_ce": round(float(gate["mean_ce"]), 4),
        "flip_rate": round(float(gate["flip_rate"]), 4),
        "slope": round(float(gate["stability_slope"]), 4),
        "baseline": base.get("version") or 0,
        "worst_camera_drop": round(float(max(drops)), 4) if drops else None,
    }


def run(
    params: GateParams,
    seed: int,
    model_dir: Path,
    data_dir: Path,
    baseline_dir: Path,
    out_dir: Path,
    report_dir: Path,
    metrics_path: Path,
) -> dict[str, Any]:
    """Evaluate against the production baseline, decide, report, write the gated model.

    Args:
        params: the `gate` section; seed: the top-level seed.
        model_dir: fine-tuned model dir; data_dir: prepared dataset; baseline_dir: what the
            `baseline` stage wrote (the production model, or the record that there is none).
        out_dir: gated model dir; report_dir: report folder (index.html, PNGs, gate.json);
        metrics_path: metrics/gate.json (decision figures).
    Returns: the full gate record (reports/gate/gate.json): `passed`, `reasons`, figures.
    """
    import torch

    from thermops.robustness import decision as D
    from thermops.robustness import envelope as E
    from thermops.robustness import report as R
    from thermops.robustness.attacks import predict, rows_of
    from thermops.robustness.evaluate import corruption_ce, data_hash, evaluate, params_hash

    t_start = time.perf_counter()
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    seed_everything(seed)
    model, card = load_model_dir(model_dir)
    baseline_record(baseline_dir)  # a malformed baseline fails before minutes of attacks
    spec = input_spec_from_card(card)
    classes = list(card["classes"])
    data = load_prepared(data_dir)
    idx = data.indices(params.split)
    if len(idx) == 0:
        raise PreparedDataError(f"{data_dir}: no tubelets in split {params.split!r}")
    labels = data.labels(classes)[idx]
    tubelets = np.asarray(data.tubelets[idx], dtype=np.float32)
    units = [data.rows[i]["units"] for i in idx]
    cameras = [str(data.rows[i]["camera_id"]) for i in idx]
    geo = row_geometry(data, idx, spec)  # (N, G) per-row geometry features, None without input.geometry
    d_hash, p_hash = data_hash(tubelets, labels, cameras, geo), params_hash(params)

    m = evaluate(model, spec, tubelets, units, cameras, labels, params, seed, geo=geo)
    art = m.pop("_artefacts")
    timings = {k: float(v) for k, v in m.pop("timing_s").items()}
    m["data_hash"], m["params_hash"] = d_hash, p_hash

    t0 = time.perf_counter()
    base, base_info = _baseline_metrics(baseline_dir, tubelets, units, cameras, labels, params, seed, p_hash, data, idx)
    timings["baseline"] = time.perf_counter() - t0
    normalizer = base["corruption_errors"] if base else m["corruption_errors"]
    m["corruption_ce"], m["mean_ce"] = corruption_ce(m["corruption_errors"], normalizer)
    m["mean_ce_note"] = (
        "CE_c = sum over 5 severities of this model's error / the production model's (ImageNet-C); "
        "mean CE averages CE_c"
        if base
        else "no production model to compare with: the normalizer is the model itself, so every CE is 1.0 "
        "and there is no regression check"
    )
    th = params.thresholds
    clean_ok = m["clean_accuracy"] >= th.clean_accuracy
    m["envelope"] = E.envelope(
        m["perspective"]["sweep"],
        m["radiometric"]["sweep"],
        min_accuracy=th.clean_accuracy,
        max_flip_rate=th.max_flip_rate,
        spec=spec,
        window_px=E.median_window_px([data.rows[i] for i in idx]),
        clean_ok=clean_ok,
    )
    m["envelope"]["geometric"]["tubelet_frames"] = spec.frames
    dec = D.decide(m, th, base, params.regression)
    gate = {
        **m,
        "passed": dec["passed"],
        "reasons": dec["reasons"],
        "checks": dec["checks"],
        "enforce": params.enforce,
        "model": {"git_revision": card.get("git_revision"), "data": card.get("data")},
        "baseline": base_info,
        "units_note": (
            f"eps in model-input units (after normalization), per tubelet; for celsius tubelets 1 unit = "
            f"{spec.celsius_scale_k} K (InputSpec.celsius_scale_k); L2 norms over all T*H*W = "
            f"{spec.frames}x{spec.size}x{spec.size} values; pixel figures are model-input pixels "
            f"({spec.size} px across the tubelet window)"
        ),
    }
    if spec.geometry:  # only for such a model: a geometry-free model's record stays as it was
        gate["geometry_note"] = (
            f"the classifier takes geometry features {list(spec.geometry)} of each window beside the pixels "
            "(from the manifest's window_m / window_px); every figure feeds each tubelet its own features, "
            "held fixed: attacks and corruptions change pixels only, and a warped or drifted window keeps "
            "its row's features"
        )

    # Report: plots and captum maps on the PGD examples of the first threat model.
    t0 = time.perf_counter()
    with atomic_dir(report_dir) as rd:
        images = [
            ("Accuracy vs epsilon", "accuracy_vs_eps.png"),
            ("Corruption severity curves", "corruptions.png"),
            ("Perspective and radiometric stability", "stability.png"),
        ]
        R.plot_robust_accuracy(gate, rd / images[0][1], spec.celsius_scale_k)
        R.plot_corruptions(gate, rd / images[1][1])
        R.plot_stability(gate, rd / images[2][1])
        k = params.report.examples
        picks: list[int] | None = None
        ageo = art["geo"]  # the attacked rows' geometry features (None without)
        for threat, adv in art["examples"].items():
            # Show tubelets the model gets right and the attack flips, then other correct ones.
            ok = predict(model, art["x"], ageo) == art["y"]
            flipped = ok & (predict(model, adv, ageo) != art["y"])
            pick = sorted(range(len(ok)), key=lambda i: (not bool(flipped[i]), not bool(ok[i]), i))[:k]
            x, y, xa = art["x"][pick], art["y"][pick], adv[pick]
            pa = predict(model, xa, rows_of(ageo, pick))
            name = f"adversarial_{threat}.png"
            R.plot_adversarial(
                x,
                xa,
                y,
                pa,
                classes,
                rd / name,
                spec.celsius_scale_k,
                f"PGD {threat}, eps {params.threat_models[threat].eps[len(params.threat_models[threat].eps) // 2]}",
            )
            images.append((f"Adversarial frames ({threat})", name))
            picks = pick if picks is None else picks  # the attribution maps use the first threat's picks
        if art["examples"]:
            threat, adv = next(iter(art["examples"].items()))
            R.plot_attributions(
                model,
                art["x"][picks],
                adv[picks],
                art["y"][picks],
                rd / "attributions.png",
                list(params.report.occlusion_window),
                rows_of(ageo, picks),
            )
            images.append(
                (f"Saliency / Grad-CAM / occlusion (captum), clean and PGD-{threat} attacked", "attributions.png")
            )
        R.write_html(rd, gate, images)
        write_json(rd / "gate.json", gate)
    timings["report"] = time.perf_counter() - t0

    # The gated model: same weights, card with the decision, the envelope and the gate's lineage.
    summary = {
        k: gate[k]
        for k in (
            "passed",
            "reasons",
            "clean_accuracy",
            "mean_ce",
            "flip_rate",
            "stability_slope",
            "sanity_passed",
            "data_hash",
            "params_hash",
        )
    }
    summary["robust_accuracy_worst"] = {t: v["worst"] for t, v in gate["robust_accuracy"].items()}
    stored = {k: v for k, v in gate.items() if k not in ("checks", "reasons", "passed", "baseline", "model")}
    new_card = dict(card)
    new_card["gate"] = {
        **summary,
        "decision": "pass" if gate["passed"] else "fail",
        "baseline": base_info,
        "metrics": stored,
        "lineage": lineage(
            {"data/prepared": data_dir, "models/finetuned": model_dir, "models/baseline": baseline_dir},
            {"seed": seed, "gate": params_hash(params)},
        ),
    }
    new_card["envelope"] = {**gate["envelope"], "input_size": spec.size}
    with atomic_dir(out_dir) as od:
        shutil.copyfile(Path(model_dir) / "model.pt", od / "model.pt")
        write_json(od / "card.json", new_card)
    write_json(metrics_path, decision_figures(gate, params))
    timings["total"] = time.perf_counter() - t_start
    gate["timing_s"] = timings  # returned to the caller (and logged), never written to a tracked file
    write_timings("gate", timings)
    return gate


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; knobs come from params.yaml (`gate`, `seed`). A refused model exits 3."""
    a = parser(
        __doc__,
        ("--model", "models/finetuned"),
        ("--data", "data/prepared"),
        ("--baseline", "models/baseline (the production model, from the baseline stage)"),
        ("--out", "models/gated"),
        ("--report", "reports/gate"),
        ("--metrics", "metrics/gate.json"),
    ).parse_args(argv)

    def go() -> str:
        raw = load_params(a.params)
        p = section(raw, "gate", GateParams)
        gate = run(p, seed_of(raw), a.model, a.data, a.baseline, a.out, a.report, a.metrics)
        status = "passed" if gate["passed"] else "FAILED"
        base = gate["baseline"]
        against = f"production version {base['version']}" if base.get("version") else "no production model"
        line = (
            f"gate {status} (against {against}): clean {gate['clean_accuracy']:.3f}, mean CE {gate['mean_ce']:.3f}, "
            f"flip rate {gate['flip_rate']:.3f}, slope {gate['stability_slope']:.3f}, "
            f"{gate['timing_s']['total']:.1f} s"
        )
        if not base.get("version"):
            print("gate: " + base.get("note", "no production model"))
        if not gate["passed"] and p.enforce:
            print(line)
            raise GateFailed(
                f"gate failed with {len(gate['reasons'])} reason(s) (gate.enforce is true; see "
                f"{a.report / 'index.html'}): " + "; ".join(gate["reasons"])
            )
        return line

    run_cli(go)


if __name__ == "__main__":
    main()
