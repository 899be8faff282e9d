"""Self-supervision that pays: pretraining variants x few-label fine-tuning, seeds and spreads.

    python scripts/experiments/pretraining.py --params params.yaml --data data/prepared \
        --unlabeled data/unlabeled --work /tmp/thermops_pretraining \
        --out reports/experiments/pretraining.json \
        --variants simclr:unlabeled:8 mtm:unlabeled:16 simclr:labelled:8

A variant is METHOD:DATA:EPOCHS: the pretraining method (`simclr` | `mtm`), the
pretraining data (`unlabeled`: the train rows of the prepared data plus every
tubelet of --unlabeled; `labelled`: the train rows alone) and the epochs. Every other
knob comes from params.yaml (`pretrain`, `finetune`, `model`, `input`, `split`).
For each variant the script pretrains with `components.pretrain.run` (into --work,
resumable), counts the pretraining compute (FLOPs of one step per tubelet with
`torch.utils.flop_counter`, times tubelets and epochs) and measures
- the linear probe of the frozen encoder on the train labels (test accuracy), and
- `components.finetune.few_label_comparison`: fine-tuning on `finetune.low_label.fraction`
  of the train labels from this encoder, once per `finetune.low_label.seeds`, test
  macro-F1 per seed;
then the scratch arm once (same subsets, same seeds). A variant pays when its
minimum over seeds is above the scratch maximum. `--encoder-lr-scales 1.0 0.3` runs every
few-label arm at each encoder learning-rate factor, so that each init is judged at its best
recipe (a random encoder fine-tuned on 10% of the labels does better at 0.3 than at 1.0).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1].parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from components.finetune import FinetuneParams, few_label_comparison, initializer  # noqa: E402
from components.pretrain import PretrainParams, build  # noqa: E402
from components.pretrain import run as pretrain_run  # noqa: E402
from thermops.config import classes_of, load_params, section, seed_of  # noqa: E402
from thermops.learn.datasets import SplitParams, load_splits, load_unlabeled  # noqa: E402
from thermops.learn.distributed import setup_distributed  # noqa: E402
from thermops.learn.ssl import linear_probe  # noqa: E402
from thermops.model.card import load_pretrained_encoder  # noqa: E402
from thermops.model.network import ModelConfig, TubeletEncoder  # noqa: E402
from thermops.model.preprocess import InputSpec  # noqa: E402


def step_gflop_per_tubelet(cfg: PretrainParams, model_cfg: ModelConfig, spec: InputSpec, batch: int = 16) -> float:
    """FLOPs (forward + backward) of one pretraining step per tubelet."""
    model, loss_fn = build(cfg, TubeletEncoder(model_cfg))
    x = torch.randn(batch, 1, spec.frames, spec.size, spec.size)
    gen = torch.Generator().manual_seed(0)
    with FlopCounterMode(display=False) as fc:
        loss_fn(model, (x,), gen).backward()
    return fc.get_total_flops() / batch / 1e9


def parse_variant(v: str) -> tuple[str, str, int]:
    method, data, epochs = v.split(":")
    if method not in ("simclr", "mtm") or data not in ("unlabeled", "labelled"):
        raise SystemExit(f"error: variant {v!r}: expected simclr|mtm:unlabeled|labelled:EPOCHS")
    return method, data, int(epochs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="prepared data")
    ap.add_argument("--unlabeled", type=Path, required=True, help="the unlabeled step's folder")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--no-scratch", action="store_true", help="skip the scratch arm")
    ap.add_argument(
        "--encoder-lr-scales",
        nargs="+",
        type=float,
        help="run every few-label arm at each of these encoder learning-rate factors (default: the params' "
        "finetune.low_label.optim.encoder_lr_scale, and scratch_encoder_lr_scale for scratch)",
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    params = load_params(args.params)
    classes, seed = classes_of(params), seed_of(params)
    pre = section(params, "pretrain", PretrainParams)
    ft = section(params, "finetune", FinetuneParams)
    model_cfg = section(params, "model", ModelConfig)
    spec = section(params, "input", InputSpec)
    split = section(params, "split", SplitParams)
    device = setup_distributed(ft.device)  # where the probes and few-label runs train, as the finetune step
    splits = load_splits(args.data, classes, spec, split)

    def few_label(fresh, arm: str) -> dict:
        """{encoder LR factor: the arm's few-label figures} (same seeds and subsets): the params' factor of
        the arm (`low_label.optim.encoder_lr_scale`, or `scratch_encoder_lr_scale` for scratch), or each of
        --encoder-lr-scales."""
        own = ft.low_label.optim.encoder_lr_scale if arm == "pretrained" else ft.low_label.scratch_encoder_lr_scale
        out = {}
        for sc in args.encoder_lr_scales or [own]:
            low = dataclasses.replace(
                ft.low_label,
                optim=dataclasses.replace(ft.low_label.optim, encoder_lr_scale=sc),
                scratch_encoder_lr_scale=sc,
            )
            cfg = dataclasses.replace(ft, low_label=low)
            out[f"{sc:g}"] = few_label_comparison(cfg, splits, classes, seed, device, fresh, arms=(arm,))["few_label"][
                arm
            ]
        return out

    def probe_of(encoder: torch.nn.Module) -> float:
        """Linear-probe test accuracy of a frozen encoder on the train labels (finetune.probe knobs)."""
        return linear_probe(
            encoder,
            splits.train.inputs,
            splits.train.labels,
            splits.test.inputs,
            splits.test.labels,
            len(classes),
            device,
            ft.probe.weight_decay,
            ft.probe.iters,
        )

    results: dict = {
        "command": "python scripts/experiments/pretraining.py " + " ".join(argv or sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": model_cfg.to_dict(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "few_label": {"fraction": ft.low_label.fraction, "seeds": list(ft.low_label.seeds)},
        "variants": {},
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    for v in args.variants:
        method, data, epochs = parse_variant(v)
        cfg = dataclasses.replace(
            pre, method=method, unlabeled=data == "unlabeled", optim=dataclasses.replace(pre.optim, epochs=epochs)
        )
        work = args.work / v.replace(":", "_")
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        summary = pretrain_run(
            cfg,
            model_cfg,
            spec,
            split,
            seed,
            args.data,
            args.unlabeled,
            work / "pretrained",
            work / "pretrain.json",
            work / "pretrain_loss.csv",
            work / "checkpoints",
        )
        pre_seconds = time.perf_counter() - t0
        n = load_unlabeled(args.data, spec, split, args.unlabeled if cfg.unlabeled else None)[1]["n"]
        gflop = step_gflop_per_tubelet(cfg, model_cfg, spec)
        enc_state, _ = load_pretrained_encoder(work / "pretrained")
        fresh = initializer(model_cfg, len(classes), len(spec.geometry), enc_state)
        m, _, _ = fresh(True, seed)
        probe = probe_of(m.encoder)
        t1 = time.perf_counter()
        few = few_label(fresh, "pretrained")
        results["variants"][v] = {
            "method": method,
            "data": data,
            "epochs": epochs,
            "n_pretrain_tubelets": n,
            "gflop_per_tubelet_step": gflop,
            "pretrain_tflop": gflop * n * epochs / 1e3,
            "pretrain_seconds": round(pre_seconds, 1),
            "load_at_start": load0,
            "first_loss": summary["first_loss"],
            "final_loss": summary["final_loss"],
            "linear_probe_accuracy": probe,
            "few_label": few,
            "few_label_seconds": round(time.perf_counter() - t1, 1),
        }
        print(json.dumps({v: results["variants"][v]}), flush=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_scratch:
        fresh = initializer(model_cfg, len(classes), len(spec.geometry), {})
        m, _, _ = fresh(False, seed)
        probe = probe_of(m.encoder)
        results["scratch"] = {"linear_probe_accuracy_random_encoder": probe, "few_label": few_label(fresh, "scratch")}
        print(json.dumps({"scratch": results["scratch"]}), flush=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "| pretraining | tubelets | epochs | TFLOP | linear probe | encoder LR factor | few-label macro-F1 mean (min-max) |",
        "|---|---|---|---|---|---|---|",
    ]

    def f(d: dict) -> str:
        return f"{d['mean']:.3f} ({d['min']:.3f}-{d['max']:.3f})"

    for r in results["variants"].values():
        for sc, few in r["few_label"].items():
            lines.append(
                f"| {r['method']} on {r['data']} | {r['n_pretrain_tubelets']} | {r['epochs']} | "
                f"{r['pretrain_tflop']:.1f} | {r['linear_probe_accuracy']:.3f} | {sc} | {f(few['macro_f1'])} |"
            )
    if "scratch" in results:
        s = results["scratch"]
        for sc, few in s["few_label"].items():
            lines.append(
                f"| none (scratch) | - | - | - | {s['linear_probe_accuracy_random_encoder']:.3f} (random encoder) | "
                f"{sc} | {f(few['macro_f1'])} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
