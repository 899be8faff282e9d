"""The cameras a service knows: those the model was trained on, plus display8 cameras
registered at run time, persisted so that a restart or another worker sees them.

Registered cameras live in one JSON file under the service's state folder
(`<state_dir>/cameras.json`, {camera_id: calibration}). A registration takes an
exclusive `fcntl` lock on `<state_dir>/cameras.lock`, re-reads the file, checks the
cap, and replaces the file atomically (write a temporary file, fsync, rename); a
lookup re-reads the file only when its identity (inode, size, mtime) changed.
Registering needs a bearer token from the environment (`check_token`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thermops.camera.calibration import Calibration, CalibrationError, load_calibrations, parse_calibration
from thermops.serve.errors import CameraConflict, Forbidden, TubeletError, Unauthorized, UnknownCamera

CAMERA_ID = re.compile(r"[a-z0-9][a-z0-9_\-]{0,62}")  # as in thermops.camera.calibration.Calibration
MIN_TOKEN_CHARS = 16


def read_token(env_name: str) -> str | None:
    """The registration token from the environment, or None (registration switched off).

    A token shorter than 16 characters is a configuration error, not a weak lock.
    """
    token = os.environ.get(env_name, "").strip()
    if not token:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise RuntimeError(f"${env_name} holds {len(token)} characters; a registration token needs {MIN_TOKEN_CHARS}")
    return token


def check_token(authorization: str | None, token: str | None, env_name: str) -> None:
    """Refuse a request whose `Authorization: Bearer <token>` header does not match `token`."""
    if token is None:
        raise Forbidden(f"camera registration is switched off on this server (no token in ${env_name})")
    if not authorization:
        raise Unauthorized("camera registration needs an 'Authorization: Bearer <token>' header")
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("camera registration needs an 'Authorization: Bearer <token>' header")
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode()):
        raise Forbidden("the bearer token does not grant camera registration")


class CameraRegistry:
    """Calibrations by camera id: those the model was trained on, plus cameras registered live.

    Cameras from the model entry cannot be replaced at run time (a new calibration
    goes through the pipeline and the gate); registered cameras must be `display8`,
    since a radiometric calibration the model was never gated on has no place here.
    Without a `state_dir` registrations stay in memory (tests, one-off tools).
    """

    def __init__(self, trained: dict[str, Calibration], state_dir: str | Path | None = None, max_registered: int = 0):
        self._trained = dict(trained)
        self._registered: dict[str, Calibration] = {}
        self._lock = threading.Lock()
        self.max_registered = max_registered
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._stamp: tuple[int, int, int, int] | None = None
        self.state_error: str | None = None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._refresh(strict=True)

    @classmethod
    def from_dir(
        cls, directory: str | Path, state_dir: str | Path | None = None, max_registered: int = 0
    ) -> CameraRegistry:
        return cls(load_calibrations(directory), state_dir, max_registered)

    # ------------------------------------------------------------------ persistence

    @property
    def _file(self) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "cameras.json"

    def _refresh(self, strict: bool = False) -> None:
        """Re-read the registrations file if another worker (or a past run) changed it.

        An unreadable file stops the service at start (`strict`); later, the registrations
        read before stay in use and `state_error` says why (shown by /metadata).
        """
        if self.state_dir is None:
            return
        try:
            st = os.stat(self._file)
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stamp == self._stamp:
            return
        try:
            cams = self._load() if stamp is not None else {}
        except RuntimeError as err:
            if strict:
                raise
            self.state_error = str(err)
            return
        with self._lock:
            self._registered, self._stamp = cams, stamp
        self.state_error = None

    def _load(self) -> dict[str, Calibration]:
        try:
            raw = json.loads(self._file.read_text())
            return {k: parse_calibration(v, f"{self._file}:{k}") for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, CalibrationError, AttributeError) as err:
            raise RuntimeError(f"{self._file}: unreadable registrations: {err}") from err

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if self.state_dir is None:
            yield
            return
        with open(self.state_dir / "cameras.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write(self, cams: dict[str, Calibration]) -> None:
        tmp = self._file.with_name(f".cameras.json.tmp-{os.getpid()}-{threading.get_ident()}")
        data = json.dumps({k: v.model_dump(mode="json") for k, v in sorted(cams.items())}, indent=1, sort_keys=True)
        with open(tmp, "w") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._file)

    # ------------------------------------------------------------------ lookups

    def get(self, camera_id: str) -> Calibration:
        """The calibration of `camera_id`, or UnknownCamera."""
        if not isinstance(camera_id, str) or not CAMERA_ID.fullmatch(camera_id):
            # ascii(): the id may hold anything, lone surrogates included; the message must encode
            raise TubeletError(
                f"camera_id {ascii(camera_id)[:80]} is not a camera id (lowercase letters, digits, _ and -)",
                field="camera_id",
                code="invalid_camera_id",
            )
        cal = self._trained.get(camera_id)
        if cal is not None:
            return cal
        self._refresh()
        with self._lock:
            cal = self._registered.get(camera_id)
        if cal is None:
            raise UnknownCamera(
                f"unknown camera {camera_id!r}; known: {', '.join(self.ids()) or 'none'} "
                "(register a display8 camera with /register_camera)",
                field="camera_id",
            )
        return cal

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(set(self._trained) | set(self._registered))

    def register(self, data: Any) -> tuple[Calibration, bool]:
        """Validate and add a display8 calibration; returns (calibration, replaced)."""
        try:
            cal = parse_calibration(data, "calibration")
        except CalibrationError as err:
            raise TubeletError(str(err), field="calibration", code="invalid_calibration") from None
        if cal.radiometry.mode != "display8":
            raise TubeletError(
                f"camera {cal.camera_id!r}: only display8 cameras can be registered at run time "
                f"(got radiometry.mode {cal.radiometry.mode!r}); radiometric cameras go through the pipeline",
                field="calibration",
                code="invalid_calibration",
            )
        if cal.camera_id in self._trained:
            raise CameraConflict(
                f"camera {cal.camera_id!r} is one the model was trained on "
                f"(calibration {self._trained[cal.camera_id].version}); it cannot be replaced at run time",
                field="calibration",
            )
        with self._exclusive():
            self._stamp = None  # under the lock, always read what is on disk
            self._refresh(strict=True)
            with self._lock:
                cams = dict(self._registered)
            replaced = cal.camera_id in cams
            if not replaced and len(cams) >= self.max_registered:
                raise CameraConflict(
                    f"{len(cams)} cameras are registered, the most this service takes "
                    f"(package.max_registered_cameras = {self.max_registered}); "
                    "re-register an existing id or add the camera through the pipeline",
                    field="calibration",
                    code="too_many_cameras",
                )
            cams[cal.camera_id] = cal
            if self.state_dir is not None:
                self._write(cams)
            with self._lock:
                self._registered = cams
            self._stamp = None  # the next lookup stats the new file
        return cal, replaced

    def describe(self) -> dict[str, dict[str, Any]]:
        """Camera id -> version, mode, units, whether trained-on or registered."""
        self._refresh()
        with self._lock:
            items = [(k, v, "trained") for k, v in self._trained.items()]
            items += [(k, v, "registered") for k, v in self._registered.items()]
        return {
            k: {"version": v.version, "mode": v.radiometry.mode, "geometry_known": v.geometry.known, "origin": o}
            for k, v, o in sorted(items)
        }
