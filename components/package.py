"""Package step: the gated model goes into the BentoML model store and a bento is built.

Only a model the gate passed is packaged: `metrics/gate.json` must say `passed`
and the card must carry the gate's decision. The model entry holds the state
dict (loaded by the service with `weights_only=True`), the card, and the
calibration files of the cameras the model was trained on (the service's camera
registry). The bento is built from `bentofile.yaml` offline (explicit pins, no
package locking); serving knobs travel as bento arguments, so the bento serves
the same way wherever it goes.

    python -m components.package --params params.yaml --model models/gated \
        --gate metrics/gate.json --calibration data/calibration --out models/bento.json
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from components._cli import parser, run_cli
from thermops.camera.calibration import load_calibration
from thermops.config import load_params, section
from thermops.io import hash_files, read_json, write_json
from thermops.model.card import git_revision, load_card, load_model_dir
from thermops.serve.requests import PackageParams

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class PackageError(ValueError):
    """The model cannot be packaged: failed gate, missing files, calibration mismatch."""


def gate_summary(gate: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    """The gate decision and its metrics, from metrics/gate.json and the card's `gate` section."""
    section_ = card.get("gate", {}) if isinstance(card.get("gate"), dict) else {}
    metrics = {k: v for k, v in gate.items() if k != "passed" and isinstance(v, (int, float, str, bool))}
    summary = {
        "passed": bool(gate.get("passed")),
        "decision": section_.get("decision", "pass" if gate.get("passed") else "fail"),
        "metrics": metrics
        or {k: v for k, v in section_.get("metrics", {}).items() if isinstance(v, (int, float, str))},
        "reasons": section_.get("reasons", gate.get("reasons", [])),
    }
    if isinstance(section_.get("robust_accuracy_worst"), dict):  # per threat model, from the gate's card summary
        summary["robust_accuracy_worst"] = section_["robust_accuracy_worst"]
    return summary


def check_gate(gate_json: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Refuse unless the gate passed, both in metrics/gate.json and in the card."""
    if not gate_json.is_file():
        raise PackageError(f"{gate_json}: gate result not found; run the gate first")
    gate = read_json(gate_json)
    if not isinstance(gate, dict) or "passed" not in gate:
        raise PackageError(f"{gate_json}: no 'passed' key; not a gate result")
    if gate["passed"] is not True:
        reasons = gate.get("reasons") or card.get("gate", {}).get("reasons") or []
        raise PackageError(
            f"{gate_json}: the gate did not pass this model; nothing is packaged"
            + (f" (reasons: {'; '.join(map(str, reasons))})" if reasons else "")
        )
    card_gate = card.get("gate")
    if isinstance(card_gate, dict) and card_gate.get("passed") is False:
        raise PackageError("the model card's gate section says the model failed; nothing is packaged")
    return gate_summary(gate, card)


def collect_calibrations(card: dict[str, Any], calibration_dir: Path) -> dict[str, Path]:
    """The calibration file of every camera the model was trained on, version-checked."""
    files = {}
    for camera_id, version in sorted(card["calibrations"].items()):
        path = calibration_dir / f"{camera_id}.yaml"
        cal = load_calibration(path)
        if cal.version != version:
            raise PackageError(
                f"{path}: camera {camera_id!r} is at calibration {cal.version!r} but the model was trained "
                f"and gated on {version!r}; retrain (the calibration trigger) before packaging"
            )
        files[camera_id] = path
    if not files:
        raise PackageError("the model card lists no calibrations; the service would know no camera")
    return files


def model_labels_and_metadata(
    card: dict[str, Any], gate: dict[str, Any], params: PackageParams
) -> tuple[dict[str, str], dict[str, Any]]:
    """Store labels (strings, for filtering) and metadata (lineage) of the model entry."""
    data = card.get("data", {})
    data_version = str(data.get("hash") or data.get("version") or data.get("prepared_hash") or "unknown")
    git = card.get("git_revision") or git_revision(PROJECT_ROOT)
    labels = {
        "project": "thermops",
        "stage": "gated",
        "gate": "passed" if gate["passed"] else "failed",
        "data_version": data_version[:63],
        "git_revision": str(git)[:63],
    }
    metadata = {
        "git_revision": str(git),
        "package_git_revision": git_revision(PROJECT_ROOT),
        "data_version": data_version,
        "data": data,
        "calibrations": dict(card["calibrations"]),
        "classes": list(card["classes"]),
        "input": card["input"],
        "model": card["model"],
        "gate": gate,
        "envelope": card.get("envelope", {}),
        "metrics": card.get("metrics", {}),
        "params": {"train": card.get("params", {}), "package": params.to_dict()},
    }
    return labels, _without_none(metadata)


def _without_none(value: Any) -> Any:
    """BentoML metadata accepts only basic types: drop None entries (JSON null) recursively."""
    if isinstance(value, dict):
        return {str(k): _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value if v is not None]
    return value


def service_files(bentofile: Path) -> list[Path]:
    """bentofile.yaml and the files of its `include` list: the serving file set, stated once there."""
    spec = yaml.safe_load(bentofile.read_text()) or {}
    ctx = bentofile.resolve().parent
    files = [bentofile.resolve()]
    for pattern in spec.get("include") or []:
        files += sorted(p for p in ctx.glob(pattern) if p.is_file())
    return files


def _content_version(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(hash_files(paths, root=None).encode() + extra.encode())
    return h.hexdigest()[:16]


def run(
    params: PackageParams,
    model_dir: Path,
    gate_json: Path,
    calibration_dir: Path,
    out: Path,
    *,
    bentofile: Path = PROJECT_ROOT / "bentofile.yaml",
) -> dict[str, str]:
    """Save the gated model to the BentoML store and build the bento.

    Args:
        params: the `package` section.
        model_dir: the gated model directory (model.pt + card.json with gate and envelope).
        gate_json: metrics/gate.json; packaging is refused unless `passed` is true.
        calibration_dir: data/calibration, for the calibration files the model was trained on.
        out: models/bento.json, written with the bento and model tags.
        bentofile: the bento build file (its folder is the build context).

    Returns:
        {"bento_tag", "model_tag"}: content tags only (models/bento.json is hashed into dvc.lock,
        so nothing of this machine, such as the BentoML home, may be in it).
    """
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    card = load_card(model_dir)
    gate = check_gate(gate_json, card)
    # Loading proves the state dict matches the card and loads with weights_only=True.
    load_model_dir(model_dir)
    calibrations = collect_calibrations(card, calibration_dir)

    import bentoml
    from bentoml.exceptions import NotFound

    labels, metadata = model_labels_and_metadata(card, gate, params)
    sources = [model_dir / "model.pt", model_dir / "card.json", *calibrations.values()]
    version = _content_version(sources, repr(sorted(labels.items())) + repr(params.to_dict()))
    tag = bentoml.Tag(params.model_name, version)
    try:
        bentoml.models.delete(tag)  # same content, same tag: packaging twice replaces, never duplicates
    except NotFound:
        pass
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as entry:
        target = Path(entry.path)
        shutil.copy2(model_dir / "model.pt", target / "model.pt")
        shutil.copy2(model_dir / "card.json", target / "card.json")
        (target / "calibration").mkdir()
        for camera_id, path in calibrations.items():
            shutil.copy2(path, target / "calibration" / f"{camera_id}.yaml")

    args = {
        "model_tag": str(tag),
        "input_frames": int(card["input"]["frames"]),
        "input_size": int(card["input"]["size"]),
        **params.to_dict(),
    }
    build_ctx = bentofile.resolve().parent
    bento_version = _content_version(service_files(bentofile), str(tag) + repr(sorted(args.items())))
    bento_tag = bentoml.Tag(params.bento_name, bento_version)
    try:
        bentoml.bentos.delete(bento_tag)
    except NotFound:
        pass
    try:
        bento = bentoml.bentos.build_bentofile(
            str(bentofile), build_ctx=str(build_ctx), name=params.bento_name, version=bento_version, args=args
        )
    except Exception as err:
        # No half-packaged state: a model entry without its bento is removed again.
        bentoml.models.delete(tag)
        raise PackageError(f"{bentofile}: bento build failed: {type(err).__name__}: {err}") from err
    result = {"bento_tag": str(bento.tag), "model_tag": str(tag)}
    write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; knobs from the `package` section of params.yaml."""
    a = parser(
        __doc__,
        ("--model", "models/gated"),
        ("--gate", "metrics/gate.json"),
        ("--calibration", "data/calibration"),
        ("--bentofile", "bentofile.yaml"),
        ("--out", "models/bento.json"),
    ).parse_args(argv)

    def go() -> str:
        params = section(load_params(a.params), "package", PackageParams)
        result = run(params, a.model, a.gate, a.calibration, a.out, bentofile=a.bentofile)
        return f"bento {result['bento_tag']} (model {result['model_tag']})"

    run_cli(go)


if __name__ == "__main__":
    main()
