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

import hashlib
import json
import os
import subprocess
import sys
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


def loaded_code(top: str | Path) -> list[str]:
    """The project's own Python files this process has imported, relative to `top` (the repository root).

    This is the code a step's result depends on: every file of its import closure is a dep of
    its dvc.yaml stage (tests/test_structure.py), so a commit that changes one also re-runs the stage.
    """
    top = Path(top).resolve()
    files = set()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if not f or not f.endswith(".py") or not os.path.isabs(f):  # e.g. torch._classes says "_classes.py"
            continue
        try:
            rel = Path(f).resolve().relative_to(top)
        except ValueError:
            continue
        if rel.parts and not rel.parts[0].startswith(".") and "site-packages" not in rel.parts:
            files.add(rel.as_posix())
    return sorted(files)


def _git(args: list[str], cwd: str | Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


# Where the running code lives: its repository is the one whose commits name it (a Kubeflow
# task runs in a scratch folder, the code at kubeflow.project_root).
CODE_ROOT = Path(__file__).resolve().parents[2]


def code_lineage(paths: list[str] | tuple[str, ...] | None = None, cwd: str | Path | None = None) -> dict[str, Any]:
    """The commit that last touched the code, and whether the code differs from it.

    Args:
        paths: code paths relative to the repository root; default: the project files this
            process imported (`loaded_code`), i.e. exactly the code behind the result.
        cwd: a folder inside the repository (default: the one holding this code, whatever the
            working directory).

    Returns {"commit", "dirty"}. DVC rewrites dvc.lock and metrics during a run;
    those are not code, so they never make a card dirty, and the commit does not move when
    only they are committed. Outside a git checkout (a container image) the commit comes
    from `THERMOPS_CODE_COMMIT` (set by the image build) and `dirty` is None (unknown).
    """
    try:
        top = _git(["rev-parse", "--show-toplevel"], CODE_ROOT if cwd is None else cwd)
        files = list(paths) if paths is not None else loaded_code(top)
        commit = _git(["log", "-1", "--format=%H", "--", *files], top) if files else ""
        changed = _git(["status", "--porcelain", "--untracked-files=normal", "--", *files], top) if files else ""
        if commit:
            return {"commit": commit, "dirty": bool(changed)}
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"commit": os.environ.get("THERMOPS_CODE_COMMIT") or "unknown", "dirty": None}


def git_revision(cwd: str | Path | None = None, paths: list[str] | None = None) -> str:
    """The commit of the code (`code_lineage`), with `-dirty` only when that code has changes."""
    code = code_lineage(paths, cwd)
    return code["commit"] + ("-dirty" if code["dirty"] else "")


def dvc_md5(path: str | Path) -> str:
    """The hash DVC 3 records for `path` in dvc.lock: md5 of a file, or `<md5>.dir` of a folder.

    A folder's hash is the md5 of the JSON list of its files' {"md5", "relpath"}, sorted by
    path (dvc-data's `Tree.as_bytes`), so a card's data hash can be compared with dvc.lock.
    """
    path = Path(path)

    def md5(p: Path) -> str:
        h = hashlib.md5()  # noqa: S324 - DVC's content hash, not a security measure
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    if path.is_file():
        return md5(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    entries = [
        {"md5": md5(p), "relpath": p.relative_to(path).as_posix()} for p in sorted(path.rglob("*")) if p.is_file()
    ]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"  # noqa: S324


def params_md5(values: dict[str, Any]) -> str:
    """md5 of the canonical JSON of the params values a step read."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324


def lineage(
    inputs: dict[str, str | Path] | None = None,
    params: dict[str, Any] | None = None,
    code_paths: list[str] | None = None,
) -> dict[str, Any]:
    """What a model came from: code commit (dirty only when the code is), DVC hashes of inputs, params hash.

    Byte-stable across runs of the same code, data and params: no wall-clock, no paths of this machine.
    """
    return {
        "code": code_lineage(code_paths),
        "inputs": {name: dvc_md5(p) for name, p in sorted((inputs or {}).items())},
        "params": params_md5(params or {}),
    }


def make_card(
    *,
    classes: list[str],
    model_cfg: ModelConfig,
    input_spec: InputSpec,
    calibrations: dict[str, str],
    data: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    inputs: dict[str, str | Path] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A model card with the required keys; `extra` keys are kept as given.

    `inputs` ({dvc.yaml path: local path}, e.g. {"data/prepared": data_dir}) are recorded
    in `lineage.inputs` with the hash DVC records for them; `lineage.code` names the commit
    of the code and `git_revision` repeats it (with `-dirty` only when the code changed).
    """
    lin = lineage(inputs, params)
    card = {
        "format": CARD_FORMAT,
        "classes": list(classes),
        "model": model_cfg.to_dict(),
        "input": input_spec.to_dict(),
        "calibrations": dict(sorted(calibrations.items())),
        "data": data,
        "metrics": without_timings(metrics or {}),
        "params": params or {},
        "git_revision": lin["code"]["commit"] + ("-dirty" if lin["code"]["dirty"] else ""),
        "lineage": lin,
    }
    card.update(extra)
    return card


def is_timing_key(key: str) -> bool:
    """A wall-clock figure by its name (`seconds`, `comparison_seconds`, `timing_s`, `*_time_s`)."""
    k = str(key).lower()
    return k.endswith(("seconds", "_secs", "_s")) or k.startswith("timing") or k in ("time", "wall_time")


def without_timings(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` less its wall-clock figures, at any depth: a card is a function of code, data and
    params, byte-stable across runs (no timing may make the model's DVC hash change)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if is_timing_key(k):
            continue
        out[k] = without_timings(v) if isinstance(v, dict) else v
    return out


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
