"""Model directories: a state dict plus a JSON model card.

A model directory holds

    model.pt    the classifier's state dict (loaded with `weights_only=True`)
    card.json   the model card (CARD_FORMAT): architecture, input contract, classes,
                calibration versions seen, data version, metrics; the gate adds its
                decision and validated envelope to the card of the model it judged.

The card is the lineage that the gate, the package step, the service and the
calibration watcher all read, so its keys are stated here once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

from thermops.io import read_json, write_json
from thermops.model.network import ModelConfig, TubeletClassifier
from thermops.model.preprocess import InputSpec

CARD_FORMAT = "thermops-model/1"
PRETRAINED_FORMAT = "thermops-pretrained/1"  # models/pretrained: encoder.pt + card.json
REQUIRED_KEYS = ("format", "classes", "model", "input", "calibrations", "data")


class ModelCardError(ValueError):
    """A model directory is missing files or its card is malformed."""


def git_revision(cwd: str | Path = ".") -> str:
    """The current git commit (with `-dirty` if the tree has changes), or 'unknown'."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_card(
    *,
    classes: list[str],
    model_cfg: ModelConfig,
    input_spec: InputSpec,
    calibrations: dict[str, str],
    data: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A model card with the required keys; `extra` keys are kept as given."""
    card = {
        "format": CARD_FORMAT,
        "classes": list(classes),
        "model": model_cfg.to_dict(),
        "input": input_spec.to_dict(),
        "calibrations": dict(sorted(calibrations.items())),
        "data": data,
        "metrics": metrics or {},
        "params": params or {},
        "git_revision": git_revision(),
    }
    card.update(extra)
    return card


def validate_card(card: Any, origin: str = "card.json") -> dict[str, Any]:
    if not isinstance(card, dict):
        raise ModelCardError(f"{origin}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        raise ModelCardError(f"{origin}: missing keys {missing}")
    if card["format"] != CARD_FORMAT:
        raise ModelCardError(f"{origin}: format {card['format']!r} is not {CARD_FORMAT!r}")
    if not card["classes"] or not all(isinstance(c, str) for c in card["classes"]):
        raise ModelCardError(f"{origin}: classes must be a non-empty list of names")
    return card


def model_config_from_card(card: dict[str, Any]) -> ModelConfig:
    m = dict(card["model"])
    m["widths"] = tuple(m["widths"]) if m.get("widths") else None
    m.setdefault("patch", 1)  # cards written before the stem became a knob: the full-resolution conv stem
    return ModelConfig(**m)


def input_spec_from_card(card: dict[str, Any]) -> InputSpec:
    i = dict(card["input"])
    i["geometry"] = tuple(i.get("geometry", ()))  # cards written before geometry features: none
    return InputSpec(**i)


def radiometric_units(card: dict[str, Any]) -> str:
    """Units the model expects from radiometric cameras: 'celsius' or 'counts'.

    Read from the card (`units`, or `data.units`: a unit or list of units the
    model was trained on), else from the prepare params it was trained with.
    """
    units = card.get("units", card.get("data", {}).get("units"))
    if isinstance(units, str):
        units = [units]
    if isinstance(units, dict):
        units = list(units.values())
    if units:
        seen = set(units)
        if "counts" in seen and "celsius" not in seen:
            return "counts"
        return "celsius"
    prepare = card.get("params", {}).get("prepare", {})
    if isinstance(prepare, dict) and prepare.get("radiometric") is False:
        return "counts"
    return "celsius"


def save_model_dir(directory: str | Path, model: TubeletClassifier, card: dict[str, Any]) -> None:
    """Write model.pt and card.json into `directory` (normally an `atomic_dir`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    validate_card(card)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / "model.pt")
    write_json(directory / "card.json", card)


def load_card(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "card.json"
    if not path.is_file():
        raise ModelCardError(f"{directory}: no card.json (not a model directory)")
    return validate_card(read_json(path), str(path))


def load_model_dir(directory: str | Path, map_location: str = "cpu") -> tuple[TubeletClassifier, dict[str, Any]]:
    """Rebuild the classifier from its card and load the state dict with weights_only=True."""
    directory = Path(directory)
    card = load_card(directory)
    spec = input_spec_from_card(card)
    model = TubeletClassifier(model_config_from_card(card), len(card["classes"]), geo_dim=len(spec.geometry))
    weights = directory / "model.pt"
    if not weights.is_file():
        raise ModelCardError(f"{directory}: no model.pt")
    state = torch.load(weights, map_location=map_location, weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelCardError(
            f"{weights}: state dict does not match the card (missing {missing}, unexpected {unexpected})"
        )
    model.eval()
    return model, card


def load_pretrained_encoder(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The encoder state dict and card of a `models/pretrained` folder."""
    directory = Path(directory)
    card_path, weights = directory / "card.json", directory / "encoder.pt"
    if not card_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{directory}: not a pretrained-encoder folder (card.json / encoder.pt missing)")
    card = read_json(card_path)
    if card.get("format") != PRETRAINED_FORMAT:
        raise ValueError(f"{card_path}: format {card.get('format')!r} is not {PRETRAINED_FORMAT!r}")
    return torch.load(weights, map_location="cpu", weights_only=True), card
