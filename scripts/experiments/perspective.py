"""Range and perspective, measured where they matter: window variants x controlled splits x seeds.

    python scripts/experiments/perspective.py --params params.yaml --raw data/raw \
        --calibration data/calibration --work /tmp/thermops_perspective \
        --out reports/experiments/perspective.json --seeds 0 1 2 3 4

For every input variant (which window the prepare step cuts, and which geometry
features the classifier takes beside the pixels) and every split of the `split`
params family (the prepared random split; `range`: train near, test far; `camera`:
leave one camera out, each camera in turn), it trains the params' classifier from
scratch with the `finetune` recipe (optimizer, augmentations, label smoothing,
epoch selection on val macro-F1) once per seed, and reports test macro-F1 and
accuracy, and the gate's perspective figures on the test split
(`thermops.robustness.perspective.sweep`: Bietti-Mairal stability slope, flip rate at
`gate.perspective.decision_px`; `thermops.robustness.envelope.envelope`: the validated
geometric envelope under the gate's thresholds). Every variant sees the same
tracks in the same split with the same seeds; only the input differs.

`--epoch-record` also scores, after every epoch, a farther view of val (each val window through
the range augmentation alone, up to the --far maximum, drawn once: near rows standing in for
farther ones) and the test split, and reports the test macro-F1 that selecting the epoch on val,
on the farther val, on the test itself, or keeping the last epoch would give; the run still
selects on val, so its other figures are unchanged. `--average K ...` (with `--epoch-record`)
also reports the test macro-F1 of the weights averaged over the last K epochs (tail averaging,
as SWA over a cosine schedule's end: every float tensor averaged, BatchNorm's running statistics
too; `..._bn` recomputes them on the un-augmented train split instead).

The windows are prepared here (`components.prepare.run` with `prepare.geometric`
true / false, everything else from params.yaml) into --work; nothing in the
repository's data/ or models/ is touched. CLI flags carry paths and the
experiment grid only; every training knob comes from params.yaml.
"""

from __future__ import annotations

import argparse
import copy
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.finetune import FinetuneParams  # noqa: E402
from components.prepare import run as prepare_run  # noqa: E402
from thermops.config import classes_of, get, load_params, section, seed_of  # noqa: E402
from thermops.data.extract import PrepareParams  # noqa: E402
from thermops.data.prepared import load_prepared  # noqa: E402
from thermops.learn.augment import AugmentConfig, far  # noqa: E402
from thermops.learn.datasets import SplitParams, TubeletDataset, load_splits, split_rows  # noqa: E402
from thermops.learn.engine import _clone_state, classification_loss, evaluate, fit, to_device  # noqa: E402
from thermops.model.network import ModelConfig, TubeletClassifier  # noqa: E402
from thermops.model.preprocess import GEOMETRY_FEATURES, InputSpec, resample  # noqa: E402
from thermops.robustness import envelope as E  # noqa: E402
from thermops.robustness import perspective as P  # noqa: E402
from thermops.robustness.params import GateParams  # noqa: E402

# name -> (window: prepare.geometric, geometry features beside the pixels, range augmentation)
VARIANTS = {
    "metric": (True, (), False),
    "box": (False, (), False),
    "box+scale": (False, GEOMETRY_FEATURES, False),
    # only the range-invariant feature: the metres the window covers (with `known`), not the
    # camera pixels across it, which shrink with range and extrapolate on unseen ranges
    "box+metric": (False, ("metric_scale", "known"), False),
    "metric+scale": (True, GEOMETRY_FEATURES, False),
    "box+far": (False, (), True),
    "box+scale+far": (False, GEOMETRY_FEATURES, True),
    "box+metric+far": (False, ("metric_scale", "known"), True),
}


def split_grid(cameras: list[str], base: SplitParams, names: list[str]) -> dict[str, SplitParams]:
    grid = {}
    for n in names:
        if n == "camera":
            for c in cameras:
                grid[f"camera:{c}"] = dataclasses.replace(base, mode="camera", heldout_camera=c)
        elif n.startswith("camera:"):
            grid[n] = dataclasses.replace(base, mode="camera", heldout_camera=n.split(":", 1)[1])
        else:
            grid[n] = dataclasses.replace(base, mode=n)
    return grid


def perspective_figures(model, raw, labels, units, spec, gate: GateParams, geo, magnitudes: list[float]) -> dict:
    """The gate's perspective figures on the gate's magnitudes, and the envelope over `magnitudes` too
    (a superset reaching farther, where the gate's largest tested change is tolerated by every variant)."""
    model.eval()  # each row keeps its own geometry features (None: a geometry-free classifier)
    mags = sorted(set(magnitudes) | set(gate.perspective.magnitudes_px))
    rows = P.sweep(model, raw, labels, units, spec, mags, geo=geo)
    gate_rows = [r for r in rows if any(abs(abs(r["px"]) - g) < 1e-9 for g in gate.perspective.magnitudes_px)]
    at = [r for r in rows if abs(abs(r["px"]) - gate.perspective.decision_px) < 1e-9]

    def env(rs):
        e = E.envelope(
            rs,
            [],
            min_accuracy=gate.thresholds.clean_accuracy,
            max_flip_rate=gate.thresholds.max_flip_rate,
            spec=spec,
            window_px=None,
        )["geometric"]
        return e["max_corner_px"], e["max_scale_change"]

    corner, scale = env(gate_rows)
    corner_x, scale_x = env(rows)
    return {
        "stability_slope": P.stability_slope(gate_rows),
        "flip_rate": max(r["flip_rate"] for r in at),
        "max_corner_px": corner,
        "max_scale_change": scale,
        "max_corner_px_extended": corner_x,
        "max_scale_change_extended": scale_x,
    }


def farther(data: TubeletDataset, aug: AugmentConfig, geometry: tuple[str, ...], seed: int) -> TubeletDataset:
    """`data` with every row seen through the range augmentation alone (each up to `aug.far_max` times
    farther, log-uniform, blurred to the camera pixels it would cover; `pixel_scale` moved by -log k),
    drawn once from `seed`: near rows standing in for farther ones, to select an epoch on."""
    if data.px is None:
        raise ValueError("--epoch-record needs each window's camera pixels (the manifest's window_px)")
    view, k = far(data.inputs, dataclasses.replace(aug, far_p=1.0), torch.Generator().manual_seed(seed), data.px)
    geo = data.geo
    if geo is not None and "pixel_scale" in geometry:
        geo = geo.clone()
        geo[:, geometry.index("pixel_scale")] -= torch.log(k)
    return TubeletDataset(view, data.labels, geo, data.px / k)


class TailAverage:
    """Running mean of a model's float state over the epochs it is given (weights and BatchNorm
    buffers; integer buffers such as `num_batches_tracked` keep the last value)."""

    def __init__(self):
        self.n, self.state = 0, None

    def add(self, model: torch.nn.Module) -> None:
        sd = _clone_state(model)
        self.n += 1
        if self.state is None:
            self.state = sd
            return
        for k, v in sd.items():
            if v.is_floating_point():
                self.state[k] += (v - self.state[k]) / self.n
            else:
                self.state[k] = v


@torch.no_grad()
def recompute_bn(model: torch.nn.Module, data: TubeletDataset, device: torch.device, batch_size: int = 64) -> None:
    """BatchNorm running statistics of `model` recomputed as a cumulative mean over `data` (train mode,
    no gradients; as torch.optim.swa_utils.update_bn, but passing each row's geometry)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.train()
    for s in range(0, len(data.inputs), batch_size):
        args = (to_device(data.inputs[s : s + batch_size], device),)
        if data.geo is not None:
            args += (data.geo[s : s + batch_size].to(device),)
        model(*args)
    for m, mom in saved.items():
        m.momentum = mom
    model.train(was)


def averaged_scores(model, averages: dict[int, TailAverage], train, test, classes, device) -> dict:
    """Test macro-F1 of each tail average (and of it with BatchNorm recomputed on `train`), scored on a
    copy of `model`; `model` itself is left as it is."""

    def f1(m) -> float:
        return evaluate(m, test, classes, device)[0]["macro_f1"]

    out = {}
    for k, avg in sorted(averages.items()):
        m = copy.deepcopy(model)
        m.load_state_dict(avg.state)
        out[f"average_last_{k}"] = {"epochs": avg.n, "test_macro_f1": f1(m)}
        recompute_bn(m, train, device)
        out[f"average_last_{k}_bn"] = {"epochs": avg.n, "test_macro_f1": f1(m)}
    return out


def selections(epochs: list[dict]) -> dict:
    """Test macro-F1 of the epoch each criterion picks (the first best; `last`: no selection), from
    per-epoch records."""

    def pick(key: str) -> dict:
        best = max(range(len(epochs)), key=lambda i: (epochs[i][key], -i))
        return {"epoch": epochs[best]["epoch"], "test_macro_f1": epochs[best]["test"]}

    last = {"epoch": epochs[-1]["epoch"], "test_macro_f1": epochs[-1]["test"]}
    return {"val": pick("val"), "far_val": pick("far_val"), "last": last, "oracle_test": pick("test")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, required=True)
    ap.add_argument("--raw", type=Path, required=True, help="the synthesize stages' data/raw")
    ap.add_argument("--calibration", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="prepared windows go here")
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument(
        "--splits", nargs="+", default=["prepared", "range", "camera"], help="prepared | range | camera | camera:<id>"
    )
    ap.add_argument(
        "--far",
        type=float,
        nargs=2,
        metavar=("P", "MAX"),
        help="range augmentation of the +far variants: share of views, up to this many times farther, each "
        "blurred to the camera pixels it would cover (default: finetune.augment far_p / far_max)",
    )
    ap.add_argument(
        "--background-m",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="prepare.background_m of the box windows (default: params.yaml's)",
    )
    ap.add_argument(
        "--geometry-drop",
        type=float,
        metavar="P",
        help="geometry_drop of the variants with geometry features (default: finetune.augment.geometry_drop)",
    )
    ap.add_argument(
        "--epoch-record",
        action="store_true",
        help="after every epoch also score a farther view of val (`farther`) and the test split, and report the "
        "test macro-F1 each criterion would keep (val, far val, the last epoch, the test itself); selection stays "
        "on val",
    )
    ap.add_argument(
        "--average",
        type=int,
        nargs="+",
        default=[],
        metavar="K",
        help="with --epoch-record: also report the test macro-F1 of the weights averaged over the last K epochs",
    )
    ap.add_argument(
        "--magnitudes",
        type=float,
        nargs="+",
        default=[],
        help="extra corner px for the extended envelope (the gate's magnitudes are always swept)",
    )
    args = ap.parse_args(argv)
    if args.average and not args.epoch_record:
        ap.error("--average needs --epoch-record")

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    params = load_params(args.params)
    classes, seed = classes_of(params), seed_of(params)
    prep = section(params, "prepare", PrepareParams)
    model_cfg = section(params, "model", ModelConfig)
    spec0 = section(params, "input", InputSpec)
    ft = section(params, "finetune", FinetuneParams)
    gate = section(params, "gate", GateParams)
    base_split = section(params, "split", SplitParams)
    device = torch.device("cpu")
    folders = {}
    far_p, far_max = args.far or (ft.augment.far_p, ft.augment.far_max)
    if args.background_m:
        prep = dataclasses.replace(prep, background_m=tuple(args.background_m))
    drop = ft.augment.geometry_drop if args.geometry_drop is None else args.geometry_drop
    for geometric in sorted({VARIANTS[v][0] for v in args.variants}):
        folder = args.work / ("metric" if geometric else "box")
        if not (folder / "manifest.csv").is_file():
            prepare_run(
                dataclasses.replace(prep, geometric=geometric),
                list(get(params, "data.sources", list)),
                classes,
                seed,
                args.raw,
                args.calibration,
                folder,
            )
        folders[geometric] = folder
    cameras = sorted({r["camera_id"] for r in load_prepared(folders[VARIANTS[args.variants[0]][0]]).rows})
    grid = split_grid(cameras, base_split, args.splits)
    results = {
        "command": "python scripts/experiments/perspective.py " + " ".join(argv or sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_before": os.getloadavg()[0],
        "model": model_cfg.to_dict(),
        "seeds": args.seeds,
        "far": [far_p, far_max],
        "background_m": list(prep.background_m) if prep.background_m else None,
        "geometry_drop": drop,
        "magnitudes_px": list(gate.perspective.magnitudes_px),
        "extended_magnitudes_px": sorted(set(args.magnitudes) | set(gate.perspective.magnitudes_px)),
        "runs": [],
    }
    for split_name, split in grid.items():
        for variant in args.variants:
            geometric, geometry, use_far = VARIANTS[variant]
            spec = dataclasses.replace(spec0, geometry=tuple(geometry))
            aug = dataclasses.replace(
                ft.augment,
                far_p=far_p if use_far else 0.0,
                far_max=far_max if use_far else 1.0,
                geometry_drop=drop if geometry else 0.0,
            )
            data = load_splits(folders[geometric], classes, spec, split)
            prepared = load_prepared(folders[geometric])
            test_idx = [i for i, a in enumerate(split_rows(prepared.rows, split)) if a == "test"]
            raw = resample(np.asarray(prepared.tubelets[test_idx], dtype=np.float32), spec.frames, spec.size)
            units = [prepared.rows[i]["units"] for i in test_idx]
            # the same farther view of val for every variant (the --far range, augmented or not)
            far_val = (
                farther(data.val, dataclasses.replace(aug, far_max=far_max), spec.geometry, seed + 7919)
                if args.epoch_record
                else None
            )
            for s in args.seeds:
                t0 = time.perf_counter()
                torch.manual_seed(seed + s)
                model = TubeletClassifier(model_cfg, len(classes), geo_dim=len(geometry))
                epochs: list[dict] = []
                averages = {k: TailAverage() for k in args.average}

                def select(m, far_val=far_val):  # noqa: B023
                    score = evaluate(m, data.val, classes, device)[0]["macro_f1"]  # noqa: B023
                    for k, avg in averages.items():  # noqa: B023
                        if len(epochs) >= ft.optim.epochs - k:  # noqa: B023  (epochs recorded so far)
                            avg.add(m)
                    if args.epoch_record:
                        epochs.append(  # noqa: B023
                            {
                                "epoch": len(epochs) + 1,  # noqa: B023
                                "val": score,
                                "far_val": evaluate(m, far_val, classes, device)[0]["macro_f1"],
                                "test": evaluate(m, data.test, classes, device)[0]["macro_f1"],  # noqa: B023
                            }
                        )
                    return score

                fit(
                    model,
                    classification_loss(aug, ft.label_smoothing, geometry=spec.geometry),
                    data.train,
                    ft.optim,
                    seed=seed + s,
                    device=device,
                    resume=False,
                    select=select,
                )
                metrics, _ = evaluate(model, data.test, classes, device)
                persp = perspective_figures(
                    model, raw, data.test.labels, units, spec, gate, data.test.geo, args.magnitudes
                )
                row = {
                    "split": split_name,
                    "variant": variant,
                    "seed": s,
                    "n": data.data_info["n"],
                    "macro_f1": metrics["macro_f1"],
                    "accuracy": metrics["accuracy"],
                    **persp,
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                if args.epoch_record:
                    row["epochs"], row["selected_by"] = epochs, selections(epochs)
                    row["selected_by"].update(averaged_scores(model, averages, data.train, data.test, classes, device))
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")  # partial results survive a kill
    results["load_after"] = os.getloadavg()[0]
    results["summary"] = summarize(results["runs"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results["summary"]))


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and min-max over seeds per (split, variant)."""
    out = []
    keys = (
        "macro_f1",
        "accuracy",
        "stability_slope",
        "flip_rate",
        "max_corner_px",
        "max_scale_change",
        "max_corner_px_extended",
        "max_scale_change_extended",
    )
    for split in dict.fromkeys(r["split"] for r in runs):
        for variant in dict.fromkeys(r["variant"] for r in runs):
            rs = [r for r in runs if r["split"] == split and r["variant"] == variant]
            if not rs:
                continue
            row = {"split": split, "variant": variant, "seeds": len(rs), "n": rs[0]["n"]}
            for k in keys:
                v = [r[k] for r in rs]
                row[k] = {"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v))}
            out.append(row)
    return out


def markdown(summary: list[dict]) -> str:
    lines = [
        "| split | input | n train/val/test | test macro-F1 mean (min-max) | accuracy | stability slope "
        "| flip rate @1px | envelope corner px (gate grid / extended) | envelope scale (gate grid / extended) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(r, k, d=3):
        return f"{r[k]['mean']:.{d}f} ({r[k]['min']:.{d}f}-{r[k]['max']:.{d}f})"

    for r in summary:
        n = r["n"]
        lines.append(
            f"| {r['split']} | {r['variant']} | {n['train']}/{n['val']}/{n['test']} | {f(r, 'macro_f1')} | "
            f"{f(r, 'accuracy')} | {f(r, 'stability_slope', 2)} | {f(r, 'flip_rate')} | "
            f"{f(r, 'max_corner_px', 1)} / {f(r, 'max_corner_px_extended', 1)} | "
            f"{f(r, 'max_scale_change', 3)} / {f(r, 'max_scale_change_extended', 3)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
