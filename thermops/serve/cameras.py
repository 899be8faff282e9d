"""The cameras a service knows: those the model was trained on, plus display8 cameras
registered at run time."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from thermops.camera.calibration import Calibration, CalibrationError, load_calibrations, parse_calibration
from thermops.serve.requests import TubeletError

CAMERA_ID = re.compile(r"[a-z0-9][a-z0-9_\-]{0,62}")  # as in thermops.camera.calibration.Calibration


class UnknownCamera(KeyError):
    """The request names a camera that the registry does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown camera"


class CameraRegistry:
    """Calibrations by camera id: those the model was trained on, plus cameras registered live.

    Cameras from the model entry cannot be replaced at run time (a new calibration
    goes through the pipeline and the gate); registered cameras must be `display8`,
    since a radiometric calibration the model was never gated on has no place here.
    """

    def __init__(self, trained: dict[str, Calibration]):
        self._trained = dict(trained)
        self._registered: dict[str, Calibration] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, directory: str | Path) -> CameraRegistry:
        return cls(load_calibrations(directory))

    def get(self, camera_id: str) -> Calibration:
        """The calibration of `camera_id`, or UnknownCamera."""
        if not isinstance(camera_id, str) or not CAMERA_ID.fullmatch(camera_id):
            # ascii(): the id may hold anything, lone surrogates included; the message must encode
            raise TubeletError(
                f"camera_id {ascii(camera_id)[:80]} is not a camera id (lowercase letters, digits, _ and -)"
            )
        with self._lock:
            cal = self._trained.get(camera_id) or self._registered.get(camera_id)
        if cal is None:
            raise UnknownCamera(
                f"unknown camera {camera_id!r}; known: {', '.join(self.ids()) or 'none'} "
                "(register a display8 camera with /register_camera)"
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
            raise TubeletError(str(err)) from None
        if cal.radiometry.mode != "display8":
            raise TubeletError(
                f"camera {cal.camera_id!r}: only display8 cameras can be registered at run time "
                f"(got radiometry.mode {cal.radiometry.mode!r}); radiometric cameras go through the pipeline"
            )
        with self._lock:
            if cal.camera_id in self._trained:
                raise CameraConflict(
                    f"camera {cal.camera_id!r} is one the model was trained on "
                    f"(calibration {self._trained[cal.camera_id].version}); it cannot be replaced at run time"
                )
            replaced = cal.camera_id in self._registered
            self._registered[cal.camera_id] = cal
        return cal, replaced

    def describe(self) -> dict[str, dict[str, Any]]:
        """Camera id -> version, mode, units, whether trained-on or registered."""
        with self._lock:
            items = [(k, v, "trained") for k, v in self._trained.items()]
            items += [(k, v, "registered") for k, v in self._registered.items()]
        return {
            k: {"version": v.version, "mode": v.radiometry.mode, "geometry_known": v.geometry.known, "origin": o}
            for k, v, o in sorted(items)
        }


class CameraConflict(TubeletError):
    """A registration would replace a camera the model was trained on."""
