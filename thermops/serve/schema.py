"""The request and answer types of the service's routes (pydantic; they become its OpenAPI schema).

JSON numbers are strict: `true`, `false` and numeric strings are refused, not read as 1, 0
or a number. Camera ids follow the calibration schema's pattern.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StrictFloat

CAMERA_ID_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"

JsonTubelet = Annotated[
    list[list[list[StrictFloat]]],
    Field(description="one tubelet (T, H, W) of numbers in the camera's raw values: T >= 1, H, W >= 8"),
]
CameraId = Annotated[
    str,
    Field(pattern=CAMERA_ID_PATTERN, description="a registered camera (lowercase letters, digits, _ and -)"),
]


class Prediction(BaseModel):
    """One classified tubelet."""

    label: str
    scores: dict[str, float]
    camera_id: str
    calibration_version: str
    units: str
    model_version: str


class Registration(BaseModel):
    """The answer of /register_camera."""

    camera_id: str
    calibration_version: str
    units: str
    replaced: bool
