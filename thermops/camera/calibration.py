"""Per-camera calibration files: schema, loading, validation and atomic writing.

A calibration file `data/calibration/<camera_id>.yaml` describes one camera at one
point in time: its geometry (image size, intrinsics, distortion, mounting), its
radiometry (how counts become degrees Celsius, or `display8` for 8-bit AGC
output with no temperatures), its non-uniformity-correction state and its AGC
mode. Every frame, tubelet and model records the `version` it came from.

Unknown geometry is stated (`geometry.known: false`), never invented: such a
camera only carries its image size, and everything that needs metric geometry
(metric windows, ground distance, homography) falls back or refuses clearly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1


class CalibrationError(ValueError):
    """A calibration file is missing, unreadable or violates the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distortion(_Strict):
    """Brown-Conrady radial (k1, k2) and tangential (p1, p2) coefficients."""

    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0


class Geometry(_Strict):
    """Pinhole camera above a flat ground plane.

    Angles in degrees: `pitch_deg` is the downward tilt of the optical axis below
    the horizon, `roll_deg` a rotation about the optical axis, `yaw_deg` the
    heading. `roi` is the working region on the ground, as ranges in metres.
    """

    known: bool = True
    image_width: int = Field(gt=0, le=8192)
    image_height: int = Field(gt=0, le=8192)
    fx: float | None = Field(default=None, gt=0)
    fy: float | None = Field(default=None, gt=0)
    cx: float | None = None
    cy: float | None = None
    distortion: Distortion = Distortion()
    height_m: float | None = Field(default=None, gt=0, le=200)
    pitch_deg: float | None = Field(default=None, ge=-10, le=90)
    roll_deg: float = Field(default=0.0, ge=-45, le=45)
    yaw_deg: float = Field(default=0.0, ge=-180, le=180)
    min_range_m: float | None = Field(default=None, gt=0)
    max_range_m: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _complete_when_known(self) -> Geometry:
        if self.known:
            missing = [
                name
                for name in ("fx", "fy", "cx", "cy", "height_m", "pitch_deg", "min_range_m", "max_range_m")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"geometry.known is true but {', '.join(missing)} missing")
            if self.max_range_m <= self.min_range_m:  # type: ignore[operator]
                raise ValueError("max_range_m must be greater than min_range_m")
        return self

    @property
    def hfov_deg(self) -> float | None:
        if self.fx is None:
            return None
        return math.degrees(2 * math.atan(self.image_width / (2 * self.fx)))


class Radiometry(_Strict):
    """How pixel values relate to scene temperature.

    - `linear`: counts = gain_counts_per_k * T[degC] + offset_counts (uncooled
      microbolometers are close to linear over a few tens of kelvin).
    - `planck`: counts = planck_r / (exp(planck_b / (T + 273.15)) - planck_f) + planck_o
      (the FLIR-style R/B/F/O form, for wide temperature spans).
    - `display8`: 8-bit values after the camera's automatic gain control; no
      temperature is assumed anywhere downstream.
    """

    mode: Literal["linear", "planck", "display8"]
    bit_depth: int = Field(ge=8, le=16)
    gain_counts_per_k: float | None = Field(default=None, gt=0)
    offset_counts: float | None = None
    planck_r: float | None = Field(default=None, gt=0)
    planck_b: float | None = Field(default=None, gt=0)
    planck_f: float | None = None
    planck_o: float | None = None
    emissivity: float = Field(default=0.95, gt=0, le=1)
    netd_mk: float | None = Field(default=None, gt=0, le=1000)

    @model_validator(mode="after")
    def _coefficients_for_mode(self) -> Radiometry:
        need = {
            "linear": ("gain_counts_per_k", "offset_counts", "netd_mk"),
            "planck": ("planck_r", "planck_b", "planck_f", "planck_o", "netd_mk"),
            "display8": (),
        }[self.mode]
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"radiometry.mode {self.mode!r} needs {', '.join(missing)}")
        if self.mode == "display8" and self.bit_depth != 8:
            raise ValueError("radiometry.mode display8 requires bit_depth 8")
        return self

    @property
    def radiometric(self) -> bool:
        return self.mode != "display8"

    def counts_to_celsius(self, counts):
        """Convert raw counts (array-like) to degrees Celsius."""
        import numpy as np

        c = np.asarray(counts, dtype=np.float64)
        if self.mode == "linear":
            return (c - self.offset_counts) / self.gain_counts_per_k
        if self.mode == "planck":
            ratio = np.clip(self.planck_r / np.maximum(c - self.planck_o, 1e-6) + self.planck_f, 1.0 + 1e-9, None)
            return self.planck_b / np.log(ratio) - 273.15
        raise CalibrationError("display8 calibration has no temperature model")

    def celsius_to_counts(self, celsius):
        """Convert degrees Celsius (array-like) to raw counts (float, unquantized)."""
        import numpy as np

        t = np.asarray(celsius, dtype=np.float64)
        if self.mode == "linear":
            return self.gain_counts_per_k * t + self.offset_counts
        if self.mode == "planck":
            return self.planck_r / (np.exp(self.planck_b / (t + 273.15)) - self.planck_f) + self.planck_o
        raise CalibrationError("display8 calibration has no temperature model")

    def gain_at(self, celsius: float) -> float:
        """Local responsivity d(counts)/dT in counts per kelvin at `celsius`."""
        if self.mode == "linear":
            return float(self.gain_counts_per_k)
        h = 0.05
        return float((self.celsius_to_counts(celsius + h) - self.celsius_to_counts(celsius - h)) / (2 * h))


class Nuc(_Strict):
    """Non-uniformity correction state: factory table and shutter flat-field correction."""

    table_id: str = "none"
    ffc_date: dt.date | None = None
    ffc_interval_s: float | None = Field(default=None, gt=0)


class Agc(_Strict):
    """Automatic gain control applied by the camera (for 8-bit output)."""

    mode: Literal["none", "linear", "plateau", "histeq", "unknown"] = "none"
    clip_percent: float = Field(default=1.0, ge=0, le=20)
    plateau: float = Field(default=0.02, gt=0, le=1)


class Calibration(_Strict):
    """One calibration of one camera (the content of `data/calibration/<camera_id>.yaml`)."""

    schema_version: int = SCHEMA_VERSION
    camera_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$")
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")
    valid_from: dt.date
    description: str = ""
    source: str = "synthetic"
    geometry: Geometry
    radiometry: Radiometry
    nuc: Nuc = Nuc()
    agc: Agc = Agc()

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v}, this thermops reads {SCHEMA_VERSION}")
        return v

    @model_validator(mode="after")
    def _display8_has_agc(self) -> Calibration:
        if self.radiometry.mode == "display8" and self.agc.mode == "none":
            raise ValueError("a display8 camera must state its agc.mode (use 'unknown' if not known)")
        return self

    @property
    def units(self) -> str:
        """Units of prepared tubelets from this camera: 'celsius' or 'display8'."""
        return "celsius" if self.radiometry.radiometric else "display8"

    def fingerprint(self) -> str:
        """Short content hash, independent of YAML formatting."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_errors(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_calibration(data: object, origin: str = "<memory>") -> Calibration:
    """Validate a mapping as a calibration; errors name the file and the field."""
    if not isinstance(data, dict):
        raise CalibrationError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Calibration.model_validate(data)
    except ValidationError as err:
        raise CalibrationError(f"{origin}: invalid calibration: {_format_errors(err)}") from None


def load_calibration(path: str | Path) -> Calibration:
    """Load and validate one calibration file; the camera id must match the file name."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: calibration file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CalibrationError(f"{path}: not valid YAML: {err}") from None
    cal = parse_calibration(data, str(path))
    if cal.camera_id != path.stem:
        raise CalibrationError(f"{path}: camera_id {cal.camera_id!r} does not match the file name {path.stem!r}")
    return cal


class CalibrationSet(Mapping[str, Calibration]):
    """The `<camera_id>.yaml` files of a folder by camera id, each loaded and validated when first read.

    A malformed file raises (CalibrationError, naming the file and field) when its
    camera is read, so one bad file of a camera a step never reads does not stop it.
    """

    def __init__(self, directory: Path):
        self._paths = {p.stem: p for p in sorted(directory.glob("*.yaml"))}
        self._loaded: dict[str, Calibration] = {}

    def __getitem__(self, camera_id: str) -> Calibration:
        if camera_id not in self._loaded:
            self._loaded[camera_id] = load_calibration(self._paths[camera_id])  # KeyError: no such camera
        return self._loaded[camera_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def load_calibrations(directory: str | Path) -> CalibrationSet:
    """Every `<camera_id>.yaml` in a folder, keyed by camera id (validated when read: `CalibrationSet`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CalibrationError(f"{directory}: calibration folder not found")
    return CalibrationSet(directory)


def write_calibration(cal: Calibration, directory: str | Path) -> Path:
    """Write a validated calibration atomically (temp file, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{cal.camera_id}.yaml"
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(cal.to_yaml())
    # Round-trip before replacing, so a file that would not load never lands.
    parse_calibration(yaml.safe_load(tmp.read_text()), str(tmp))
    tmp.replace(target)
    return target
