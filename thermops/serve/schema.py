"""The request and answer types of the service's routes (pydantic; they become its OpenAPI schema).

JSON numbers are strict: `true`, `false` and numeric strings are refused, not read as 1, 0
or a number; NaN and infinities too. Camera ids follow the calibration schema's pattern.
The window geometry fields (`WindowPx`, `GroundPx`) are optional; what the service does
with them is `thermops.serve.windows`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StrictFloat

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]

CAMERA_ID_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"

JsonTubelet = Annotated[
    list[list[list[StrictFloat]]],
    Field(description="one tubelet (T, H, W) of numbers in the camera's raw values: T >= 1, H, W >= 8"),
]
CameraId = Annotated[
    str,
    Field(pattern=CAMERA_ID_PATTERN, description="a registered camera (lowercase letters, digits, _ and -)"),
]
WindowPx = Annotated[
    FiniteFloat | None,
    Field(
        ge=1,
        description="the window's side in camera pixels before it was resampled to the tubelet; required by a "
        "model that takes window geometry (/metadata input.geometry not empty), at most the camera's larger image "
        "side; ignored by other models",
    ),
]
GroundPx = Annotated[
    Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)] | None,
    Field(
        description="[u, v]: the object's ground contact point in camera pixels, inside the image and below the "
        "horizon; with the camera's geometry it gives the window's metres (metric_scale). Without it, or on a "
        "camera of unknown geometry, the geometry is unknown (known 0). In a multipart body: the text '[u, v]'",
    ),
]


class GeometryUsed(BaseModel):
    """The window geometry a model that takes it was given for this tubelet."""

    window_px: float = Field(description="the window's side in camera pixels, as sent")
    window_m: float | None = Field(description="metres the window covers at the ground point; null: unknown")
    known: bool = Field(description="whether the camera's geometry gave window_m (the feature `known`)")
    features: dict[str, float] = Field(description="the geometry features the model took, by name")


class Prediction(BaseModel):
    """One classified tubelet."""

    label: str
    scores: dict[str, float]
    camera_id: str
    calibration_version: str
    units: str
    model_version: str
    geometry: GeometryUsed | None = Field(
        default=None,
        description="the window geometry the model took; null: this model takes none (window_px and ground_px, "
        "if sent, were ignored)",
    )


class Registration(BaseModel):
    """The answer of /register_camera."""

    camera_id: str
    calibration_version: str
    units: str
    replaced: bool
