"""Step `pretrain`: self-supervised pretraining of the tubelet encoder on unlabeled tubelets.

Reads the prepared rows that train under the `split` params (the label column is
never read) and, with `pretrain.unlabeled`, every tubelet of the `unlabeled` step's
folder; pretrains with `pretrain.method` (`simclr`: contrastive, two views per
tubelet; `mtm`: masked tube modelling, one tube-masked view) and writes
`models/pretrained/` (encoder.pt: the encoder's state dict; card.json: architecture,
input contract, method, data lineage), the loss curve `metrics/pretrain_loss.csv` (a DVC plot) and
`metrics/pretrain.json`, and a checkpoint after every epoch
(`checkpoints/pretrain/last.pt`) that a re-run resumes.

When the `warmstart` step planned a warm retrain (`--warmstart` holds a warm plan.json
and the production model), nothing is trained: the production model's encoder is written
as the encoder, its card saying where it came from (`reused_from`).

    python -m components.pretrain --params params.yaml --data data/prepared --unlabeled data/unlabeled \
        --out models/pretrained --metrics metrics/pretrain.json \
        --curve metrics/pretrain_loss.csv --checkpoints checkpoints/pretrain --warmstart models/warmstart

Under torchrun (`torchrun --nproc_per_node=2 -m components.pretrain ...`) it trains
with DDP; rank 0 writes the outputs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from components._cli import parser, run_cli
from thermops.config import load_params, section, seed_everything, seed_of
from thermops.io import atomic_dir, write_csv, write_json, write_timings
from thermops.learn.augment import AugmentConfig
from thermops.learn.datasets import SplitParams, load_unlabeled
from thermops.learn.distributed import barrier, is_main, setup_distributed, unwrap
from thermops.learn.engine import OptimConfig, fit, run_fingerprint
from thermops.learn.ssl import MaskedTubeModel, MTMConfig, SimCLR, SimCLRConfig, mtm_loss, simclr_loss
from thermops.learn.warmstart import read_plan
from thermops.model.card import PRETRAINED_FORMAT, load_card
from thermops.model.network import ModelConfig, TubeletEncoder
from thermops.model.preprocess import InputSpec

METHODS = ("simclr", "mtm")


@dataclass(frozen=True)
class PretrainParams:
    """params `pretrain`."""

    method: str
    unlabeled: bool
    optim: OptimConfig
    augment: AugmentConfig
    simclr: SimCLRConfig
    mtm: MTMConfig
    device: str
    resume: bool

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"pretrain.method {self.method!r} is not one of {list(METHODS)}")

    def method_config(self) -> dict:
        """What the method depends on (the card's record and part of the checkpoint identity)."""
        return {
            "method": self.method,
            "augment": asdict(self.augment),
            self.method: asdict(self.simclr if self.method == "simclr" else self.mtm),
        }


def build(cfg: PretrainParams, encoder: TubeletEncoder):
    """The pretraining module around `encoder` and its loss function."""
    if cfg.method == "simclr":
        return SimCLR(encoder, cfg.simclr), simclr_loss(cfg.simclr, cfg.augment)
    return MaskedTubeModel(encoder, cfg.mtm), mtm_loss(cfg.mtm, cfg.augment)


def run(
    cfg: PretrainParams,
    model_cfg: ModelConfig,
    spec: InputSpec,
    split: SplitParams,
    seed: int,
    data: Path,
    unlabeled: Path,
    out: Path,
    metrics: Path,
    curve: Path,
    checkpoints: Path | None = None,
    stop_after: int | None = None,
    warmstart: Path | None = None,
) -> dict:
    """Pretrain the encoder and write its directory, metrics and loss curve.

    Args:
        cfg: the `pretrain` params; model_cfg / spec / split: the `model`, `input` and `split` params.
        data: a prepared-data folder; unlabeled: the `unlabeled` step's folder (read when
            `cfg.unlabeled`); out: the pretrained-encoder folder to write.
        metrics / curve: JSON summary and per-epoch loss CSV.
        checkpoints: folder for `last.pt` (None: no checkpoints, no resume).
        stop_after: stop after this many epochs without writing outputs (tests of resume).
        warmstart: the `warmstart` step's folder (None: always pretrain); a warm plan reuses the
            production model's encoder.
    Returns:
        The metrics dict.
    """
    t0 = time.perf_counter()
    plan = read_plan(warmstart) if warmstart is not None else {"mode": "full"}
    if plan["mode"] == "warm":
        return reuse_production_encoder(cfg, model_cfg, spec, seed, plan, warmstart, out, metrics, curve, t0)
    seed_everything(seed)
    device = setup_distributed(cfg.device)
    dataset, info = load_unlabeled(data, spec, split, unlabeled if cfg.unlabeled else None)
    model, loss_fn = build(cfg, TubeletEncoder(model_cfg))
    fp = run_fingerprint(
        cfg.method_config(),
        model_cfg.to_dict(),
        spec.to_dict(),
        info["prepared_hash"],
        info.get("unlabeled_hash"),
        seed,
    )
    log = (lambda s: print(s, file=sys.stderr)) if is_main() else None
    result = fit(
        model,
        loss_fn,
        dataset,
        cfg.optim,
        seed=seed,
        device=device,
        ckpt_dir=checkpoints,
        resume=cfg.resume,
        fingerprint=fp,
        stop_after=stop_after,
        desc="pretrain",
        log=log,
    )
    summary = {
        "method": cfg.method,
        "epochs": len(result.history),
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "first_loss": result.history[0]["loss"] if result.history else None,
        "n_tubelets": info["n"],
        "n_unlabeled": info.get("n_unlabeled", 0),
        "resumed_from_epoch": result.resumed_from,
    }
    seconds = round(time.perf_counter() - t0, 2)
    if stop_after is not None or not is_main():
        barrier()
        return {**summary, "seconds": seconds}
    with atomic_dir(out) as tmp:
        state = {k: v.detach().cpu() for k, v in unwrap(model).encoder.state_dict().items()}
        torch.save(state, tmp / "encoder.pt")
        write_json(
            tmp / "card.json",
            {
                "format": PRETRAINED_FORMAT,
                "method": cfg.method,
                "model": model_cfg.to_dict(),
                "input": spec.to_dict(),
                "pretraining": cfg.method_config(),
                "optim": asdict(cfg.optim),
                "seed": seed,
                "data": {
                    "prepared_hash": info["prepared_hash"],
                    "unlabeled_hash": info.get("unlabeled_hash"),
                    "sources": info["sources"],
                    "n_labelled_pool": info["n_labelled_pool"],
                    "n_unlabeled": info.get("n_unlabeled", 0),
                    "n_train": info["n"],
                    "split": asdict(split),
                },
                "metrics": {k: summary[k] for k in ("final_loss", "first_loss", "epochs")},
            },
        )
    write_csv(
        curve,
        [{"epoch": r["epoch"], "loss": r["loss"], "lr": r["lr"]} for r in result.history],
        ["epoch", "loss", "lr"],
    )
    write_json(metrics, summary)
    write_timings("pretrain", {"seconds": seconds, "epochs_run": len(result.history) - result.resumed_from})
    barrier()
    return {**summary, "seconds": seconds}


def reuse_production_encoder(
    cfg: PretrainParams,
    model_cfg: ModelConfig,
    spec: InputSpec,
    seed: int,
    plan: dict,
    warmstart: Path,
    out: Path,
    metrics: Path,
    curve: Path,
    t0: float,
) -> dict:
    """A warm retrain's encoder: the production model's (`plan` and the model in `warmstart`), unchanged."""
    prod = load_card(warmstart)
    if prod["model"] != model_cfg.to_dict() or prod["input"] != spec.to_dict():
        raise ValueError(f"{warmstart}: the production model's architecture or input differs from params")
    state = torch.load(Path(warmstart) / "model.pt", map_location="cpu", weights_only=True)
    encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    TubeletEncoder(model_cfg).load_state_dict(encoder)  # strict: the keys are exactly an encoder's
    before = prod.get("pretrained") or {}
    summary = {
        "method": "reused",
        "epochs": 0,
        "final_loss": None,
        "first_loss": None,
        "n_tubelets": 0,
        "n_unlabeled": 0,
        "resumed_from_epoch": 0,
        "reused_from": plan["production"]["version"],
    }
    with atomic_dir(out) as tmp:
        torch.save(encoder, tmp / "encoder.pt")
        write_json(
            tmp / "card.json",
            {
                "format": PRETRAINED_FORMAT,
                "method": before.get("method", cfg.method),
                "model": model_cfg.to_dict(),
                "input": spec.to_dict(),
                "pretraining": cfg.method_config(),
                "seed": seed,
                "reused_from": {**plan["production"], "moved_cameras": plan["moved_cameras"]},
                "data": before.get("data"),
                "metrics": before.get("metrics"),
            },
        )
    write_csv(curve, [], ["epoch", "loss", "lr"])
    write_json(metrics, summary)
    seconds = round(time.perf_counter() - t0, 2)
    write_timings("pretrain", {"seconds": seconds, "epochs_run": 0})
    return {**summary, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; knobs come from params.yaml."""
    args = parser(
        __doc__,
        ("--data", "data/prepared"),
        ("--unlabeled", "data/unlabeled"),
        ("--out", "models/pretrained"),
        ("--metrics", "metrics/pretrain.json"),
        ("--curve", "metrics/pretrain_loss.csv"),
        ("--checkpoints", "checkpoints/pretrain"),
        ("--warmstart", "models/warmstart (the warmstart step's plan)"),
    ).parse_args(argv)

    def go() -> str:
        params = load_params(args.params)
        s = run(
            section(params, "pretrain", PretrainParams),
            section(params, "model", ModelConfig),
            section(params, "input", InputSpec),
            section(params, "split", SplitParams),
            seed_of(params),
            args.data,
            args.unlabeled,
            args.out,
            args.metrics,
            args.curve,
            args.checkpoints,
            warmstart=args.warmstart,
        )
        if s["method"] == "reused":
            return f"pretrain: warm retrain, the encoder of production version {s['reused_from']} reused (no epoch)"
        return f"pretrain ({s['method']}, {s['n_tubelets']} tubelets): {s['epochs']} epochs, loss {s['first_loss']} -> {s['final_loss']} in {s['seconds']} s"

    run_cli(go)


if __name__ == "__main__":
    main()
