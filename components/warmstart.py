"""Step `warmstart`: plan a cheap (warm) or a full retrain against the production model.

    python -m components.warmstart --params params.yaml --baseline models/baseline \
        --data data/prepared --out models/warmstart --metrics metrics/warmstart.json

Compares the production model (what the `baseline` stage fetched) with the current training
params, training code and per-camera data (`thermops.learn.warmstart.plan`). Writes
`OUT/plan.json`; a warm plan also copies the production model (model.pt, card.json) into OUT,
so that `pretrain` reuses its encoder and `finetune` continues from it for `retrain.epochs`.
A full plan is `{"mode": "full"}` and nothing else, whatever the production model: promoting
a model does not re-run pretraining when nothing else changed. `metrics/warmstart.json` says
which plan and why (the reasons a retrain is full).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from components._cli import parser, run_cli
from thermops.config import load_params, section
from thermops.data.prepared import load_prepared
from thermops.io import atomic_dir, read_json, write_json
from thermops.learn.datasets import SplitParams, split_rows
from thermops.learn.warmstart import (
    PLAN_FILE,
    RetrainParams,
    camera_fingerprints,
    code_unchanged,
    plan,
    training_params,
)
from thermops.model.card import CODE_ROOT, load_card


def run(
    cfg: RetrainParams,
    params: dict,
    split: SplitParams,
    baseline: Path,
    data: Path,
    out: Path,
    metrics: Path,
    code_root: Path = CODE_ROOT,
) -> dict:
    """Plan the retrain and write OUT (plan.json, plus the production model when warm) and the metrics."""
    rec_path = Path(baseline) / "production.json"
    if not rec_path.is_file():
        raise FileNotFoundError(f"{baseline}: no production.json (the baseline stage writes it)")
    production = read_json(rec_path)
    card = load_card(baseline) if production.get("version") is not None else None
    prepared = load_prepared(data)
    cameras = camera_fingerprints(prepared, split_rows(prepared.rows, split))
    code = code_unchanged((card or {}).get("training_code"), code_root) if card else (False, "")
    p = plan(cfg, production, card, training_params(params), cameras, code)
    with atomic_dir(out) as tmp:
        if p["mode"] == "warm":
            write_json(tmp / PLAN_FILE, {k: v for k, v in p.items() if k != "reasons"})
            for name in ("model.pt", "card.json"):
                shutil.copy2(Path(baseline) / name, tmp / name)
        else:
            write_json(tmp / PLAN_FILE, {"mode": "full"})
    write_json(
        metrics,
        {
            "mode": p["mode"],
            "production": production.get("version") or 0,
            "moved_cameras": len(p["moved_cameras"]),
            "moved_fraction": p["moved_fraction"],
            "reasons": p["reasons"],
        },
    )
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; knobs come from params.yaml."""
    args = parser(
        __doc__,
        ("--baseline", "models/baseline (the production model, from the baseline stage)"),
        ("--data", "data/prepared"),
        ("--out", "models/warmstart"),
        ("--metrics", "metrics/warmstart.json"),
    ).parse_args(argv)

    def go() -> str:
        params = load_params(args.params)
        p = run(
            section(params, "retrain", RetrainParams),
            params,
            section(params, "split", SplitParams),
            args.baseline,
            args.data,
            args.out,
            args.metrics,
        )
        if p["mode"] == "warm":
            return (
                f"warmstart: warm retrain from production version {p['production']['version']}: {p['reasons'][0]}; "
                f"{p['epochs']} fine-tuning epochs"
            )
        return "warmstart: full retrain (" + "; ".join(p["reasons"]) + ")"

    run_cli(go)


if __name__ == "__main__":
    main()
