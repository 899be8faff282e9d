"""The calibration watcher's machinery: the deployed model's lineage, the watcher's
state, and one scan of every camera against the deployed model.

The comparison of two calibrations is pure and lives in `thermops.camera.change`;
this module adds what only the watcher needs: reading the deployed model (model
card or BentoML model store), a locked state file of handled versions, and the
scan. The CLI is `pipeline.recalibrate`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thermops.camera.calibration import Calibration, CalibrationError, load_calibration, load_calibrations
from thermops.camera.change import ChangeReport, Envelope, TriggerParams, compare, new_camera_report
from thermops.camera.registry import camera_path, find_calibration_version
from thermops.io import write_json

log = logging.getLogger("thermops.trigger")

# -- the deployed model's lineage ------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    """What the deployed model was trained and gated on."""

    calibrations: dict[str, str]
    envelope: Envelope
    source: str
    snapshot_dir: Path | None = None  # calibration files copied into the bento model entry


def _bento_model_path(bento_json: Path) -> tuple[Path | None, dict[str, Any]]:
    """(model entry folder, metadata) of the packaged model named in models/bento.json."""
    info = json.loads(bento_json.read_text())
    tag = info.get("model_tag") if isinstance(info, dict) else None
    if not tag:
        return None, {}
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    try:
        import bentoml

        model = bentoml.models.get(tag)
    except Exception as err:  # noqa: BLE001 - a missing store entry just means no snapshot
        log.debug("bento model %s not readable: %s", tag, err)
        return None, {}
    return Path(model.path), dict(model.info.metadata or {})


def load_deployed(card_path: str | Path, bento_json: str | Path | None = None) -> Deployed | None:
    """The deployed model's calibrations and envelope: the gated card, else the bento metadata."""
    card_path = Path(card_path)
    bento_json = Path(bento_json) if bento_json else None
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text())
        except json.JSONDecodeError as err:
            raise CalibrationError(f"{card_path}: model card is not valid JSON: {err}") from None
        cals = card.get("calibrations") if isinstance(card, dict) else None
        if not isinstance(cals, dict):
            raise CalibrationError(f"{card_path}: model card has no `calibrations` map")
        snap = None
        if bento_json is not None and bento_json.is_file():
            path, meta = _bento_model_path(bento_json)
            if path is not None and meta.get("calibrations") == cals:
                snap = path / "calibration"
        return Deployed({str(k): str(v) for k, v in cals.items()}, Envelope.from_card(card), str(card_path), snap)
    if bento_json is not None and bento_json.is_file():
        path, meta = _bento_model_path(bento_json)
        if path is not None and isinstance(meta.get("calibrations"), dict):
            card_like = {"envelope": meta.get("envelope") or {}, "input": meta.get("input") or {}}
            cals = {str(k): str(v) for k, v in meta["calibrations"].items()}
            return Deployed(cals, Envelope.from_card(card_like), f"bento model {path.name}", path / "calibration")
    return None


def deployed_calibration(directory: str | Path, camera_id: str, version: str, deployed: Deployed) -> Calibration | None:
    """The content of the calibration the model was trained on: git history, else the bento snapshot."""
    cal = find_calibration_version(directory, camera_id, version)
    if cal is not None:
        return cal
    if deployed.snapshot_dir is not None:
        snap = deployed.snapshot_dir / f"{camera_id}.yaml"
        if snap.is_file():
            cal = load_calibration(snap)
            if cal.version == version:
                return cal
    return None


# -- the watcher's state ---------------------------------------------------------------

STATE_FORMAT = "thermops-trigger-state/1"


class TriggerState:
    """Handled (camera, version) pairs, persisted atomically as JSON."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.handled: dict[str, dict[str, dict[str, Any]]] = {}
        self.failed: dict[str, dict[str, dict[str, Any]]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise CalibrationError(f"{self.path}: trigger state is not valid JSON: {err}") from None
            if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
                raise CalibrationError(f"{self.path}: not a {STATE_FORMAT} file")
            self.handled = data.get("handled", {})
            self.failed = data.get("failed", {})

    def get(self, camera_id: str, version: str) -> dict[str, Any] | None:
        """The record of a handled (camera, version), or None."""
        return self.handled.get(camera_id, {}).get(version)

    def record(self, report: ChangeReport, fingerprint: str, action: str) -> None:
        """Mark (camera, version) handled; call `save` to persist."""
        self.handled.setdefault(report.camera_id, {})[report.new_version] = {
            "fingerprint": fingerprint,
            "material": report.material,
            "action": action,
            "deployed_version": report.old_version,
            "summary": report.summary(),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        self.failed.get(report.camera_id, {}).pop(report.new_version, None)

    def attempts(self, camera_id: str, version: str) -> int:
        """Failed retrain attempts for (camera, version)."""
        return int(self.failed.get(camera_id, {}).get(version, {}).get("attempts", 0))

    def record_failure(self, report: ChangeReport, error: str) -> None:
        """Count a failed retrain of (camera, version); it is retried up to `trigger.max_attempts`."""
        self.failed.setdefault(report.camera_id, {})[report.new_version] = {
            "attempts": self.attempts(report.camera_id, report.new_version) + 1,
            "last_error": error,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    def save(self) -> None:
        """Write atomically; the folder ignores itself in git (runtime state, not source)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ignore = self.path.parent / ".gitignore"
        if self.path.parent.name.startswith(".") and not ignore.exists():
            ignore.write_text("*\n")
        failed = {cam: v for cam, v in self.failed.items() if v}
        write_json(self.path, {"format": STATE_FORMAT, "handled": self.handled, "failed": failed})

    @contextlib.contextmanager
    def locked(self) -> Iterator[TriggerState]:
        """Hold an exclusive lock so two watchers never handle the same change at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield TriggerState(self.path)  # re-read under the lock
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


# -- one pass of the watcher -----------------------------------------------------------


@dataclass
class Scan:
    """Result of comparing every camera with the deployed model."""

    reports: list[ChangeReport] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    already_handled: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # not deployed and not in the pipeline's sources
    gave_up: list[str] = field(default_factory=list)  # retrain failed trigger.max_attempts times

    @property
    def material(self) -> list[ChangeReport]:
        return [r for r in self.reports if r.material]


def cameras_in_use(params: dict[str, Any]) -> set[str] | None:
    """Cameras the pipeline trains on: `cameras` (if `synthetic` is a data source) and the
    cameras of the imported sources named in `data.sources`; None when params do not say."""
    try:
        sources = list(params["data"]["sources"])
        used: set[str] = set(params["cameras"]) if "synthetic" in sources else set()
        for name in sources:
            if name == "synthetic":
                continue
            cfg = params["ingest"]["sources"][name]
            used.update([cfg["camera_id"]] if cfg.get("camera_id") else [])
            used.update(cfg.get("cameras") or [])
        return used
    except (KeyError, TypeError):
        return None


def scan(
    calibration_dir: str | Path,
    deployed: Deployed,
    state: TriggerState,
    *,
    trigger: TriggerParams,
    window_m: float,
    input_size: int,
    in_use: set[str] | None = None,
) -> Scan:
    """Compare each camera's current calibration with the deployed one; skip handled versions.

    A camera the deployed model never saw is material if the pipeline would train on
    it (`in_use`; None: every camera), else only listed as unused. Raises
    CalibrationError (and nothing is triggered) if any calibration file is
    malformed, or if a file changed without a new version.
    """
    current = load_calibrations(calibration_dir)  # one malformed file stops the whole scan
    out = Scan()
    for camera_id, cal in current.items():
        fp = cal.fingerprint()
        done = state.get(camera_id, cal.version)
        if done is not None:
            if done.get("fingerprint") != fp:
                raise CalibrationError(
                    f"{camera_path(calibration_dir, camera_id)}: content changed but version {cal.version!r} was "
                    "already handled; record a new calibration (python -m pipeline.recalibrate record) "
                    "instead of editing in place"
                )
            out.already_handled.append(camera_id)
            continue
        if state.attempts(camera_id, cal.version) >= trigger.max_attempts:
            out.gave_up.append(camera_id)
            continue
        version = deployed.calibrations.get(camera_id)
        if version is None and in_use is not None and camera_id not in in_use:
            out.unused.append(camera_id)
            continue
        if version is None:
            rep = new_camera_report(cal)
        else:
            old = deployed_calibration(calibration_dir, camera_id, version, deployed)
            if old is None:
                if version == cal.version:
                    out.unchanged.append(camera_id)
                    continue
                # No way to bound the change: retraining is the safe side.
                why = f"the deployed calibration {version!r} is neither in git history nor in the bento snapshot"
                rep = ChangeReport(camera_id, version, cal.version, material_reasons=[why])
            elif old.fingerprint() == fp:
                out.unchanged.append(camera_id)
                continue
            elif version == cal.version:
                raise CalibrationError(
                    f"{camera_path(calibration_dir, camera_id)}: content differs from the deployed calibration but "
                    f"keeps its version {version!r}; record a new calibration (python -m pipeline.recalibrate record)"
                )
            else:
                rep = compare(
                    old, cal, trigger=trigger, envelope=deployed.envelope, window_m=window_m, input_size=input_size
                )
        out.reports.append(rep)
        out.fingerprints[camera_id] = fp
    return out
