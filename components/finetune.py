"""Step `finetune`: supervised fine-tuning of the pretrained encoder, and the proof that pretraining helps.

Loads the pretrained encoder into a `TubeletClassifier` (reporting missing and
unexpected keys), trains on the train split, selects the epoch on val macro-F1 and
reports on test. Beside it, with the same seeds and test split:

- linear probe (logistic regression on frozen embeddings) of the pretrained vs a
  randomly initialized encoder;
- fine-tuning on a class-stratified `low_label.fraction` (10%) of the train labels,
  from the pretrained encoder vs from scratch.

Writes `models/finetuned/` (model.pt + card.json through `thermops.model.card`),
`metrics/finetune.json` (the decision figures, `DECISION`), `metrics/confusion.csv` (DVC
confusion plot), `metrics/finetune_curve.csv`, `reports/finetune/` (the full record
`finetune.json`: per class, per seed, encoder keys; PNG figures), and per-epoch
checkpoints in `checkpoints/finetune/`.

A warm retrain (the `warmstart` step's plan, `--warmstart`): the production classifier is
fine-tuned on the new data for `retrain.epochs` at `retrain.lr_scale` times the learning
rate; the linear-probe and few-label comparisons are not re-run (they measure the encoder,
which is production's) and their figures are carried from the production card. The card
records the plan (`warm_start`) and, always, the training code it was made with
(`training_code`) and the params sections a later plan compares (`params`).

    python -m components.finetune --params params.yaml --data data/prepared \
        --pretrained models/pretrained --out models/finetuned --warmstart models/warmstart
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from components._cli import parser, run_cli
from thermops.config import classes_of, load_params, section, seed_everything, seed_of
from thermops.io import atomic_dir, write_csv, write_json, write_timings
from thermops.learn.adversarial import AdversarialConfig
from thermops.learn.augment import AugmentConfig
from thermops.learn.datasets import SplitParams, load_splits, stratified_fraction
from thermops.learn.distributed import barrier, is_main, setup_distributed, unwrap
from thermops.learn.engine import OptimConfig, classification_loss, evaluate, fit, run_fingerprint
from thermops.learn.ssl import init_head_by_probe, linear_probe
from thermops.learn.warmstart import TRAINING_SECTIONS, code_record, read_plan
from thermops.model.card import (
    CODE_ROOT,
    load_model_dir,
    load_pretrained_encoder,
    loaded_code,
    make_card,
    save_model_dir,
)
from thermops.model.network import ModelConfig, TubeletClassifier
from thermops.model.preprocess import InputSpec

# What the comparisons measure (the pretrained encoder): a warm retrain carries them from production.
COMPARISONS = (
    "linear_probe_pretrained",
    "linear_probe_random",
    "few_label",
    "few_label_epochs",
    "few_label_macro_f1_pretrained",
    "few_label_macro_f1_scratch",
    "pretraining_gain_few_label",
    "pretraining_ranges_overlap",
)

# The figures a decision rests on: all that metrics/finetune.json (and `dvc metrics show`) holds.
DECISION = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "n",
    "val_macro_f1",
    "best_epoch",
    "linear_probe_pretrained",
    "linear_probe_random",
    "few_label_epochs",  # the fine-tuning budget the gain is measured at: scratch gains most from more
    "few_label_macro_f1_pretrained",
    "few_label_macro_f1_scratch",
    "pretraining_gain_few_label",
    "pretraining_ranges_overlap",
)


@dataclass(frozen=True)
class ProbeParams:
    """Linear-probe knobs: L2 weight and L-BFGS iterations."""

    weight_decay: float
    iters: int


@dataclass(frozen=True)
class LowLabelParams:
    """The few-label comparison: fraction of train labels, its optimization, its seeds."""

    fraction: float
    optim: OptimConfig
    seeds: list[int]
    select_on_val: bool  # pick the epoch on val (costs an evaluation per epoch) or keep the last
    # Each init with its standard small-batch recipe: a pretrained encoder keeps its BatchNorm statistics
    # frozen (batches of 16 from 28 labels give noisy ones); a random encoder has none to keep, so it trains them.
    pretrained_bn_eval: bool
    # LP-FT for the pretrained init (Kumar et al., ICLR 2022): its head starts from the linear probe of its
    # frozen features, so the first steps on few labels do not wreck them with a random head's gradients;
    # scratch has no features worth probing (a probe of a random encoder made it worse: docs/training.md).
    pretrained_probe_init: bool
    # The random encoder's own best learning-rate factor at 10% labels (0.3: +0.034 mean macro-F1 over
    # 1.0, ahead on all 5 seeds; docs/training.md), so that the gain is measured against scratch at its best.
    scratch_encoder_lr_scale: float


@dataclass(frozen=True)
class FinetuneParams:
    """params `finetune`."""

    optim: OptimConfig
    augment: AugmentConfig | None
    label_smoothing: float
    probe_init: bool  # LP-FT: start the head from the linear probe (pretrained and scratch alike)
    probe: ProbeParams
    low_label: LowLabelParams
    adversarial: AdversarialConfig
    device: str
    resume: bool


def _train_classifier(
    model,
    train,
    val,
    classes,
    optim,
    cfg: FinetuneParams,
    seed,
    device,
    *,
    adversarial=None,
    ckpt_dir=None,
    fp="",
    log=None,
    desc="finetune",
    stop_after=None,
    select_on_val=True,
    geometry=(),
    probe_init=None,
):
    """Fit (after an LP-FT head init when `probe_init`, default `cfg.probe_init`) with val macro-F1
    selection; returns the FitResult."""
    if cfg.probe_init if probe_init is None else probe_init:
        init_head_by_probe(
            model, train.inputs, train.labels, device, cfg.probe.weight_decay, cfg.probe.iters, geo=train.geo
        )
    loss = classification_loss(cfg.augment, cfg.label_smoothing, adversarial, geometry)
    select = (lambda m: evaluate(m, val, classes, device)[0]["macro_f1"]) if select_on_val else None  # noqa: E731
    return fit(
        model,
        loss,
        train,
        optim,
        seed=seed,
        device=device,
        ckpt_dir=ckpt_dir,
        resume=cfg.resume,
        fingerprint=fp,
        select=select,
        desc=desc,
        log=log,
        stop_after=stop_after,
    )


def initializer(model_cfg: ModelConfig, num_classes: int, geo_dim: int, enc_state: dict):
    """fresh(pretrained_init, seed) -> (classifier, missing keys, unexpected keys): a new classifier seeded
    with `seed`, its encoder loaded from `enc_state` when `pretrained_init`."""

    def fresh(pretrained_init: bool, init_seed: int) -> tuple[TubeletClassifier, list[str], list[str]]:
        torch.manual_seed(init_seed)
        m = TubeletClassifier(model_cfg, num_classes, geo_dim=geo_dim)
        if not pretrained_init:
            return m, [], []
        missing, unexpected = m.encoder.load_state_dict(enc_state, strict=False)
        return m, list(missing), list(unexpected)

    return fresh


def few_label_comparison(
    cfg: FinetuneParams, splits, classes, seed, device, fresh, log=None, arms=("pretrained", "scratch"), geometry=()
) -> dict:
    """Fine-tuning on a class-stratified `low_label.fraction` of the train labels, from the pretrained
    encoder and from scratch, once per `low_label.seeds` (same labelled subset and seed for both inits);
    test macro-F1 and accuracy per seed, their mean, min and max, and the gain of the means.
    `arms` limits the runs to one init (experiments that share the scratch arm)."""
    log = log or (lambda s: None)
    tr, te = splits.train, splits.test
    low: dict[str, dict[str, list[float]]] = {k: {"macro_f1": [], "accuracy": []} for k in arms}
    # LP-FT per arm: `probe_init` starts both heads from a probe; `pretrained_probe_init` the pretrained one only
    lp_ft = {"pretrained": cfg.probe_init or cfg.low_label.pretrained_probe_init, "scratch": cfg.probe_init}
    for s in cfg.low_label.seeds:
        sub = tr.subset(stratified_fraction(tr.labels, cfg.low_label.fraction, seed + s))
        for name, init in ((a, a == "pretrained") for a in arms):
            m, _, _ = fresh(init, seed + s)
            optim = cfg.low_label.optim
            if init and cfg.low_label.pretrained_bn_eval:
                optim = replace(optim, bn_eval=True)
            if not init:
                optim = replace(optim, encoder_lr_scale=cfg.low_label.scratch_encoder_lr_scale)
            _train_classifier(
                m,
                sub,
                splits.val,
                classes,
                optim,
                cfg,
                seed + s,
                device,
                desc=f"few-label-{name}",
                select_on_val=cfg.low_label.select_on_val,
                geometry=geometry,
                probe_init=lp_ft[name],
            )
            r = evaluate(m, te, classes, device)[0]
            low[name]["macro_f1"].append(r["macro_f1"])
            low[name]["accuracy"].append(r["accuracy"])
    n_low = len(stratified_fraction(tr.labels, cfg.low_label.fraction, seed + cfg.low_label.seeds[0]))

    def stats(v: list[float]) -> dict:
        return {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "per_seed": v}

    out = {
        "few_label": {
            "fraction": cfg.low_label.fraction,
            "n_labels": n_low,
            "epochs": cfg.low_label.optim.epochs,
            "pretrained_probe_init": lp_ft["pretrained"],
            "seeds": list(cfg.low_label.seeds),
            **{name: {metric: stats(v) for metric, v in low[name].items()} for name in arms},
        }
    }
    if set(arms) != {"pretrained", "scratch"}:
        return out
    fp, fs = out["few_label"]["pretrained"]["macro_f1"], out["few_label"]["scratch"]["macro_f1"]
    out["few_label_epochs"] = cfg.low_label.optim.epochs
    out["few_label_macro_f1_pretrained"] = fp["mean"]
    out["few_label_macro_f1_scratch"] = fs["mean"]
    out["pretraining_gain_few_label"] = fp["mean"] - fs["mean"]
    out["pretraining_ranges_overlap"] = not (fp["min"] > fs["max"] or fs["min"] > fp["max"])
    log(
        f"{cfg.low_label.fraction:.0%} labels ({n_low}), {cfg.low_label.optim.epochs} epochs: macro-F1 pretrained {fp['mean']:.3f} "
        f"({fp['min']:.3f}-{fp['max']:.3f}), scratch {fs['mean']:.3f} ({fs['min']:.3f}-{fs['max']:.3f})"
    )
    return out


def run(
    cfg: FinetuneParams,
    model_cfg: ModelConfig,
    spec: InputSpec,
    split: SplitParams,
    classes: list[str],
    seed: int,
    data: Path,
    pretrained: Path,
    out: Path,
    metrics: Path,
    confusion: Path,
    curve: Path,
    figures: Path,
    checkpoints: Path | None = None,
    params_used: dict | None = None,
    compare: bool = True,
    warmstart: Path | None = None,
) -> dict:
    """Fine-tune, compare with the baselines, and write the model dir, metrics, plots and figures.

    Args:
        cfg: the `finetune` params; model_cfg / spec / split / classes: `model`, `input`, `split`, `classes`.
        data: prepared-data folder; pretrained: the `pretrain` step's folder.
        out: model directory to write (thermops.model.card format).
        metrics / confusion / curve: metrics JSON, confusion CSV (actual,predicted), per-epoch CSV.
        figures: folder for the PNGs.
        checkpoints: folder for the main run's `last.pt` (None: none).
        params_used: the params sections recorded in the card.
        compare: run the linear-probe and few-label comparisons.
        warmstart: the `warmstart` step's folder (None: a full run); a warm plan continues from
            the production model there and carries its comparison figures.
    Returns:
        The metrics dict.
    """
    t0 = time.perf_counter()
    seed_everything(seed)
    device = setup_distributed(cfg.device)
    log = (lambda s: print(s, file=sys.stderr)) if is_main() else (lambda s: None)
    splits = load_splits(data, classes, spec, split)
    enc_state, pre_card = load_pretrained_encoder(pretrained)
    if pre_card["model"] != model_cfg.to_dict():
        raise ValueError(
            f"{pretrained}: pretrained model {pre_card['model']} differs from params model {model_cfg.to_dict()}"
        )

    fresh = initializer(model_cfg, len(classes), len(spec.geometry), enc_state)
    plan = read_plan(warmstart) if warmstart is not None else {"mode": "full"}
    warm = plan["mode"] == "warm"

    out_metrics: dict = {}
    if warm:
        compare = False
        prod_model, prod_card = load_model_dir(warmstart)
        if prod_card["classes"] != list(classes) or prod_card["input"] != spec.to_dict():
            raise ValueError(f"{warmstart}: the production model's classes or input differ from params")
        carried = {k: prod_card["metrics"][k] for k in COMPARISONS if k in prod_card.get("metrics", {})}
        out_metrics.update(carried)
        out_metrics["comparisons_from"] = f"production version {plan['production']['version']} (encoder reused)"
        log(
            f"warm retrain from production version {plan['production']['version']}: "
            f"{', '.join(plan['moved_cameras'])} moved ({plan['moved_fraction']:.0%} of train+val tubelets)"
        )
    if compare:
        tr, te = splits.train, splits.test
        probe = {}
        for name, init in (("pretrained", True), ("random", False)):
            m, _, _ = fresh(init, seed)
            probe[name] = linear_probe(
                m.encoder,
                tr.inputs,
                tr.labels,
                te.inputs,
                te.labels,
                len(classes),
                device,
                cfg.probe.weight_decay,
                cfg.probe.iters,
            )
        out_metrics["linear_probe_pretrained"], out_metrics["linear_probe_random"] = (
            probe["pretrained"],
            probe["random"],
        )
        log(f"linear probe: pretrained {probe['pretrained']:.3f} random {probe['random']:.3f}")
        out_metrics.update(few_label_comparison(cfg, splits, classes, seed, device, fresh, log, geometry=spec.geometry))

    optim = cfg.optim
    if warm:
        model, missing, unexpected = prod_model, [], []
        optim = replace(optim, epochs=plan["epochs"], lr=optim.lr * plan["lr_scale"], warmup_epochs=0)
        log(f"continuing from the production classifier: {optim.epochs} epochs at lr {optim.lr:g}")
    else:
        model, missing, unexpected = fresh(True, seed)
        log(f"loaded pretrained encoder: missing keys {missing}, unexpected keys {unexpected}")
    fp = run_fingerprint(
        asdict(cfg),
        model_cfg.to_dict(),
        spec.to_dict(),
        classes,
        splits.data_info["prepared_hash"],
        pre_card.get("metrics"),
        seed,
        plan,
    )
    result = _train_classifier(
        model,
        splits.train,
        splits.val,
        classes,
        optim,
        cfg,
        seed,
        device,
        adversarial=cfg.adversarial,
        geometry=spec.geometry,
        ckpt_dir=checkpoints,
        fp=fp,
        log=log,
    )
    test_m, cm = evaluate(model, splits.test, classes, device)
    val_m, _ = evaluate(model, splits.val, classes, device)
    out_metrics.update(test_m)
    out_metrics.update(
        {
            "val_accuracy": val_m["accuracy"],
            "val_macro_f1": val_m["macro_f1"],
            "best_epoch": result.best_epoch,
            "epochs": len(result.history),
            "resumed_from_epoch": result.resumed_from,
            "encoder_missing_keys": missing,
            "encoder_unexpected_keys": unexpected,
            "adversarial_training": cfg.adversarial.enabled,
        }
    )
    seconds = round(time.perf_counter() - t0, 2)
    log(f"test accuracy {test_m['accuracy']:.3f} macro-F1 {test_m['macro_f1']:.3f} (best epoch {result.best_epoch})")
    if not is_main():
        barrier()
        return {**out_metrics, "seconds": seconds}
    card = make_card(
        classes=classes,
        model_cfg=model_cfg,
        input_spec=spec,
        calibrations=splits.calibrations,
        data={
            k: splits.data_info[k]
            for k in ("prepared_hash", "sources", "units", "n", "n_per_label", "split", "split_params", "per_camera")
            if k in splits.data_info
        },
        metrics={k: v for k, v in out_metrics.items() if k not in ("encoder_missing_keys", "encoder_unexpected_keys")},
        params=params_used or {},
        adversarial_training=cfg.adversarial.enabled,
        pretrained=prod_card["pretrained"]
        if warm
        else {
            "method": pre_card.get("method"),
            "data": pre_card.get("data"),
            "metrics": pre_card.get("metrics"),
            "missing_keys": missing,
            "unexpected_keys": unexpected,
        },
        confusion_matrix=cm.to_dict(),
        warm_start={k: v for k, v in plan.items() if k != "mode"} if warm else None,
        training_code=code_record(loaded_code(CODE_ROOT), CODE_ROOT),
    )
    with atomic_dir(out) as tmp:
        save_model_dir(tmp, unwrap(model), card)
    write_json(metrics, {k: out_metrics[k] for k in DECISION if k in out_metrics})
    write_csv(confusion, cm.dvc_rows(), ["actual", "predicted"])
    write_csv(
        curve,
        [{"epoch": r["epoch"], "loss": r["loss"], "val_macro_f1": r.get("score")} for r in result.history],
        ["epoch", "loss", "val_macro_f1"],
    )
    write_timings("finetune", {"seconds": seconds})  # wall clock: never in metrics, the card or a DVC output
    with atomic_dir(figures) as tmp:
        write_json(tmp / "finetune.json", out_metrics)  # the full record
        try:
            from thermops.learn.metrics import plot_confusion, plot_curves

            plot_confusion(cm, tmp / "confusion.png")
            plot_curves(
                {
                    "train loss": [r["loss"] for r in result.history],
                    "val macro-F1": [r["score"] for r in result.history],
                },
                tmp / "curves.png",
                ylabel="",
                title="fine-tuning",
            )
        except ImportError as err:  # a bare GPU node without matplotlib still trains; the figures are extras
            log(f"no PNG figures: {err}")
    barrier()
    return {**out_metrics, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; knobs come from params.yaml."""
    args = parser(
        __doc__,
        ("--data", "data/prepared"),
        ("--pretrained", "models/pretrained"),
        ("--out", "models/finetuned"),
        ("--metrics", "metrics/finetune.json"),
        ("--confusion", "metrics/confusion.csv"),
        ("--curve", "metrics/finetune_curve.csv"),
        ("--figures", "reports/finetune"),
        ("--checkpoints", "checkpoints/finetune"),
        ("--warmstart", "models/warmstart (the warmstart step's plan)"),
    ).parse_args(argv)

    def go() -> str:
        params = load_params(args.params)
        used = {k: params[k] for k in TRAINING_SECTIONS if k in params}
        m = run(
            section(params, "finetune", FinetuneParams),
            section(params, "model", ModelConfig),
            section(params, "input", InputSpec),
            section(params, "split", SplitParams),
            classes_of(params),
            seed_of(params),
            args.data,
            args.pretrained,
            args.out,
            args.metrics,
            args.confusion,
            args.curve,
            args.figures,
            args.checkpoints,
            params_used=used,
            warmstart=args.warmstart,
        )
        return f"finetune: test accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} in {m['seconds']} s"

    run_cli(go)


if __name__ == "__main__":
    main()
