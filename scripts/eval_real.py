"""Real-imagery evaluation in one command: train on synthetic + real, test per source and on held-out sets.

    python scripts/eval_real.py --params params.yaml --raw-synthetic data/raw/synthetic \
        --work /tmp/real_eval --out reports/real_eval

Every knob comes from params.yaml: the `real_eval` section names the training
sources (`train_sources`), the held-out sources that never reach training
(`heldout_sources`), the positive class of the person-vs-rest figures
(`positive`), and `overrides`, params merged over the rest of the file for these
runs (the combined data is ~10x the default, so shorter schedules). CLI flags only
carry paths. The real steps run through their own `run` functions, with params
files written into --work:

1. `components.ingest` of every real source of train + held-out into WORK/raw/imported;
   WORK/raw/synthetic is a symlink to --raw-synthetic (the synthesize stage's output).
2. `components.prepare` of the training sources (WORK/prepared/train) and, separately,
   of the held-out sources (WORK/prepared/heldout).
3. `components.pretrain` then `components.finetune` (compare=False: no linear probes,
   no 10%-label runs) on WORK/prepared/train.
4. The fine-tuned model on the TEST split of each training source, on the whole
   test split, and on ALL tubelets of each held-out source: person-vs-rest accuracy,
   person recall / precision, 4-class accuracy and macro-F1 (torchmetrics through
   `thermops.learn.metrics.classification_metrics`), counts per label.

Writes OUT/real_eval.json and OUT/real_eval.md. Nothing under data/, models/,
metrics/ or checkpoints/ of the repository is touched. Expected errors exit 1 with
one `error: ...` line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from thermops.config import ParamsError, load_params, merge_params, section, section_from_mapping  # noqa: E402

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class RealEvalParams:
    """params `real_eval`."""

    train_sources: list[str] = field(default_factory=lambda: [SYNTHETIC, "hit-uav"])
    heldout_sources: list[str] = field(default_factory=lambda: ["tno-fel"])
    positive: str = "person"
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.train_sources:
            raise ValueError("train_sources must name at least one source")
        both = sorted(set(self.train_sources) & set(self.heldout_sources))
        if both:
            raise ValueError(
                f"sources {both} are both in train_sources and heldout_sources (held-out means never trained on)"
            )
        for name, lst in (("train_sources", self.train_sources), ("heldout_sources", self.heldout_sources)):
            if len(set(lst)) != len(lst):
                raise ValueError(f"{name} lists a source twice: {lst}")


# -- params ---------------------------------------------------------------------------------


def step_params(params: dict, cfg: RealEvalParams, sources: list[str], params_dir: Path) -> dict:
    """The params of one run: overrides applied, `data.sources` set, ingest roots made absolute."""
    p = merge_params(params, cfg.overrides)
    p.setdefault("data", {})["sources"] = list(sources)
    for spec in (p.get("ingest", {}).get("sources") or {}).values():
        if isinstance(spec, dict) and isinstance(spec.get("root"), str) and not Path(spec["root"]).is_absolute():
            spec["root"] = str((params_dir / spec["root"]).resolve())
    return p


def write_params(p: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


# -- evaluation -----------------------------------------------------------------------------


def score(preds: torch.Tensor, target: torch.Tensor, classes: list[str], positive: str) -> dict:
    """Predicted and true class indices (N,) -> 4-class and positive-vs-rest figures (torchmetrics)."""
    from thermops.learn.metrics import classification_metrics

    pos = classes.index(positive)
    multi, cm = classification_metrics(preds, target, classes)
    binary, bcm = classification_metrics((preds == pos).long(), (target == pos).long(), ["rest", positive])
    n_pos = int((target == pos).sum())
    n_pred_pos = int((preds == pos).sum())
    return {
        "n": int(len(target)),
        "n_per_label": {c: int((target == i).sum()) for i, c in enumerate(classes)},
        f"n_{positive}": n_pos,
        f"n_predicted_{positive}": n_pred_pos,
        f"{positive}_vs_rest_accuracy": binary["accuracy"],
        # torchmetrics gives 0 where the ratio is undefined; report None instead (no positives / no predictions)
        f"{positive}_recall": binary["per_class"][positive]["recall"] if n_pos else None,
        f"{positive}_precision": binary["per_class"][positive]["precision"] if n_pred_pos else None,
        f"{positive}_vs_rest_confusion": bcm.to_dict(),
        "accuracy": multi["accuracy"],
        "macro_f1": multi["macro_f1"],
        "per_class": multi["per_class"],
        "confusion": cm.to_dict(),
    }


def evaluate_prepared(
    model: torch.nn.Module,
    card: dict,
    prepared: Path,
    positive: str,
    split: str | None,
    device: torch.device,
    by: str = "source",
) -> dict:
    """Figures of `model` on a prepared folder: the rows of `split` (None: all rows), per `by` value and overall.

    Returns {"all": score, "<source>": score, ...}.
    """
    from thermops.data.prepared import load_prepared
    from thermops.learn.datasets import model_inputs, row_geometry
    from thermops.learn.engine import predict
    from thermops.model.card import input_spec_from_card

    classes = list(card["classes"])
    if positive not in classes:
        raise ValueError(f"real_eval.positive: {positive!r} is not one of the model's classes {classes}")
    data = load_prepared(prepared)
    idx = np.arange(len(data.rows)) if split is None else data.indices(split)
    if len(idx) == 0:
        raise ValueError(f"{prepared}: no tubelets in split {split!r}")
    labels = torch.as_tensor(data.labels(classes))[torch.as_tensor(idx)]
    spec = input_spec_from_card(card)
    preds = predict(model, model_inputs(data, idx, spec), device, geo=row_geometry(data, idx, spec)).argmax(1)
    keys = np.array([data.rows[i][by] for i in idx])
    out = {"all": score(preds, labels, classes, positive)}
    for k in sorted(set(keys)):
        sel = torch.as_tensor(np.flatnonzero(keys == k))
        out[k] = score(preds[sel], labels[sel], classes, positive)
    return out


def clip_overlap(prepared: Path, split: str = "test") -> dict[str, dict[str, int]]:
    """Per source: `split` tubelets, and those cut from a clip (for still images: the same image) that also gave
    train tubelets. Splits are by track, so an image's boxes can land in train and test."""
    from thermops.data.prepared import load_prepared

    rows = load_prepared(prepared).rows
    train_clips = {(r["source"], r["clip_id"]) for r in rows if r["split"] == "train"}
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["split"] == split:
            o = out.setdefault(r["source"], {"n": 0, "clip_also_in_train": 0})
            o["n"] += 1
            o["clip_also_in_train"] += (r["source"], r["clip_id"]) in train_clips
    return dict(sorted(out.items()))


# -- report ---------------------------------------------------------------------------------


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def markdown(result: dict) -> str:
    pos = result["positive"]
    lines = [
        "# Real-imagery evaluation",
        "",
        f"`{result['command']}`",
        "",
        f"Trained on {', '.join(result['train_sources'])} (pretrain {result['epochs']['pretrain']} epochs, "
        f"fine-tune {result['epochs']['finetune']} epochs); held out, never trained on: "
        f"{', '.join(result['heldout_sources']) or 'none'}. {result['date']}, {result['machine']}, "
        f"wall time {result['wall_s']:.0f} s.",
        "",
        f"| evaluated on | tubelets | {pos}s | {pos}-vs-rest accuracy | {pos} recall / precision | 4-class accuracy | macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [(f"{s} test split", result["train_test"][s]) for s in result["train_test"] if s != "all"]
    rows.append(("whole test split (train sources)", result["train_test"]["all"]))
    for name, res in result["heldout"].items():
        rows.append((f"{name}, all tubelets (held out)", res["all"]))
    for name, s in rows:
        lines.append(
            f"| {name} | {s['n']} | {s[f'n_{pos}']} | {_f(s[f'{pos}_vs_rest_accuracy'])} | "
            f"{_f(s[f'{pos}_recall'])} / {_f(s[f'{pos}_precision'])} | {_f(s['accuracy'])} | {_f(s['macro_f1'])} |"
        )
    lines += [
        "",
        "Test tubelets cut from a clip (for still images: an image) that also gave train tubelets "
        "(splits are by track, not by clip): "
        + ", ".join(f"{k} {v['clip_also_in_train']} of {v['n']}" for k, v in result["test_clip_overlap"].items()),
    ]
    lines += ["", "Step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()), ""]
    lines += [
        "Prepared data: "
        + ", ".join(f"{k}: {v['n_tubelets']} tubelets {v['by_source']}" for k, v in result["prepared"].items()),
        "",
    ]
    return "\n".join(lines)


# -- the run --------------------------------------------------------------------------------


def run(
    params_path: Path, raw_synthetic: Path, work: Path, out: Path, calibration_dir: Path, command: str = ""
) -> dict:
    """Ingest, prepare, pretrain, fine-tune and evaluate; write OUT/real_eval.{json,md}; return the result."""
    from components import finetune, ingest, prepare, pretrain
    from thermops.data.extract import PrepareParams
    from thermops.data.prepared import load_prepared
    from thermops.io import write_json
    from thermops.learn.datasets import SplitParams
    from thermops.model.card import load_model_dir
    from thermops.model.network import ModelConfig
    from thermops.model.preprocess import InputSpec

    t_start = time.perf_counter()
    params = load_params(params_path)
    cfg = section_from_mapping(RealEvalParams, params.get("real_eval", {}), "real_eval")
    classes = params.get("classes")
    if not isinstance(classes, list) or cfg.positive not in classes:
        raise ParamsError(f"real_eval.positive: {cfg.positive!r} is not one of the classes {classes}")
    seed = int(params.get("seed", 0))
    params_dir = params_path.resolve().parent
    work, out = work.resolve(), out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *a, **kw):
        t = time.perf_counter()
        print(f"eval_real: {name} ...", file=sys.stderr, flush=True)
        r = fn(*a, **kw)
        seconds[name] = round(time.perf_counter() - t, 1)
        print(f"eval_real: {name} done in {seconds[name]:.1f} s", file=sys.stderr, flush=True)
        return r

    # 1. raw data: the synthetic raw folder by symlink, the real sets through `ingest`
    raw = work / "raw"
    raw.mkdir(exist_ok=True)
    real = [s for s in cfg.train_sources + cfg.heldout_sources if s != SYNTHETIC]
    if SYNTHETIC in cfg.train_sources + cfg.heldout_sources:
        if not raw_synthetic.is_dir():
            raise FileNotFoundError(f"--raw-synthetic {raw_synthetic}: no such folder (run the synthesize stage)")
        link = raw / SYNTHETIC
        if link.is_symlink() or link.exists():
            if not link.is_symlink():
                raise ValueError(f"{link} exists and is not a symlink; use an empty --work folder")
            link.unlink()
        link.symlink_to(raw_synthetic.resolve(), target_is_directory=True)
    p_ingest = write_params(step_params(params, cfg, real, params_dir), work / "params_ingest.yaml")
    p_train = step_params(params, cfg, cfg.train_sources, params_dir)
    write_params(p_train, work / "params_train.yaml")
    p_held = step_params(params, cfg, cfg.heldout_sources, params_dir)
    write_params(p_held, work / "params_heldout.yaml")
    index = timed("ingest", ingest.run, p_ingest, raw / "imported", calibration_dir)

    # 2. prepared data: training sources and held-out sources separately
    prepared: dict[str, dict] = {}
    prep_cfg = section(p_train, "prepare", PrepareParams)
    prepared["train"] = timed(
        "prepare_train",
        prepare.run,
        prep_cfg,
        cfg.train_sources,
        classes,
        seed,
        raw,
        calibration_dir,
        work / "prepared" / "train",
    )
    if cfg.heldout_sources:
        prepared["heldout"] = timed(
            "prepare_heldout",
            prepare.run,
            section(p_held, "prepare", PrepareParams),
            cfg.heldout_sources,
            classes,
            seed,
            raw,
            calibration_dir,
            work / "prepared" / "heldout",
        )

    # 3. pretrain and fine-tune on the training data
    model_cfg = section(p_train, "model", ModelConfig)
    model_cfg.resolved_widths()
    spec = section(p_train, "input", InputSpec)
    pre_cfg = section(p_train, "pretrain", pretrain.PretrainParams)
    ft_cfg = section(p_train, "finetune", finetune.FinetuneParams)
    split = section(p_train, "split", SplitParams)
    pre = timed(
        "pretrain",
        pretrain.run,
        pre_cfg,
        model_cfg,
        spec,
        split,
        seed,
        work / "prepared" / "train",
        work / "unlabeled",  # read only when pretrain.unlabeled (real_eval.overrides switch it off)
        work / "pretrained",
        work / "metrics" / "pretrain.json",
        work / "metrics" / "pretrain_loss.csv",
        work / "checkpoints" / "pretrain",
    )
    used = {
        k: p_train[k]
        for k in ("seed", "classes", "data", "model", "input", "split", "pretrain", "finetune")
        if k in p_train
    }
    ft = timed(
        "finetune",
        finetune.run,
        ft_cfg,
        model_cfg,
        spec,
        split,
        classes,
        seed,
        work / "prepared" / "train",
        work / "pretrained",
        work / "finetuned",
        work / "metrics" / "finetune.json",
        work / "metrics" / "confusion.csv",
        work / "metrics" / "finetune_curve.csv",
        work / "figures",
        work / "checkpoints" / "finetune",
        params_used=used,
        compare=False,
    )

    # 4. evaluation of the fine-tuned model
    device = torch.device("cuda" if ft_cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    model, card = load_model_dir(work / "finetuned")
    model.to(device)
    t = time.perf_counter()
    train_test = evaluate_prepared(model, card, work / "prepared" / "train", cfg.positive, "test", device)
    heldout = {}
    if cfg.heldout_sources:
        per = evaluate_prepared(model, card, work / "prepared" / "heldout", cfg.positive, None, device)
        held_rows = load_prepared(work / "prepared" / "heldout").rows
        heldout = {
            s: {
                "all": per[s],
                "by_split": dict(sorted(Counter(r["split"] for r in held_rows if r["source"] == s).items())),
            }
            for s in per
            if s != "all"
        }
        missing = sorted(set(cfg.heldout_sources) - set(heldout))
        if missing:
            raise ValueError(f"held-out sources {missing} gave no tubelets")
    seconds["evaluate"] = round(time.perf_counter() - t, 1)
    wall = time.perf_counter() - t_start
    result = {
        "command": command,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__} on {device}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end",
        "git_revision": card.get("git_revision"),
        "seed": seed,
        "positive": cfg.positive,
        "classes": classes,
        "train_sources": cfg.train_sources,
        "heldout_sources": cfg.heldout_sources,
        "overrides": cfg.overrides,
        "epochs": {"pretrain": pre["epochs"], "finetune": ft["epochs"]},
        "ingest": {
            s: {k: v.get(k) for k in ("clips", "frames", "boxes", "boxes_per_class")}
            for s, v in index["sources"].items()
        },
        "prepared": {
            k: {kk: v[kk] for kk in ("n_tubelets", "by_split", "by_source", "by_label", "data_hash")}
            for k, v in prepared.items()
        },
        "pretrain": {k: pre[k] for k in ("first_loss", "final_loss", "n_tubelets", "seconds")},
        "finetune": {
            k: ft[k] for k in ("accuracy", "macro_f1", "val_accuracy", "val_macro_f1", "best_epoch", "seconds")
        },
        "train_test": train_test,
        "test_clip_overlap": clip_overlap(work / "prepared" / "train"),
        "heldout": heldout,
        "seconds": seconds,
        "wall_s": round(wall, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "real_eval.json", result)
    (out / "real_eval.md").write_text(markdown(result))
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--raw-synthetic", type=Path, default=Path("data/raw/synthetic"))
    ap.add_argument("--calibration", type=Path, default=Path("data/calibration"))
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (raw links, prepared data, models)")
    ap.add_argument("--out", type=Path, default=Path("reports/real_eval"))
    args = ap.parse_args(argv)
    command = "python scripts/eval_real.py " + " ".join(sys.argv[1:] if argv is None else argv)
    from thermops.data.prepared import PreparedDataError

    try:
        r = run(args.params, args.raw_synthetic, args.work, args.out, args.calibration, command)
    except (ParamsError, PreparedDataError, ValueError, FileNotFoundError, KeyError, FloatingPointError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {text}", file=sys.stderr)
        raise SystemExit(1) from None
    print(markdown(r))
    print(f"wrote {args.out / 'real_eval.json'} and {args.out / 'real_eval.md'}")


if __name__ == "__main__":
    main()
