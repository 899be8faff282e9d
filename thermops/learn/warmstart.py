"""Cheap retrains: when only some cameras' data moved, start from the production model.

A calibration change of one camera re-synthesizes and re-cuts that camera's data; the other
cameras' training data are byte-identical to what the production model trained on. Then
there is no reason to pretrain a new encoder and fine-tune from it for the full schedule:
the `warmstart` step plans a *warm* retrain instead (the production model's encoder reused,
fine-tuning continued from the production classifier for a short schedule), and the gate
judges the result against production, camera by camera, as it judges any candidate.

The plan is a pure function of what the step reads, so `dvc repro` stays reproducible:

- the production model's card (what the `baseline` stage fetched), which records the
  training params it was made with (`TRAINING_SECTIONS`), the hash of its training code
  (`training_code`), a fingerprint of each camera's train+val data (`data.per_camera`) and
  how many warm retrains separate it from a full one (`warm_start.chain`);
- the current params, training code and prepared data.

It is warm when all of these hold, else full (the reasons say which failed):
production exists, the training params and code are those production was trained with, the
share of train+val tubelets from cameras whose data differ from production's (new cameras
included) is above 0 and at most `retrain.max_moved_fraction`, and the chain is shorter than
`retrain.max_chain`. "Nothing moved" is full on purpose: the data production trained on give,
by the fixed seeds, the full run's own result, and a promoted warm model is followed by the
full retrain it stood in for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thermops.data.prepared import PreparedData
from thermops.io import hash_files

# The params sections a trained model is a function of (besides its data): what the finetune
# step records in its card (`params`) and the warm-start plan compares.
TRAINING_SECTIONS = ("seed", "classes", "model", "input", "split", "pretrain", "finetune", "unlabeled")
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class RetrainParams:
    """params `retrain`: when and how a retrain is warm-started from the production model."""

    warm_start: bool  # false: every retrain is a full one
    max_moved_fraction: float  # warm only if at most this share of train+val tubelets moved
    max_chain: int  # warm retrains in a row before a full one is required
    epochs: int  # fine-tuning epochs of a warm retrain
    lr_scale: float  # its learning rate: finetune.optim.lr times this

    def __post_init__(self):
        if not 0.0 < self.max_moved_fraction <= 1.0:
            raise ValueError(f"retrain.max_moved_fraction {self.max_moved_fraction} must be in (0, 1]")
        if self.max_chain < 1 or self.epochs < 1:
            raise ValueError("retrain.max_chain and retrain.epochs must be >= 1")
        if not 0.0 < self.lr_scale <= 1.0:
            raise ValueError(f"retrain.lr_scale {self.lr_scale} must be in (0, 1]")


def training_params(params: dict[str, Any]) -> dict[str, Any]:
    """The TRAINING_SECTIONS of a params mapping (absent sections are left out)."""
    return {k: params[k] for k in TRAINING_SECTIONS if k in params}


def camera_fingerprints(data: PreparedData, assigned: list[str | None]) -> dict[str, dict[str, Any]]:
    """Per camera, a SHA-256 of its train+val rows (manifest values and tubelet bytes) and their count.

    Two prepared folders give a camera the same fingerprint exactly when that camera's training data
    are the same, whatever happened to the other cameras.
    """
    by_cam: dict[str, list[int]] = {}
    for i, (r, a) in enumerate(zip(data.rows, assigned)):
        if a in ("train", "val"):
            by_cam.setdefault(r["camera_id"], []).append(i)
    out = {}
    for cam, idx in sorted(by_cam.items()):
        h = hashlib.sha256()
        for i in sorted(idx, key=lambda j: data.rows[j]["tubelet_id"]):
            h.update(json.dumps(data.rows[i], sort_keys=True).encode())
            h.update(np.ascontiguousarray(data.tubelets[i]).tobytes())
        out[cam] = {"sha256": h.hexdigest(), "n": len(idx)}
    return out


def code_record(files: list[str], root: str | Path) -> dict[str, Any]:
    """{"files", "sha256"}: the training code a model was made with (paths relative to `root`)."""
    return {"files": sorted(files), "sha256": hash_files([Path(root) / f for f in files], root=root)}


def code_unchanged(record: dict[str, Any] | None, root: str | Path) -> tuple[bool, str]:
    """Whether the files of a card's `training_code` record hash the same under `root` now."""
    if not record or not record.get("files"):
        return False, "the production card records no training code (made before warm starts existed)"
    missing = [f for f in record["files"] if not (Path(root) / f).is_file()]
    if missing:
        return False, f"training code files of the production model are gone: {missing[:3]}"
    now = hash_files([Path(root) / f for f in record["files"]], root=root)
    if now != record.get("sha256"):
        return False, "the training code changed since the production model was trained"
    return True, "training code unchanged"


def _differing(prod: dict[str, Any], now: dict[str, Any]) -> list[str]:
    keys = sorted(set(prod) | set(now))
    return [k for k in keys if json.dumps(prod.get(k), sort_keys=True) != json.dumps(now.get(k), sort_keys=True)]


def plan(
    cfg: RetrainParams,
    production: dict[str, Any] | None,
    production_card: dict[str, Any] | None,
    params_now: dict[str, Any],
    cameras_now: dict[str, dict[str, Any]],
    code_now: tuple[bool, str],
) -> dict[str, Any]:
    """Decide warm or full (see the module docstring).

    Args:
        production: what models/baseline/production.json says ({"version": None} when nothing is promoted).
        production_card: the production model's card, or None.
        params_now: the current TRAINING_SECTIONS (`training_params`).
        cameras_now: `camera_fingerprints` of the current prepared data.
        code_now: `code_unchanged` of the production card's training code.

    Returns {"mode": "warm" | "full", "reasons": [...], ...}; a warm plan also names the production
    version, the moved cameras, the moved fraction and the chain length the new model will have.
    """
    reasons: list[str] = []
    moved: list[str] = []
    fraction = None
    chain = 0
    if not cfg.warm_start:
        reasons.append("retrain.warm_start is off")
    if production is None or production.get("version") is None or production_card is None:
        reasons.append("no production model to start from")
    else:
        diff = _differing(production_card.get("params", {}), params_now)
        if diff:
            reasons.append(f"training params differ from the production model's: {', '.join(diff)}")
        if not code_now[0]:
            reasons.append(code_now[1])
        before = (production_card.get("data") or {}).get("per_camera")
        if not before:
            reasons.append("the production card has no per-camera data fingerprints")
        else:
            moved = sorted(c for c in cameras_now if before.get(c, {}).get("sha256") != cameras_now[c]["sha256"])
            gone = sorted(set(before) - set(cameras_now))
            total = sum(v["n"] for v in cameras_now.values())
            fraction = round(sum(cameras_now[c]["n"] for c in moved) / total, 4) if total else 1.0
            if gone:
                reasons.append(f"cameras the production model trained on are gone: {gone}")
            if not moved and not gone:
                reasons.append("no camera's data moved: the full run reproduces the production model's training")
            elif fraction > cfg.max_moved_fraction:
                reasons.append(
                    f"{fraction:.0%} of the train+val tubelets moved ({', '.join(moved)}), more than "
                    f"retrain.max_moved_fraction {cfg.max_moved_fraction:.0%}"
                )
        chain = int((production_card.get("warm_start") or {}).get("chain", 0)) + 1
        if chain > cfg.max_chain:
            reasons.append(f"the production model is already {chain - 1} warm retrains from a full one (max_chain)")
    base = {"moved_cameras": moved, "moved_fraction": fraction}
    if reasons:
        return {"mode": "full", "reasons": reasons, **base}
    return {
        "mode": "warm",
        "reasons": [f"{', '.join(moved)} moved ({fraction:.0%} of train+val tubelets); the rest as production"],
        **base,
        "production": {k: production.get(k) for k in ("version", "tag", "digest")},
        "chain": chain,
        "epochs": cfg.epochs,
        "lr_scale": cfg.lr_scale,
    }


def read_plan(folder: str | Path) -> dict[str, Any]:
    """The plan the `warmstart` step wrote into `folder` (its `plan.json`)."""
    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {PLAN_FILE} (the warmstart step writes it)")
    plan_ = json.loads(path.read_text())
    if plan_.get("mode") not in ("warm", "full"):
        raise ValueError(f"{path}: mode {plan_.get('mode')!r} is neither 'warm' nor 'full'")
    if plan_["mode"] == "warm" and not (Path(folder) / "model.pt").is_file():
        raise ValueError(f"{path}: a warm plan without the production model.pt beside it")
    return plan_
