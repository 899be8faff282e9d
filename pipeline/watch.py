"""The calibration watcher's machinery: the deployed model's lineage, the watcher's
state, one scan of every camera, the supervised local retrain and the exported metrics.

The comparison of two calibrations is pure and lives in `thermops.camera.change`;
this module adds what only the watcher needs. The CLI and the decisions of a pass
are `pipeline.recalibrate`.

- **Lineage** (`deployed_lineage`): the one function that says which model is
  deployed and what it was trained and gated on: `--deployed-model`, else the
  production model (`pipeline.production`), else, only when nothing was ever
  promoted, the packaged candidate of models/bento.json. Never the gate's output
  folder (`models/gated` is written even when the gate refuses the model).
- **State** (`StateStore`): a JSON file (`trigger.state_file`), changed only inside
  `transaction()` (an exclusive lock, re-read, atomic write), so two watchers, or a
  watcher and `reset`, never lose each other's changes. A second lock is held for a
  whole pass (`pass_lock`): a second watcher skips its pass instead of waiting.
- **Scan** (`scan`): every camera on its own: a malformed file is that camera's
  problem, reported every pass, and every other camera is still compared.
- **Retrains** (`LocalJob`): `pipeline.supervise` leads a process group holding the
  whole retrain; the job is recorded in the state before it starts, so a watcher
  that restarts finds it and adopts it, and a stopped watcher stops it.
- **Metrics** (`write_metrics`): the cameras' states after every pass, in the
  Prometheus text format (a node exporter's textfile collector reads it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.supervise import is_running, record_paths
from thermops.camera.calibration import Calibration, CalibrationError, load_calibration
from thermops.camera.change import ChangeReport, Envelope, TriggerParams, compare, new_camera_report
from thermops.camera.registry import camera_path, find_calibration_version, is_canonical
from thermops.io import write_json

log = logging.getLogger("thermops.trigger")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds")


def parse_iso(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


# -- the deployed model's lineage ------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    """What the deployed model was trained and gated on."""

    calibrations: dict[str, str]
    envelope: Envelope
    source: str
    snapshot_dir: Path | None = None  # calibration files copied into the model entry


def _from_card(card: Any, source: str, snapshot_dir: Path | None) -> Deployed:
    if not isinstance(card, dict) or not isinstance(card.get("calibrations"), dict):
        raise CalibrationError(f"{source}: no `calibrations` map; not a thermops model")
    gate = card.get("gate")
    if isinstance(gate, dict) and gate.get("passed") is not True:
        raise CalibrationError(f"{source}: the gate did not pass this model, so it cannot be the deployed one")
    cals = {str(k): str(v) for k, v in card["calibrations"].items()}
    snap = snapshot_dir if snapshot_dir is not None and snapshot_dir.is_dir() else None
    return Deployed(cals, Envelope.from_card(card), source, snap)


def read_model_dir(path: Path) -> Deployed:
    """A model folder as the package step stores it: card.json and calibration/<camera>.yaml."""
    card_path = path / "card.json"
    if not card_path.is_file():
        raise CalibrationError(f"{path}: no card.json; not a model folder")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as err:
        raise CalibrationError(f"{card_path}: not valid JSON: {err}") from None
    return _from_card(card, f"model folder {path}", path / "calibration")


def _bento_model(bento_json: Path) -> tuple[str, Path, dict[str, Any]]:
    """(tag, model entry folder, metadata) of the packaged model named in models/bento.json."""
    try:
        info = json.loads(bento_json.read_text())
    except json.JSONDecodeError as err:
        raise CalibrationError(f"{bento_json}: not valid JSON: {err}") from None
    tag = info.get("model_tag") if isinstance(info, dict) else None
    if not tag:
        raise CalibrationError(f"{bento_json}: no model_tag")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound:
        raise CalibrationError(
            f"{bento_json}: model {tag} is not in this machine's BentoML store; cannot tell what is deployed"
        ) from None
    return str(tag), Path(model.path), dict(model.info.metadata or {})


REGISTRY = Path("deploy/production.json")  # = pipeline.production.REGISTRY (git-tracked)
PULL_HINT = "python -m pipeline.production pull"


def deployed_lineage(root: Path, *, model_dir: Path | None = None, bento_json: Path | None = None) -> Deployed | None:
    """The deployed model's calibrations, envelope and calibration snapshots; None when nothing is deployed.

    THE one place the watcher learns what is deployed; `Deployed.source` names where from:

    1. `model_dir`, a model folder given by the operator (`--deployed-model`);
    2. else the production model (`pipeline.production.current`: deploy/production.json names
       the version, the store `production.store` holds its card.json and calibration/
       snapshots): what the cluster serves, on any machine that can read the store. A
       registry or store that cannot give it is a CalibrationError naming the store and
       the fix (`python -m pipeline.production pull`), never a silent fallback;
    3. only when nothing was ever promoted (an empty or absent registry): the packaged
       candidate named in `bento_json` (default `models/bento.json`) from this machine's
       BentoML store (a single workstation that never promotes). The package step
       writes it only for a model the gate passed.

    Never `models/gated` (written even when the gate refuses the model).
    """
    if model_dir is not None:
        return read_model_dir(model_dir if model_dir.is_absolute() else root / model_dir)
    prod = _production_lineage(root)
    if prod is not None:
        return prod
    bento_json = bento_json if bento_json is not None else Path("models/bento.json")
    bento_json = bento_json if bento_json.is_absolute() else root / bento_json
    if not bento_json.is_file():
        return None
    tag, path, meta = _bento_model(bento_json)
    return _from_card(
        meta,
        f"bento model {tag} (the packaged candidate of {bento_json.name}: nothing was ever promoted to production)",
        path / "calibration",
    )


def _production_lineage(root: Path) -> Deployed | None:
    """The production model's lineage, or None when nothing was ever promoted."""
    from pipeline import production  # the registry and store (a pipeline module, never from thermops)

    if not (root / REGISTRY).is_file():
        return None  # a project from before the registry: nothing can have been promoted
    try:
        reg = production.registry(root)
        if reg.current_release() is None:
            if reg.versions:
                raise CalibrationError(
                    f"{root / REGISTRY}: versions were promoted but none is production now; "
                    "promote or roll back one (python -m pipeline.production)"
                )
            return None
        prod = production.current(root)
    except CalibrationError:
        raise
    except (ValueError, OSError) as err:  # RegistryError, StoreError, ParamsError, an unreadable file
        store = _store_url(root)
        raise CalibrationError(
            f"cannot read the production model (registry {root / REGISTRY}, store {store}): {err}; "
            f"fix access to the store, then `{PULL_HINT}`"
        ) from None
    if prod is None:
        return None
    source = f"production version {prod.version} ({prod.tag}, store {prod.store})"
    return dataclasses.replace(read_model_dir(prod.path), source=source)


def _store_url(root: Path) -> str:
    from pipeline import production

    try:
        return production.production_params(root).store
    except (ValueError, OSError) as err:
        return f"unknown ({err})"


def deployed_calibration(directory: str | Path, camera_id: str, version: str, deployed: Deployed) -> Calibration | None:
    """The content of the calibration the model was trained on: its snapshot, else git history."""
    if deployed.snapshot_dir is not None:
        snap = deployed.snapshot_dir / f"{camera_id}.yaml"
        if snap.is_file():
            try:
                cal = load_calibration(snap)
            except CalibrationError as err:
                log.warning("%s: unreadable snapshot in the deployed model: %s", camera_id, err)
            else:
                if cal.version == version:
                    return cal
    return find_calibration_version(directory, camera_id, version)


# -- the watcher's state ---------------------------------------------------------------

STATE_FORMAT = "thermops-trigger-state/2"
OLD_FORMATS = ("thermops-trigger-state/1",)
MAX_EVENTS = 50


class WatcherBusy(RuntimeError):
    """Another watcher holds the pass lock."""


@dataclass
class TriggerState:
    """Handled versions, pending (failed, refused, blocked) versions, the current retrain job, events.

    - handled[camera][version]: the change was dealt with (immaterial, or retrained).
    - pending[camera][version]: a material change not retrained yet: `attempts` (retrains
      that ran and failed or were refused; only these count against max_attempts),
      `outcome` of the last try, `message`, `reasons`, `next_try_at`.
    - job: the retrain in progress (local process group or Kubeflow run), recorded
      before it starts.
    - events: the last interruptions, adoptions and resets, newest last.
    """

    handled: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    pending: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    job: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    last_pass: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> TriggerState:
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CalibrationError(f"{path}: trigger state is not valid JSON: {err}") from None
        fmt = data.get("format") if isinstance(data, dict) else None
        if fmt in OLD_FORMATS:  # format 1: `failed` held attempts only
            pending = {
                cam: {v: {"attempts": int(r.get("attempts", 0)), "outcome": "failed", "message": r.get("last_error")}}
                for cam, vs in (data.get("failed") or {}).items()
                for v, r in vs.items()
            }
            return cls(handled=data.get("handled") or {}, pending=pending)
        if fmt != STATE_FORMAT:
            raise CalibrationError(f"{path}: not a {STATE_FORMAT} file")
        return cls(
            handled=data.get("handled") or {},
            pending=data.get("pending") or {},
            job=data.get("job"),
            events=data.get("events") or [],
            last_pass=data.get("last_pass"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "handled": self.handled,
            "pending": {cam: v for cam, v in self.pending.items() if v},
            "job": self.job,
            "events": self.events[-MAX_EVENTS:],
            "last_pass": self.last_pass,
        }

    # handled ---------------------------------------------------------------------------
    def get(self, camera_id: str, version: str) -> dict[str, Any] | None:
        """The record of a handled (camera, version), or None."""
        return self.handled.get(camera_id, {}).get(version)

    def record(self, report: ChangeReport, fingerprint: str, action: str) -> None:
        """Mark (camera, version) handled; its pending record goes."""
        self.mark(
            report.camera_id,
            report.new_version,
            fingerprint=fingerprint,
            material=report.material,
            action=action,
            deployed_version=report.old_version,
            summary=report.summary(),
        )

    def mark(
        self,
        camera_id: str,
        version: str,
        *,
        fingerprint: str,
        material: bool,
        action: str,
        deployed_version: str | None,
        summary: str,
    ) -> None:
        """Mark (camera, version) handled (see `record`)."""
        self.handled.setdefault(camera_id, {})[version] = {
            "fingerprint": fingerprint,
            "material": material,
            "action": action,
            "deployed_version": deployed_version,
            "summary": summary,
            "at": iso(utcnow()),
        }
        self.pending.get(camera_id, {}).pop(version, None)

    def mark_retrained(self, cameras: dict[str, dict[str, Any]], action: str) -> None:
        """Mark every camera of a retrain that succeeded handled; `cameras` is the job's record of them."""
        for cam, info in cameras.items():
            self.mark(
                cam,
                info["version"],
                fingerprint=info["fingerprint"],
                material=True,
                action=action,
                deployed_version=info.get("deployed_version"),
                summary=info.get("summary", ""),
            )

    # pending ---------------------------------------------------------------------------

    def pending_record(self, camera_id: str, version: str) -> dict[str, Any] | None:
        return self.pending.get(camera_id, {}).get(version)

    def attempts(self, camera_id: str, version: str) -> int:
        """Retrains of (camera, version) that ran and failed, or that the gate refused."""
        return int((self.pending_record(camera_id, version) or {}).get("attempts", 0))

    def note(
        self,
        camera_id: str,
        version: str,
        outcome: str,
        message: str,
        *,
        counted: bool,
        reasons: list[str] | None = None,
        backoff_s: float = 0.0,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record the outcome of a retrain try for (camera, version); `counted` adds an attempt.

        A counted failure waits `backoff_s * 2^(attempts-1)` before the next try.
        """
        now = utcnow()
        rec = self.pending.setdefault(camera_id, {}).setdefault(version, {"attempts": 0})
        if counted:
            rec["attempts"] = int(rec.get("attempts", 0)) + 1
            rec["next_try_at"] = iso(now + dt.timedelta(seconds=backoff_s * 2 ** (rec["attempts"] - 1)))
        rec.update({"outcome": outcome, "message": message, "reasons": list(reasons or []), "at": iso(now)})
        rec.update(extra or {})
        return rec

    def reset(self, camera_id: str | None, version: str | None = None) -> list[tuple[str, str]]:
        """Forget failed attempts (all cameras, a camera, or one version); returns what was cleared."""
        cleared = []
        for cam in [camera_id] if camera_id else list(self.pending):
            versions = self.pending.get(cam, {})
            for v in [version] if version else list(versions):
                if versions.pop(v, None) is not None:
                    cleared.append((cam, v))
        return cleared

    def event(self, kind: str, message: str, **extra: Any) -> None:
        self.events.append({"at": iso(utcnow()), "kind": kind, "message": message, **extra})
        del self.events[:-MAX_EVENTS]


class StateStore:
    """The state file and its locks (`trigger.state_file`; the locks and retrain logs live beside it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def retrains_dir(self) -> Path:
        """Start/exit records and logs of local retrains."""
        return self.path.parent / "retrains"

    def _prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ignore = self.path.parent / ".gitignore"
        if self.path.parent.name.startswith(".") and not ignore.exists():
            ignore.write_text("*\n")  # runtime state, not source

    def read(self) -> TriggerState:
        """The state as last written (writes are atomic, so no lock is needed to read)."""
        return TriggerState.load(self.path)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[TriggerState]:
        """Lock, re-read, yield, write atomically (only if the block succeeds), unlock."""
        self._prepare()
        with open(self.path.with_name(self.path.name + ".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                state = TriggerState.load(self.path)
                yield state
                write_json(self.path, state.to_json())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def pass_lock(self) -> Iterator[None]:
        """Held for a whole pass; raises WatcherBusy (with the holder) if another watcher holds it.

        The file descriptor is not inherited by the retrain (close-on-exec), so a
        retrain that outlives a killed watcher does not keep the next one out.
        """
        self._prepare()
        path = self.path.with_name(self.path.stem + ".pass.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = Path(path).read_text().strip() or "unknown"
                raise WatcherBusy(f"another watcher is in a pass ({holder})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {iso(utcnow())}\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# -- one scan of every camera ----------------------------------------------------------


@dataclass
class Scan:
    """Every camera compared with the deployed model."""

    reports: list[ChangeReport] = field(default_factory=list)  # to act on (material or immaterial)
    fingerprints: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # current version of every loadable camera
    unchanged: list[str] = field(default_factory=list)  # same calibration as the deployed model
    already_handled: list[str] = field(default_factory=list)  # immaterial change, handled before
    awaiting: dict[str, dict[str, Any]] = field(default_factory=dict)  # retrained, not (yet) promoted
    unused: list[str] = field(default_factory=list)  # not deployed and not in the pipeline's sources
    problems: dict[str, str] = field(default_factory=dict)  # malformed, or edited in place
    noncanonical: list[str] = field(default_factory=list)  # not in the form the CLI writes (DVC re-runs)
    removed: list[str] = field(default_factory=list)  # in the deployed model, no file any more

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
    """Compare each camera's current calibration with the deployed one, camera by camera.

    A camera the deployed model never saw is material if the pipeline would train on
    it (`in_use`; None: every camera), else only listed as unused. A malformed file, or
    one edited without a new version, is that camera's problem (`problems`); the other
    cameras are compared as usual.
    """
    calibration_dir = Path(calibration_dir)
    if not calibration_dir.is_dir():
        raise CalibrationError(f"{calibration_dir}: calibration folder not found")
    out = Scan()
    for path in sorted(calibration_dir.glob("*.yaml")):
        camera_id = path.stem
        try:
            cal = load_calibration(path)
            if not is_canonical(path, cal):
                out.noncanonical.append(camera_id)
            _scan_one(out, camera_id, cal, calibration_dir, deployed, state, trigger, window_m, input_size, in_use)
        except CalibrationError as err:
            out.problems[camera_id] = str(err)
    seen = {p.stem for p in calibration_dir.glob("*.yaml")}
    out.removed = sorted(set(deployed.calibrations) - seen)
    return out


def _scan_one(
    out: Scan,
    camera_id: str,
    cal: Calibration,
    calibration_dir: Path,
    deployed: Deployed,
    state: TriggerState,
    trigger: TriggerParams,
    window_m: float,
    input_size: int,
    in_use: set[str] | None,
) -> None:
    fp = cal.fingerprint()
    out.versions[camera_id] = cal.version
    version = deployed.calibrations.get(camera_id)
    where = camera_path(calibration_dir, camera_id)
    if version == cal.version:
        old = deployed_calibration(calibration_dir, camera_id, version, deployed)
        if old is None or old.fingerprint() == fp:
            out.unchanged.append(camera_id)
            return
        raise CalibrationError(
            f"{where}: content differs from the deployed calibration but keeps its version {version!r}; "
            "record a new calibration (python -m pipeline.recalibrate record) instead of editing in place"
        )
    done = state.get(camera_id, cal.version)
    if done is not None:
        if done.get("fingerprint") != fp:
            raise CalibrationError(
                f"{where}: content changed but version {cal.version!r} was already handled; record a new "
                "calibration (python -m pipeline.recalibrate record) instead of editing in place"
            )
        if done.get("material"):
            out.awaiting[camera_id] = {"version": cal.version, "deployed_version": version, **done}
        else:
            out.already_handled.append(camera_id)
        return
    if version is None and in_use is not None and camera_id not in in_use:
        out.unused.append(camera_id)
        return
    if version is None:
        rep = new_camera_report(cal, deployed.envelope, window_m=window_m, input_size=input_size, grid=trigger.roi_grid)
    else:
        old = deployed_calibration(calibration_dir, camera_id, version, deployed)
        if old is None:
            # No way to bound the change: retraining is the safe side.
            why = f"the deployed calibration {version!r} is neither in the model's snapshot nor in git history"
            rep = ChangeReport(camera_id, version, cal.version, material_reasons=[why])
        else:
            rep = compare(
                old, cal, trigger=trigger, envelope=deployed.envelope, window_m=window_m, input_size=input_size
            )
    out.reports.append(rep)
    out.fingerprints[camera_id] = fp


# -- the supervised local retrain -----------------------------------------------------------

LOCK_CONFLICT = re.compile(r"is busy, it is being blocked by|Unable to acquire lock")
STAGE_FAILED = re.compile(r"failed to reproduce '([^']+)': failed to run: .*, exited with (-?\d+)")


class Stopped(BaseException):
    """The watcher was asked to stop (SIGTERM, SIGINT, SIGHUP) while waiting."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_stopped(signum: int, _frame: Any) -> None:
    """Signal handler: stop the wait loop (the retrain is then stopped with the watcher)."""
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold back SIGTERM, SIGINT and SIGHUP (a second Ctrl-C must not leave a retrain half stopped
    or its record unwritten); a held signal is delivered when the block ends."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def install_stop_handlers() -> None:
    """SIGTERM, SIGINT and SIGHUP stop the watcher, and with it its retrain."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, raise_stopped)


def resolve_command(cmd: tuple[str, ...] | list[str]) -> list[str]:
    """`python` as the first word is this interpreter (the watcher's environment)."""
    cmd = list(cmd)
    return [sys.executable, *cmd[1:]] if cmd[0] == "python" else cmd


@dataclass
class Outcome:
    """How a retrain ended: succeeded, failed, refused (by the gate), lock (DVC lock held), interrupted."""

    kind: str
    message: str
    reasons: list[str] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def counted(self) -> bool:
        """Only a retrain that ran and failed, or that the gate refused, counts against max_attempts."""
        return self.kind in ("failed", "refused")


@dataclass
class GateVerdict:
    """Where the gate writes its verdict (params `kubeflow.gate`: stage, metrics file, key)."""

    stage: str
    metrics: Path
    key: str


class LocalJob:
    """One local retrain: `pipeline.supervise` in its own session, recorded in the state before it starts."""

    def __init__(self, record: dict[str, Any]):
        self.record = record

    @classmethod
    def new(cls, store: StateStore, cmd: list[str], root: Path, cameras: dict[str, dict[str, Any]]) -> LocalJob:
        job_id = f"{utcnow():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        prefix = store.retrains_dir / job_id
        return cls(
            {
                "kind": "local",
                "id": job_id,
                "cmd": cmd,
                "cwd": str(root),
                "record": str(prefix),
                "cameras": cameras,
                "recorded_at": iso(utcnow()),
                "watcher_pid": os.getpid(),
            }
        )

    @property
    def prefix(self) -> Path:
        return Path(self.record["record"])

    @property
    def log_path(self) -> Path:
        return record_paths(self.prefix)[1]

    def start_info(self) -> dict[str, Any] | None:
        start = record_paths(self.prefix)[0]
        try:
            return json.loads(start.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def exit_info(self) -> dict[str, Any] | None:
        exit_ = record_paths(self.prefix)[2]
        try:
            return json.loads(exit_.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def start(self) -> subprocess.Popen:
        """Start the runner as the leader of a new process group; every process of the retrain is in it."""
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "THERMOPS_RETRAIN_ID": self.record["id"]}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.supervise", "--record", str(self.prefix), "--cwd", self.record["cwd"],
             "--", *self.record["cmd"]],
            cwd=self.record["cwd"],
            env={**env, "PYTHONPATH": _pythonpath(env)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, not the watcher's
        )  # fmt: skip
        self.record.update({"pid": proc.pid, "pgid": proc.pid})
        return proc

    def alive(self) -> bool:
        """Whether the recorded runner is still running (same pid, start time and boot)."""
        info = self.start_info() or {}
        pid = info.get("pid") or self.record.get("pid")
        return is_running(pid, info.get("start_ticks"), info.get("boot_id"))

    def pgid(self) -> int | None:
        info = self.start_info() or {}
        return info.get("pgid") or self.record.get("pgid")

    def wait(self, proc: subprocess.Popen | None, *, poll_s: float = 0.25) -> None:
        """Wait for the retrain to end, following its log; Stopped propagates (the caller stops it)."""
        follower = LogFollower(self.log_path)
        try:
            while True:
                follower.emit()
                if proc is not None:
                    if proc.poll() is not None:
                        break
                elif not self.alive():
                    break
                time.sleep(poll_s)
        finally:
            follower.emit()

    def stop(self, grace_s: float) -> None:
        """SIGTERM to the whole group, SIGKILL after `grace_s`; returns when no process of it is left."""
        pgid = self.pgid()
        if not pgid:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                _reap(self.record.get("pid"))
                if not _group_alive(pgid):
                    return
                time.sleep(0.1)

    def outcome(self, started: dt.datetime, gate: GateVerdict | None) -> Outcome:
        """How the retrain ended, from its exit record and log (and the gate's verdict file)."""
        end = self.exit_info()
        if end is None:
            return Outcome("interrupted", "the retrain's runner was killed before it recorded an exit")
        code = end.get("exit_code")
        if end.get("signal"):
            return Outcome("interrupted", f"the retrain was stopped by signal {end['signal']}", exit_code=code)
        if code == 0:
            return Outcome("succeeded", "the retrain succeeded", exit_code=0)
        text = _tail(self.log_path, 200_000)
        if LOCK_CONFLICT.search(text):
            blocker = re.search(r"\(PID (\d+)\): ([^\n]*)", text)
            who = f" (PID {blocker.group(1)}: {blocker.group(2).strip()})" if blocker else ""
            return Outcome("lock", f"DVC's lock is held by another process{who}; not counted", exit_code=code)
        failed_stage = STAGE_FAILED.search(text)
        refused = verdict_refused(gate, started)
        if gate is not None and (
            refused is not None
            or (failed_stage and failed_stage.group(1) == gate.stage and int(failed_stage.group(2)) == 3)
        ):
            reasons = refused if refused else ["see the retrain log"]
            return Outcome("refused", "the gate refused the retrained model", reasons, exit_code=code)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("ERROR", "error:"))] or lines[-3:]
        return Outcome("failed", f"exit status {code}: " + " | ".join(errors[-3:])[:800], exit_code=code)


def verdict_refused(gate: GateVerdict | None, since: dt.datetime) -> list[str] | None:
    """The gate's reasons if its verdict file was written since `since` and says it did not pass."""
    if gate is None or not gate.metrics.is_file():
        return None
    if gate.metrics.stat().st_mtime < since.timestamp() - 1.0:
        return None  # an older verdict, not this retrain's
    try:
        verdict = json.loads(gate.metrics.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(verdict, dict) or verdict.get(gate.key) is not False:
        return None
    reasons = verdict.get("reasons") or []
    return [str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)]


def _pythonpath(env: dict[str, str]) -> str:
    """The runner is `pipeline.supervise` of this checkout, wherever the watcher's project is."""
    here = str(Path(__file__).resolve().parents[1])
    rest = env.get("PYTHONPATH", "")
    return here + (os.pathsep + rest if rest else "")


def _reap(pid: int | None) -> None:
    """Collect our own exited child (a zombie still counts as a member of its group)."""
    if pid:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group `pgid`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - n))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


class LogFollower:
    """Copies new lines of a retrain's log to the watcher's log."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def emit(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            log.info("| %s", line.decode(errors="replace").rstrip())


def prune_records(directory: Path, keep: int, active: set[str]) -> None:
    """Keep the records of the `keep` newest retrains (and of any active one)."""
    if not directory.is_dir():
        return
    ids = sorted({p.name.split(".", 1)[0] for p in directory.iterdir() if not p.name.startswith(".")})
    for job_id in ids[:-keep] if keep else ids:
        if job_id in active:
            continue
        for p in directory.glob(job_id + ".*"):
            with contextlib.suppress(OSError):
                p.unlink()


# -- camera states and the exported metrics ------------------------------------------------

# Every state a camera can be in after a pass, and which ones need an operator.
STATES = (
    "deployed",  # same calibration as the deployed model
    "immaterial",  # a new version inside the envelope and thresholds: handled, no retrain
    "unused",  # not deployed and not trained on (not in data.sources)
    "retraining",  # a retrain for it is running (local, or a Kubeflow run)
    "retrained",  # retrained in this pass
    "awaiting_promotion",  # retrained and packaged (handled), but production still has an older version
    "refused",  # the gate refused its retrained model; retried by policy
    "failed",  # its retrain ran and failed; retried by policy
    "gave_up",  # max_attempts retrains ran and failed or were refused; `reset` to retry
    "queued",  # waits for a running Kubeflow run (started for other cameras) to end
    "blocked",  # its retrain could not start this pass (lock held, bad file in use, submission error)
    "malformed",  # its calibration file cannot be read, or was edited without a new version
)
ATTENTION = ("refused", "failed", "gave_up", "blocked", "malformed")


@dataclass
class CameraState:
    """Where one camera stands after a pass."""

    camera: str
    state: str
    version: str | None = None
    deployed_version: str | None = None
    message: str = ""
    attempts: int = 0
    last_outcome: str | None = None  # of its last retrain try (failed, refused, lock, ...)

    def to_dict(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "state": self.state,
            "version": self.version,
            "deployed_version": self.deployed_version,
            "message": self.message,
            "attempts": self.attempts,
            "last_outcome": self.last_outcome,
        }


def describe(s: CameraState | dict[str, Any]) -> str:
    """`camera old -> new: state: message`, the one line a pass logs and `status` prints per camera."""
    d = s.to_dict() if isinstance(s, CameraState) else s
    cam, ver, dep = d["camera"], d.get("version"), d.get("deployed_version")
    if ver and dep and ver != dep:
        head = f"{cam} {dep} -> {ver}"
    elif ver and not dep and d["state"] != "deployed":
        head = f"{cam} (version {ver}, not in the deployed model)"
    else:
        head = cam
    return f"{head}: {d['state']}" + (f": {d['message']}" if d.get("message") else "")


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_metrics(path: Path, states: list[CameraState], exit_code: int, now: dt.datetime | None = None) -> None:
    """The pass's outcome in the Prometheus text exposition format, written atomically."""
    now = now or utcnow()
    lines = [
        "# HELP thermops_watcher_camera_state 1 for the state each camera is in after the last pass.",
        "# TYPE thermops_watcher_camera_state gauge",
    ]
    for s in sorted(states, key=lambda s: s.camera):
        lines.append(
            f'thermops_watcher_camera_state{{camera="{_label(s.camera)}",state="{s.state}",'
            f'version="{_label(s.version or "")}"}} 1'
        )
    lines += [
        "# HELP thermops_watcher_cameras Cameras in each state after the last pass.",
        "# TYPE thermops_watcher_cameras gauge",
    ]
    for st in STATES:
        lines.append(f'thermops_watcher_cameras{{state="{st}"}} {sum(s.state == st for s in states)}')
    lines += [
        "# HELP thermops_watcher_retrain_attempts Retrains of a camera's current version that ran and failed or were refused.",
        "# TYPE thermops_watcher_retrain_attempts gauge",
    ]
    for s in sorted(states, key=lambda s: s.camera):
        if s.attempts:
            lines.append(f'thermops_watcher_retrain_attempts{{camera="{_label(s.camera)}"}} {s.attempts}')
    attention = sum(s.state in ATTENTION for s in states)
    lines += [
        "# HELP thermops_watcher_attention Cameras that need an operator (refused, failed, gave_up, blocked, malformed).",
        "# TYPE thermops_watcher_attention gauge",
        f"thermops_watcher_attention {attention}",
        "# HELP thermops_watcher_pass_exit_code Exit status of the last pass (0 all clear, 3 gate refusal, 4 other attention).",
        "# TYPE thermops_watcher_pass_exit_code gauge",
        f"thermops_watcher_pass_exit_code {exit_code}",
        "# HELP thermops_watcher_last_pass_timestamp_seconds When the last pass ended (Unix time).",
        "# TYPE thermops_watcher_last_pass_timestamp_seconds gauge",
        f"thermops_watcher_last_pass_timestamp_seconds {now.timestamp():.0f}",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def exit_status(states: list[CameraState]) -> int:
    """0 when no camera needs an operator; 3 when one waits on a gate refusal; 4 for any other attention."""
    if any(s.state == "refused" or (s.state == "gave_up" and s.last_outcome == "refused") for s in states):
        return 3
    if any(s.state in ATTENTION for s in states):
        return 4
    return 0
