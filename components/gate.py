"""The gate step: robustness and adversarial gate of the fine-tuned model.

    python -m components.gate --params params.yaml --model models/finetuned \
        --data data/prepared --blessed models/blessed --out models/gated \
        --report reports/gate --metrics metrics/gate.json

Reads the fine-tuned model dir, the prepared test split and (if it exists) the
blessed baseline; writes `metrics/gate.json`, the HTML/PNG report, and the gated
model dir (the card gains `gate` and `envelope`). A passing model becomes the new
blessed one. With `gate.enforce: true` a failing gate exits 1, so `dvc repro`
stops before packaging.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from components._cli import Refused, parser, run_cli
from thermops.config import load_params, section, seed_everything, seed_of
from thermops.data.prepared import PreparedDataError, load_prepared
from thermops.io import atomic_dir, write_json
from thermops.model.card import input_spec_from_card, load_model_dir
from thermops.robustness.params import GateParams


class GateFailed(Refused):
    """The model did not pass the gate (raised by `main` only when `gate.enforce` is true): exit 3."""


def _blessed_metrics(
    blessed_dir: Path,
    tubelets: np.ndarray,
    units: list[str],
    labels: np.ndarray,
    p: GateParams,
    seed: int,
    d_hash: str,
    p_hash: str,
) -> tuple[dict | None, dict | None]:
    """The blessed model's metrics: stored in its card when data and protocol match, else re-measured."""
    from thermops.robustness.evaluate import evaluate

    if not (blessed_dir / "card.json").is_file():
        return None, None
    model, card = load_model_dir(blessed_dir)
    stored = card.get("gate", {}).get("metrics")
    info = {"path": str(blessed_dir), "git_revision": card.get("git_revision"), "data": card.get("data")}
    if stored and stored.get("data_hash") == d_hash and stored.get("params_hash") == p_hash:
        info["metrics_source"] = "stored in the blessed card (same test data and protocol)"
        return stored, info
    m = evaluate(model, input_spec_from_card(card), tubelets, units, labels, p, seed, baseline=True)
    m.pop("_artefacts")
    info["metrics_source"] = "re-measured on this test data (data or protocol changed)"
    return m, info


def run(
    params: GateParams,
    seed: int,
    model_dir: Path,
    data_dir: Path,
    blessed_dir: Path,
    out_dir: Path,
    report_dir: Path,
    metrics_path: Path,
) -> dict[str, Any]:
    """Evaluate, decide, report, write the gated model and update the blessed one.

    Args:
        params: the `gate` section; seed: the top-level seed.
        model_dir: fine-tuned model dir; data_dir: prepared dataset; blessed_dir: blessed
            model dir (may be missing: the first passing model is blessed).
        out_dir: gated model dir; report_dir: HTML + PNG report; metrics_path: gate.json.
    Returns: the gate record written to `metrics_path` (`passed`, `reasons`, figures).
    """
    import torch

    from thermops.robustness import decision as D
    from thermops.robustness import envelope as E
    from thermops.robustness import report as R
    from thermops.robustness.attacks import predict
    from thermops.robustness.evaluate import corruption_ce, data_hash, evaluate, params_hash

    t_start = time.perf_counter()
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    seed_everything(seed)
    model, card = load_model_dir(model_dir)
    spec = input_spec_from_card(card)
    classes = list(card["classes"])
    data = load_prepared(data_dir)
    idx = data.indices(params.split)
    if len(idx) == 0:
        raise PreparedDataError(f"{data_dir}: no tubelets in split {params.split!r}")
    labels = data.labels(classes)[idx]
    tubelets = np.asarray(data.tubelets[idx], dtype=np.float32)
    units = [data.rows[i]["units"] for i in idx]
    d_hash, p_hash = data_hash(tubelets, labels), params_hash(params)

    m = evaluate(model, spec, tubelets, units, labels, params, seed)
    art = m.pop("_artefacts")
    m["data_hash"], m["params_hash"] = d_hash, p_hash

    blessed, blessed_info = _blessed_metrics(blessed_dir, tubelets, units, labels, params, seed, d_hash, p_hash)
    normalizer = blessed["corruption_errors"] if blessed else m["corruption_errors"]
    m["corruption_ce"], m["mean_ce"] = corruption_ce(m["corruption_errors"], normalizer)
    m["mean_ce_note"] = (
        "CE_c = sum over 5 severities of this model's error / the blessed model's (ImageNet-C); mean CE averages CE_c"
        if blessed
        else "first model, no blessed baseline: the normalizer is the model itself, so every CE is 1.0"
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
    dec = D.decide(m, th, blessed, params.regression)
    gate = {
        **m,
        "passed": dec["passed"],
        "reasons": dec["reasons"],
        "checks": dec["checks"],
        "enforce": params.enforce,
        "model": {"path": str(model_dir), "git_revision": card.get("git_revision"), "data": card.get("data")},
        "blessed": blessed_info,
        "units_note": (
            f"eps in model-input units (after normalization), per tubelet; for celsius tubelets 1 unit = "
            f"{spec.celsius_scale_k} K (InputSpec.celsius_scale_k); L2 norms over all T*H*W = "
            f"{spec.frames}x{spec.size}x{spec.size} values; pixel figures are model-input pixels "
            f"({spec.size} px across the tubelet window)"
        ),
    }

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
        for threat, adv in art["examples"].items():
            # Show tubelets the model gets right and the attack flips, then other correct ones.
            ok = predict(model, art["x"]) == art["y"]
            flipped = ok & (predict(model, adv) != art["y"])
            pick = sorted(range(len(ok)), key=lambda i: (not bool(flipped[i]), not bool(ok[i]), i))[:k]
            x, y, xa = art["x"][pick], art["y"][pick], adv[pick]
            pa = predict(model, xa)
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
            )
            images.append(
                (f"Saliency / Grad-CAM / occlusion (captum), clean and PGD-{threat} attacked", "attributions.png")
            )
        gate["timing_s"]["report"] = time.perf_counter() - t0
        gate["timing_s"]["total"] = time.perf_counter() - t_start
        R.write_html(rd, gate, images)

    # The gated model: same weights, card with the decision and the envelope.
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
    stored = {k: v for k, v in gate.items() if k not in ("checks", "reasons", "passed", "blessed", "model")}
    new_card = dict(card)
    new_card["gate"] = {
        **summary,
        "decision": "pass" if gate["passed"] else "fail",
        "blessed_baseline": blessed_info,
        "metrics": stored,
    }
    new_card["envelope"] = {**gate["envelope"], "input_size": spec.size}
    with atomic_dir(out_dir) as od:
        shutil.copyfile(Path(model_dir) / "model.pt", od / "model.pt")
        write_json(od / "card.json", new_card)
    write_json(metrics_path, gate)
    if gate["passed"]:
        with atomic_dir(blessed_dir) as bd:
            shutil.copyfile(out_dir / "model.pt", bd / "model.pt")
            write_json(bd / "card.json", new_card)
    elif not Path(blessed_dir).exists():
        # DVC declares models/blessed as an output: leave an empty baseline, not a missing path.
        with atomic_dir(blessed_dir) as bd:
            (bd / "README.txt").write_text(
                "No model has passed the gate yet; the first passing model is blessed here.\n"
            )
    return gate


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; knobs come from params.yaml (`gate`, `seed`). A refused model exits 3."""
    a = parser(
        __doc__,
        ("--model", "models/finetuned"),
        ("--data", "data/prepared"),
        ("--blessed", "models/blessed"),
        ("--out", "models/gated"),
        ("--report", "reports/gate"),
        ("--metrics", "metrics/gate.json"),
    ).parse_args(argv)

    def go() -> str:
        raw = load_params(a.params)
        p = section(raw, "gate", GateParams)
        gate = run(p, seed_of(raw), a.model, a.data, a.blessed, a.out, a.report, a.metrics)
        status = "passed" if gate["passed"] else "FAILED"
        line = (
            f"gate {status}: clean {gate['clean_accuracy']:.3f}, mean CE {gate['mean_ce']:.3f}, "
            f"flip rate {gate['flip_rate']:.3f}, slope {gate['stability_slope']:.3f}, "
            f"{gate['timing_s']['total']:.1f} s"
        )
        if not gate["passed"] and p.enforce:
            print(line)
            raise GateFailed(
                f"gate failed with {len(gate['reasons'])} reason(s) (gate.enforce is true; see {a.metrics}): "
                + "; ".join(gate["reasons"])
            )
        return line

    run_cli(go)


if __name__ == "__main__":
    main()
