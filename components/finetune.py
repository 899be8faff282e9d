"""Step `finetune`: supervised fine-tuning of the pretrained encoder, and the proof that pretraining helps.

Loads the pretrained encoder into a `TubeletClassifier` (reporting missing and
unexpected keys), trains on the train split, selects the epoch on val macro-F1 and
reports on test. Beside it, with the same seeds and test split:

- linear probe (logistic regression on frozen embeddings) of the pretrained vs a
  randomly initialized encoder;
- fine-tuning on a class-stratified `low_label.fraction` (10%) of the train labels,
  from the pretrained encoder vs from scratch.

Writes `models/finetuned/` (model.pt + card.json through `thermops.model.card`),
`metrics/finetune.json`, `metrics/confusion.csv` (DVC confusion plot),
`metrics/finetune_curve.csv`, PNG figures in `reports/finetune/`, and per-epoch
checkpoints in `checkpoints/finetune/`.

    python -m components.finetune --params params.yaml --data data/prepared \
        --pretrained models/pretrained --out models/finetuned
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from components._cli import parser, run_cli
from thermops.config import classes_of, load_params, section, seed_everything, seed_of
from thermops.io import atomic_dir, write_csv, write_json
from thermops.learn.adversarial import AdversarialConfig
from thermops.learn.augment import AugmentConfig
from thermops.learn.datasets import load_splits, stratified_fraction
from thermops.learn.distributed import barrier, is_main, setup_distributed, unwrap
from thermops.learn.engine import OptimConfig, classification_loss, evaluate, fit, run_fingerprint
from thermops.learn.ssl import init_head_by_probe, linear_probe
from thermops.model.card import load_pretrained_encoder, make_card, save_model_dir
from thermops.model.network import ModelConfig, TubeletClassifier
from thermops.model.preprocess import InputSpec


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
):
    """Fit (after an LP-FT head init when `probe_init`) with val macro-F1 selection; returns the FitResult."""
    if cfg.probe_init:
        init_head_by_probe(model, train.inputs, train.labels, device, cfg.probe.weight_decay, cfg.probe.iters)
    loss = classification_loss(cfg.augment, cfg.label_smoothing, adversarial)
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


def run(
    cfg: FinetuneParams,
    model_cfg: ModelConfig,
    spec: InputSpec,
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
) -> dict:
    """Fine-tune, compare with the baselines, and write the model dir, metrics, plots and figures.

    Args:
        cfg: the `finetune` params; model_cfg / spec / classes: `model`, `input`, `classes` params.
        data: prepared-data folder; pretrained: the `pretrain` step's folder.
        out: model directory to write (thermops.model.card format).
        metrics / confusion / curve: metrics JSON, confusion CSV (actual,predicted), per-epoch CSV.
        figures: folder for the PNGs.
        checkpoints: folder for the main run's `last.pt` (None: none).
        params_used: the params sections recorded in the card.
        compare: run the linear-probe and few-label comparisons.
    Returns:
        The metrics dict.
    """
    t0 = time.perf_counter()
    seed_everything(seed)
    device = setup_distributed(cfg.device)
    log = (lambda s: print(s, file=sys.stderr)) if is_main() else (lambda s: None)
    splits = load_splits(data, classes, spec)
    enc_state, pre_card = load_pretrained_encoder(pretrained)
    if pre_card["model"] != model_cfg.to_dict():
        raise ValueError(
            f"{pretrained}: pretrained model {pre_card['model']} differs from params model {model_cfg.to_dict()}"
        )

    def fresh(pretrained_init: bool, init_seed: int) -> tuple[TubeletClassifier, list[str], list[str]]:
        torch.manual_seed(init_seed)
        m = TubeletClassifier(model_cfg, len(classes))
        if not pretrained_init:
            return m, [], []
        missing, unexpected = m.encoder.load_state_dict(enc_state, strict=False)
        return m, list(missing), list(unexpected)

    out_metrics: dict = {}
    if compare:
        t1 = time.perf_counter()
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
        low: dict[str, list[float]] = {"pretrained": [], "scratch": []}
        for s in cfg.low_label.seeds:
            idx = stratified_fraction(tr.labels, cfg.low_label.fraction, seed + s)
            sub = tr.subset(idx)
            for name, init in (("pretrained", True), ("scratch", False)):
                m, _, _ = fresh(init, seed + s)
                optim = cfg.low_label.optim
                if init and cfg.low_label.pretrained_bn_eval:
                    optim = replace(optim, bn_eval=True)
                _train_classifier(
                    m,
                    sub,
                    splits.val,
                    classes,
                    optim,
                    cfg,
                    seed + s,
                    device,
                    desc=f"10pct-{name}",
                    select_on_val=cfg.low_label.select_on_val,
                )
                low[name].append(evaluate(m, te, classes, device)[0]["accuracy"])
        n_low = len(stratified_fraction(tr.labels, cfg.low_label.fraction, seed + cfg.low_label.seeds[0]))
        out_metrics.update(
            {
                "finetune_10pct_pretrained": sum(low["pretrained"]) / len(low["pretrained"]),
                "finetune_10pct_scratch": sum(low["scratch"]) / len(low["scratch"]),
                "finetune_10pct_per_seed": low,
                "finetune_10pct_n_labels": n_low,
                "comparison_seconds": round(time.perf_counter() - t1, 2),
            }
        )
        out_metrics["pretraining_gain_10pct"] = (
            out_metrics["finetune_10pct_pretrained"] - out_metrics["finetune_10pct_scratch"]
        )
        log(f"10% labels ({n_low}): pretrained {low['pretrained']} scratch {low['scratch']}")

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
    )
    result = _train_classifier(
        model,
        splits.train,
        splits.val,
        classes,
        cfg.optim,
        cfg,
        seed,
        device,
        adversarial=cfg.adversarial,
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
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )
    log(f"test accuracy {test_m['accuracy']:.3f} macro-F1 {test_m['macro_f1']:.3f} (best epoch {result.best_epoch})")
    if not is_main():
        barrier()
        return out_metrics
    card = make_card(
        classes=classes,
        model_cfg=model_cfg,
        input_spec=spec,
        calibrations=splits.calibrations,
        data={k: splits.data_info[k] for k in ("prepared_hash", "sources", "units", "n", "n_per_label")},
        metrics={k: v for k, v in out_metrics.items() if k not in ("encoder_missing_keys", "encoder_unexpected_keys")},
        params=params_used or {},
        adversarial_training=cfg.adversarial.enabled,
        pretrained={
            "method": pre_card.get("method"),
            "data": pre_card.get("data"),
            "metrics": pre_card.get("metrics"),
            "missing_keys": missing,
            "unexpected_keys": unexpected,
        },
        confusion_matrix=cm.to_dict(),
    )
    with atomic_dir(out) as tmp:
        save_model_dir(tmp, unwrap(model), card)
    write_json(metrics, out_metrics)
    write_csv(confusion, cm.dvc_rows(), ["actual", "predicted"])
    write_csv(
        curve,
        [{"epoch": r["epoch"], "loss": r["loss"], "val_macro_f1": r.get("score")} for r in result.history],
        ["epoch", "loss", "val_macro_f1"],
    )
    with atomic_dir(figures) as tmp:
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
    return out_metrics


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
    ).parse_args(argv)

    def go() -> str:
        params = load_params(args.params)
        used = {k: params[k] for k in ("seed", "classes", "model", "input", "pretrain", "finetune") if k in params}
        m = run(
            section(params, "finetune", FinetuneParams),
            section(params, "model", ModelConfig),
            section(params, "input", InputSpec),
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
        )
        return f"finetune: test accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} in {m['seconds']} s"

    run_cli(go)


if __name__ == "__main__":
    main()
