"""Tiny structured prepared datasets for the training tests (moving thermal blobs per class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from params_helpers import from_params

from thermops.data.prepared import MANIFEST_COLUMNS
from thermops.io import write_csv, write_json

CLASSES = ["person", "vehicle", "animal", "nuisance"]


def _blob(t: int, size: int, rng: np.random.Generator, label: str) -> np.ndarray:
    """One (T, H, W) tubelet in degrees Celsius: a class-shaped warm blob on a noisy background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = 10 + 5 * rng.standard_normal() + 0.3 * rng.standard_normal((t, size, size)).astype(np.float32)
    out = np.empty((t, size, size), np.float32)
    cy, cx = size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3)
    scale = rng.uniform(0.8, 1.25)
    contrast = rng.uniform(3, 12) * (1 if rng.random() > 0.15 else -1)
    direction = rng.choice([-1.0, 1.0])
    shape = {"person": (5.0, 1.6, 0.6), "vehicle": (2.5, 6.0, 2.0), "animal": (2.2, 3.5, 1.0)}
    for f in range(t):
        if label == "nuisance":
            out[f] = bg[f] + 2.5 * rng.standard_normal((size, size)) * (rng.random() < 0.5)
            continue
        sy, sx, v = shape[label]
        x0 = cx + direction * v * (f - t / 2)
        g = np.exp(-(((yy - cy) / (sy * scale)) ** 2 + ((xx - x0) / (sx * scale)) ** 2))
        out[f] = bg[f] + contrast * g
    return out


def make_prepared(root: str | Path, n_per_class: int = 24, t: int = 8, size: int = 32, seed: int = 0) -> Path:
    """Write a prepared dataset (tubelets.npy + manifest.csv + summary.json) of 4 x n_per_class rows."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    arrs, rows = [], []
    for ci, label in enumerate(CLASSES):
        for k in range(n_per_class):
            split = "train" if k % 5 < 3 else ("val" if k % 5 == 3 else "test")
            cam = f"cam{k % 2}"
            arrs.append(_blob(t, size, rng, label))
            a = arrs[-1]
            rows.append(
                {
                    "tubelet_id": f"synthetic/c{ci}/{k}",
                    "camera_id": cam,
                    "calibration_version": f"{cam}-v1",
                    "source": "synthetic",
                    "clip_id": f"c{ci}",
                    "split": split,
                    "label": label,
                    "kind": "background" if label == "nuisance" else "object",
                    "source_label": "background" if label == "nuisance" else label,
                    "track_id": f"synthetic/c{ci}/{k}",
                    "frame_start": 0,
                    "frame_end": t,
                    "boxes": "[]",
                    "box_px": None if label == "nuisance" else 12.0,
                    "distance_m": 50.0,
                    "window_m": 4.0,
                    "window_px": size,
                    "units": "celsius",
                    "agc": "",
                    "mean": float(a.mean()),
                    "std": float(a.std()),
                    "min": float(a.min()),
                    "max": float(a.max()),
                    "p01": float(np.percentile(a, 1)),
                    "p99": float(np.percentile(a, 99)),
                }
            )
    np.save(root / "tubelets.npy", np.stack(arrs).astype(np.float32))
    write_csv(root / "manifest.csv", rows, MANIFEST_COLUMNS)
    write_json(root / "summary.json", {"n": len(rows)})
    return root


def make_unlabeled(root: str | Path, n_per_class: int = 6, seed: int = 9) -> Path:
    """An unlabeled folder like the `unlabeled` step's: blob tubelets, no label or kind column."""
    from thermops.io import read_csv

    root = make_prepared(root, n_per_class=n_per_class, seed=seed)
    rows = [
        {**{k: v for k, v in r.items() if k not in ("label", "kind")}, "split": "unlabeled", "source": "unlabeled"}
        for r in read_csv(root / "manifest.csv")
    ]
    write_csv(root / "manifest.csv", rows, [c for c in MANIFEST_COLUMNS if c not in ("label", "kind")])
    return root


def full_plan(folder: str | Path) -> Path:
    """What the `warmstart` step writes when there is no production model: a full retrain."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text('{"mode": "full"}')
    return folder


def small_training_params(params: dict) -> dict:
    """Shrink the pretrain/finetune sections of `params` for tests (a copy)."""
    import copy

    p = copy.deepcopy(params)
    p["pretrain"]["optim"].update(epochs=2, batch_size=16, warmup_epochs=0)
    p["finetune"]["optim"].update(epochs=2, batch_size=8, warmup_epochs=0)
    p["finetune"]["low_label"]["optim"].update(epochs=2, batch_size=4, warmup_epochs=0)
    p["finetune"]["probe"]["iters"] = 10
    return p


def ddp_main(data: str, out: str, epochs: int = 2) -> None:
    """Entry point under torchrun: fine-tune a tiny classifier with DDP and save each rank's state and batches."""
    import torch

    from thermops.learn.augment import AugmentConfig
    from thermops.learn.datasets import load_splits
    from thermops.learn.distributed import dist_info, setup_distributed
    from thermops.learn.engine import OptimConfig, classification_loss, epoch_batches, fit
    from thermops.model.network import ModelConfig, TubeletClassifier
    from thermops.model.preprocess import InputSpec

    device = setup_distributed("cpu")
    rank, world = dist_info()
    splits = load_splits(data, CLASSES, from_params(InputSpec, "input"))
    torch.manual_seed(0)
    model = TubeletClassifier(from_params(ModelConfig, "model", size="tiny"), len(CLASSES))
    cfg = from_params(OptimConfig, "finetune.optim", epochs=epochs, batch_size=8, lr=3e-3, warmup_epochs=0)
    res = fit(
        model,
        classification_loss(from_params(AugmentConfig, "pretrain.augment")),
        splits.train,
        cfg,
        seed=5,
        device=device,
    )
    batches = [[b.tolist() for b in epoch_batches(len(splits.train), 8, 5, e, rank, world)] for e in range(epochs)]
    torch.save(
        {"state": model.state_dict(), "history": res.history, "batches": batches, "world": world},
        Path(out) / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    import sys

    ddp_main(sys.argv[1], sys.argv[2])
