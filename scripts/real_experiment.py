"""One lean sim-to-real experiment outside the DVC graph: prepare, pretrain, fine-tune, evaluate.

    .venv/bin/python scripts/real_experiment.py --work /tmp/exp/E pretrain.optim.epochs=1 finetune.optim.epochs=20
    .venv/bin/python scripts/real_experiment.py --work /tmp/exp/F 'data.sources=[synthetic, hit-uav]' ...

Every `key=value` (dotted params key, YAML value) is merged over params.yaml for this run
only. The same step functions as the stages (`components.{ingest,prepare,pretrain,
finetune,heldout,evaluate}.run`), without the fine-tuning step's comparisons (linear
probes, few-label runs), on one torch thread (the box is shared). Reads the synthesize
stages' `data/raw/synthetic` (run `dvc repro prepare` first) and, when `--prepared`
and `--heldout` are given, those folders instead of cutting its own; pretrains on the
`unlabeled` step's `data/unlabeled` too when params `pretrain.unlabeled` is true (or on
`--unlabeled`; run `dvc repro unlabeled` first); writes only under
`--work`: params.yaml, raw/ (links and imports), prepared/, heldout/, pretrained/,
finetuned/, real_eval.json, report/, and one summary line appended to
`--work`/../RESULTS.txt. Seeds come from params `seed`, so a run is reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _overrides(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not _:
            raise SystemExit(f"error: {pair!r} is not key=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--prepared", type=Path, help="use this prepared folder instead of cutting one")
    ap.add_argument("--heldout", type=Path, help="use this heldout folder instead of cutting one")
    ap.add_argument("--unlabeled", type=Path, help="the unlabeled step's folder (default: data/unlabeled)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("set", nargs="*", help="dotted.key=value overrides of params.yaml")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    from components import evaluate, finetune, heldout, ingest, prepare, pretrain
    from thermops.config import classes_of, load_params, merge_params, section, seed_of
    from thermops.data.extract import PrepareParams
    from thermops.data.importers import IngestParams
    from thermops.evaluation.heldout import RealEvalParams
    from thermops.learn.datasets import SplitParams
    from thermops.model.network import ModelConfig
    from thermops.model.preprocess import InputSpec

    over = _overrides(args.set)
    params = merge_params(load_params(ROOT / "params.yaml"), over)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for spec in params["ingest"]["sources"].values():  # real roots relative to the checkout
        if not Path(spec["root"]).is_absolute():
            spec["root"] = str((ROOT / spec["root"]).resolve())
    params_path = work / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    classes, seed, sources = classes_of(params), seed_of(params), list(params["data"]["sources"])
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = args.prepared
    if prepared is None:
        raw = work / "raw"
        raw.mkdir(exist_ok=True)
        if "synthetic" in sources and not (raw / "synthetic").exists():
            (raw / "synthetic").symlink_to(ROOT / "data" / "raw" / "synthetic", target_is_directory=True)
        if any(s != "synthetic" for s in sources):
            ingest.run(params_path, raw / "imported", ROOT / "data" / "calibration")
        prepared = work / "prepared"
        prepare.run(section(params, "prepare", PrepareParams), sources, classes, seed, raw,
                    ROOT / "data" / "calibration", prepared)  # fmt: skip
    held = args.heldout
    if held is None:
        held = work / "heldout"
        heldout.run(section(params, "real_eval", RealEvalParams), section(params, "ingest", IngestParams),
                    section(params, "prepare", PrepareParams), classes, seed, ROOT / "data" / "calibration", held)  # fmt: skip
    seconds["data"] = time.perf_counter() - t0
    mc, spec = section(params, "model", ModelConfig), section(params, "input", InputSpec)
    split = section(params, "split", SplitParams)
    unlabeled = (args.unlabeled or ROOT / "data" / "unlabeled").resolve()
    pre = section(params, "pretrain", pretrain.PretrainParams)
    if pre.unlabeled and not (unlabeled / "manifest.csv").exists():
        raise SystemExit(
            f"error: {unlabeled}: no unlabeled tubelets (run `dvc repro unlabeled`, or pretrain.unlabeled=false)"
        )
    t = time.perf_counter()
    pretrain.run(pre, mc, spec, split, seed, prepared, unlabeled,
                 work / "pretrained", work / "pretrain.json", work / "pretrain_loss.csv", None)  # fmt: skip
    seconds["pretrain"] = time.perf_counter() - t
    t = time.perf_counter()
    used = {k: params[k] for k in ("seed", "classes", "model", "input", "split", "pretrain", "finetune")}
    ft = finetune.run(section(params, "finetune", finetune.FinetuneParams), mc, spec, split, classes, seed,
                      prepared, work / "pretrained", work / "finetuned", work / "finetune.json",
                      work / "confusion.csv", work / "curve.csv", work / "figures", None, params_used=used,
                      compare=False)  # fmt: skip
    seconds["finetune"] = time.perf_counter() - t
    m = evaluate.run(section(params, "real_eval", RealEvalParams), classes, work / "finetuned", prepared, held,
                     work / "real_eval.json", work / "report")  # fmt: skip
    line = [f"{work.name}: load {os.getloadavg()[0]:.1f}, " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
            f"  val macro-F1 {ft['val_macro_f1']:.3f}"]  # fmt: skip
    for s, v in m["sources"].items():
        if v["status"] == "scored":
            line.append(f"  {s} ({v['scope']}): n {v['n']}, person BA {v['person_balanced_accuracy']:.3f} "
                        f"AUROC {v['person_auroc']:.3f}, 4-class acc {v['accuracy']:.3f} macro-F1 {v['macro_f1']:.3f}")  # fmt: skip
    line.append("  overrides " + json.dumps(over))
    print("\n".join(line))
    with open(work.parent / "RESULTS.txt", "a") as fh:
        fh.write("\n".join(line) + "\n")


if __name__ == "__main__":
    main()
