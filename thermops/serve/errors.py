"""The service's errors: one class per answer, one body shape for all of them.

Every error a client can get is a `ServeError` with an HTTP status, a stable
machine-readable `code`, a message that says what is wrong, and the request
`field` it concerns (or None). The body is always

    {"error": {"code": "...", "message": "...", "field": "..." | null}}

and 503 answers carry `Retry-After`. `ERROR_SCHEMA` is that body as JSON Schema,
for the OpenAPI document.
"""

from __future__ import annotations

import json
from typing import Any

MAX_MESSAGE = 1000  # characters of a message sent back (it may quote client input)


class ServeError(Exception):
    """A request the service answers with a 4xx or a 503, never a 500."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, field: str | None = None, code: str | None = None, retry_after: int | None = None
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.field)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class TubeletError(ServeError, ValueError):
    """A request's tubelet is malformed (shape, dtype, values, file format)."""

    code = "invalid_tubelet"


class PayloadTooLarge(TubeletError):
    """A request, or what it declares, exceeds the service's limits."""

    status = 413
    code = "too_large"


class UnsupportedMedia(TubeletError):
    """A body or an upload in a format the route does not take."""

    status = 415
    code = "unsupported_media_type"


class InvalidRequest(ServeError, ValueError):
    """A request that does not follow the route's schema (missing or mistyped fields)."""

    code = "invalid_request"


class GeometryError(ServeError, ValueError):
    """A request's window geometry that the model and camera cannot use: missing where the
    model takes it, a window larger than the camera's image, a ground point outside the
    image or above the horizon."""

    status = 422
    code = "invalid_geometry"


class UnknownCamera(ServeError, KeyError):
    """The request names a camera that the registry does not hold."""

    status = 404
    code = "unknown_camera"


class CameraConflict(TubeletError):
    """A registration would replace a trained camera, or the registry is full."""

    status = 409
    code = "camera_conflict"


class Unauthorized(ServeError):
    """No credentials where the route needs them."""

    status = 401
    code = "unauthorized"


class Forbidden(ServeError):
    """Credentials that do not grant the route, or a route switched off."""

    status = 403
    code = "forbidden"


class Unavailable(ServeError):
    """The service cannot answer now (over capacity, past its deadline, state unreadable):
    retry after `retry_after` seconds."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None, field: str | None = None):
        super().__init__(message, retry_after=retry_after, code=code, field=field)


class Overloaded(Unavailable):
    """Above the stated capacity."""

    code = "overloaded"


def clip(message: str) -> str:
    """A message safe to send: valid UTF-8 (lone surrogates escaped) and bounded in length."""
    text = str(message).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": clip(message), "field": field}}


def error_bytes(code: str, message: str, field: str | None = None) -> bytes:
    return json.dumps(error_body(code, message, field)).encode()


def is_error_body(body: Any) -> bool:
    """Whether a decoded JSON body already has the one error shape."""
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and isinstance(body["error"], dict)
        and set(body["error"]) == {"code", "message", "field"}
    )


ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "description": "stable machine-readable reason, e.g. too_large"},
                "message": {"type": "string", "description": "what is wrong, for a person"},
                "field": {"type": "string", "nullable": True, "description": "the request field concerned"},
            },
        }
    },
}
