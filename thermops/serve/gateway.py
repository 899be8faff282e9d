"""The service's front door: an ASGI middleware in front of BentoML's routes.

Before BentoML parses anything, for each POST route it knows (`RouteSpec`):

1. the content type is the route's (JSON or multipart), else 415;
2. the declared body size is within the route's limit, else 413 (before reading);
3. the registration route's bearer token is checked (401 / 403);
4. capacity: at most `max_concurrency` model requests and `max_inflight_bytes` of
   request bodies are in flight per worker; above that 503 with `Retry-After`;
5. the body is read under the limit (413 once it passes it), then bounded cheaply:
   a JSON body may hold at most `max_values` numbers (counted by its commas, so the
   parser never builds more), a multipart body must be exactly the route's parts
   (a file part and short text fields) and complete;
6. the request runs under a deadline; unanswered by then, 503 with `Retry-After`.

Every error answer of the server, BentoML's own included, leaves in one shape,
`{"error": {"code", "message", "field"}}`, is logged once (4xx at WARNING, one
line, no traceback), and 503s carry `Retry-After`. `GET /docs.json` is completed
with each route's error answers. No BentoML import: the middleware speaks ASGI.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from thermops.serve.cameras import check_token, read_token
from thermops.serve.errors import (
    ERROR_SCHEMA,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    ServeError,
    Unavailable,
    UnsupportedMedia,
    error_bytes,
    is_error_body,
)

logger = logging.getLogger("thermops.serve")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_FIELD_BYTES = 256  # a multipart text field (camera_id)
MAX_FILENAME_CHARS = 128
FOREIGN_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}
HINTS = {  # appended to schema errors of a field
    "tubelet": "; a tubelet is a (T, H, W) nested list of numbers (booleans and strings are not numbers)",
}
DESCRIPTIONS = {
    400: "malformed request: the message says which field and why",
    401: "no bearer token",
    403: "the bearer token does not grant this route, or the route is switched off",
    404: "unknown camera",
    409: "conflicts with the service's state (a trained camera, the registration cap)",
    413: "body, upload or declared tubelet over the limits",
    415: "content type or file format the route does not take",
    422: "window geometry the model and camera cannot use (missing window_px for a model that takes geometry, "
    "a window larger than the camera's image, a ground point outside the image or above the horizon)",
    503: "over capacity or past the deadline: retry after Retry-After seconds",
}


@dataclass(frozen=True)
class RouteSpec:
    """What the front door checks for one POST route.

    Attributes:
        media: `json` or `multipart`.
        max_bytes: largest body.
        model: counts against `max_concurrency` (routes that reach the model).
        auth: needs the registration bearer token.
        parts: multipart only: part name -> `file` or `field`; each at most once, all of them
            but those in `optional` required, no other.
        optional: multipart only: parts of `parts` that a body may leave out.
        max_file_bytes: multipart only: largest file part.
        max_values: JSON only: most numbers the body may hold.
        errors: the error statuses the route answers (documented in the OpenAPI schema).
    """

    media: str
    max_bytes: int
    model: bool = False
    auth: bool = False
    parts: dict[str, str] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    max_file_bytes: int = 0
    max_values: int | None = None
    errors: tuple[int, ...] = (400, 413, 415, 503)


def _error_message(status: int, body: bytes) -> tuple[str, str, str | None]:
    """(code, message, field) for an error body that is not in the one shape (BentoML's, starlette's)."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1:  # BentoML wraps 4xx messages in a 1-tuple
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("detail"), list) and data["detail"]:
        errs = data["detail"]  # pydantic validation errors, as BentoML reports them
        first = errs[0] if isinstance(errs[0], dict) else {}
        loc = [str(x) for x in first.get("loc", [])]
        where = loc[0] + "".join(f"[{x}]" for x in loc[1:]) if loc else "body"
        more = f" (and {len(errs) - 1} more error(s))" if len(errs) > 1 else ""
        hint = HINTS.get(loc[0], "") if loc else ""
        return "invalid_request", f"{where}: {first.get('msg', 'invalid value')}{more}{hint}", (loc[0] if loc else None)
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data["error"]
    else:
        message = body.decode("utf-8", "replace").strip()[:200] or HTTPStatus(status).phrase
    return FOREIGN_CODES.get(status, f"http_{status}"), message, None


class _Shaper:
    """Wraps `send`: error answers leave in the one shape, with Retry-After on 503, logged once."""

    def __init__(self, send: Send, scope: Scope, retry_after_s: int):
        self._send = send
        self.scope = scope
        self.retry_after_s = retry_after_s
        self.started = False
        self._start: dict[str, Any] | None = None
        self._chunks: list[bytes] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if message["status"] < 400:
                self._start = None
                return await self._send(message)
            self._start = message
            return
        if message["type"] == "http.response.body" and self._start is not None:
            self._chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            start, body = self._start, b"".join(self._chunks)
            self._start, self._chunks = None, []
            return await self._emit(start, body)
        await self._send(message)

    async def _emit(self, start: dict[str, Any], body: bytes) -> None:
        status = int(start["status"])
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if is_error_body(data):
            code, message = data["error"]["code"], data["error"]["message"]
        else:
            code, message, fld = _error_message(status, body)
            body = error_bytes(code, message, fld)
        if status in (429, 503) and not any(k.lower() == b"retry-after" for k, _ in headers):
            headers.append((b"retry-after", str(self.retry_after_s).encode()))
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        log = logger.warning if status < 500 else logger.error
        log("%s %s -> %d %s: %s", self.scope.get("method"), self.scope.get("path"), status, code, message[:300])
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    async def error(self, err: ServeError) -> None:
        """Answer `err` (only if nothing was sent yet)."""
        if self.started:
            return
        self.started = True
        headers = [(k.lower().encode(), v.encode()) for k, v in err.headers().items()]
        await self._emit({"status": err.status, "headers": headers}, json.dumps(err.body()).encode())


class _MultipartCheck:
    """Streams a multipart body through python-multipart's parser, keeping only part names,
    file names and sizes; refuses anything but the route's parts."""

    def __init__(self, spec: RouteSpec):
        self.spec = spec
        self.seen: dict[str, int] = {}
        self.name: str | None = None
        self.size = 0
        self.ended = False
        self._hname = b""
        self._hvalue = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: setattr(self, "_hname", self._hname + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_hvalue", self._hvalue + d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_end": lambda: setattr(self, "ended", True),
        }

    def _begin(self) -> None:
        self._headers, self.name, self.size = {}, None, 0

    def _header_end(self) -> None:
        self._headers[self._hname.strip().lower()] = self._hvalue.strip()
        self._hname, self._hvalue = b"", b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        disp = self._headers.get(b"content-disposition")
        if disp is None:
            raise InvalidRequest("a multipart part has no Content-Disposition header", field=None)
        kind, opts = parse_options_header(disp)
        raw_name = opts.get(b"name")
        if kind != b"form-data" or raw_name is None:
            raise InvalidRequest("a multipart part is not a named form-data part")
        name = raw_name.decode("utf-8", "replace")
        want = self.spec.parts.get(name)
        if want is None:
            raise InvalidRequest(
                f"unexpected multipart part {ascii(name)[:60]}; this route takes "
                + ", ".join(
                    f"{n} ({k}{', optional' if n in self.spec.optional else ''})" for n, k in self.spec.parts.items()
                ),
                field=None,
            )
        if name in self.seen:
            raise InvalidRequest(f"multipart part {name!r} is sent twice; send it once", field=name)
        filename = opts.get(b"filename")
        if want == "file":
            if not filename:
                raise InvalidRequest(f"multipart part {name!r} must be a file (with a filename)", field=name)
            text = filename.decode("utf-8", "replace")
            if len(text) > MAX_FILENAME_CHARS or any(ord(c) < 32 for c in text):
                raise InvalidRequest(
                    f"file name of part {name!r} is over {MAX_FILENAME_CHARS} characters or holds control characters",
                    field=name,
                )
        elif filename is not None:
            raise InvalidRequest(f"multipart part {name!r} must be a text field, not a file", field=name)
        self.name = name
        self.seen[name] = 0

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.name is None:
            return
        self.size += end - start
        self.seen[self.name] = self.size
        if self.spec.parts[self.name] == "file":
            if self.size > self.spec.max_file_bytes:
                raise PayloadTooLarge(f"upload is over the limit of {self.spec.max_file_bytes} bytes", field=self.name)
        elif self.size > MAX_FIELD_BYTES:
            raise InvalidRequest(f"multipart field {self.name!r} is over {MAX_FIELD_BYTES} bytes", field=self.name)

    def check(self, body: bytes, boundary: bytes) -> None:
        from python_multipart.multipart import MultipartParser

        parser = MultipartParser(boundary, self.callbacks())
        try:
            parser.write(body)
            parser.finalize()
        except ServeError:
            raise
        except Exception as err:  # python-multipart's MultipartParseError and friends
            raise InvalidRequest(f"malformed multipart body: {type(err).__name__}: {ascii(str(err))[:200]}") from None
        if not self.ended:
            raise InvalidRequest("malformed multipart body: it ends before its closing boundary")
        missing = [n for n in self.spec.parts if n not in self.seen and n not in self.spec.optional]
        if missing:
            raise InvalidRequest(f"multipart body lacks the part(s) {', '.join(missing)}", field=missing[0])


class Gateway:
    """ASGI middleware: limits, capacity, auth and the one error shape (see the module docstring).

    The registration token is read from `$<token_env>` when the worker builds its app.
    `Gateway.current` is the worker's instance (its counters feed /stats).
    """

    current: Gateway | None = None

    def __init__(
        self,
        app: Any,
        routes: dict[str, RouteSpec],
        *,
        max_concurrency: int,
        max_inflight_bytes: int,
        retry_after_s: int,
        timeout_s: float,
        token_env: str,
    ):
        self.app = app
        self.routes = routes
        self.max_concurrency = max_concurrency
        self.max_inflight_bytes = max_inflight_bytes
        self.retry_after_s = retry_after_s
        self.timeout_s = timeout_s
        self.token_env = token_env
        self.token = read_token(token_env)
        self.inflight = 0
        self.inflight_bytes = 0
        self.refused = 0  # 503s for capacity since start
        self.latency_ms: collections.deque[float] = collections.deque(maxlen=2000)  # model requests, in the server
        Gateway.current = self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        shaper = _Shaper(send, scope, self.retry_after_s)
        if scope.get("method") == "GET" and scope.get("path") == "/docs.json":
            return await self._docs(scope, receive, send)
        spec = self.routes.get(scope.get("path", "")) if scope.get("method") == "POST" else None
        if spec is None:
            return await self.app(scope, receive, shaper)
        try:
            await self._handle(spec, scope, receive, shaper)
        except ServeError as err:
            await shaper.error(err)

    async def _handle(self, spec: RouteSpec, scope: Scope, receive: Receive, shaper: _Shaper) -> None:
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        main = ctype.split(";")[0].strip().lower()
        boundary = b""
        if spec.media == "json":
            if main not in ("", "application/json"):
                raise UnsupportedMedia(f"this route takes application/json, not {ascii(main)[:80]}")
        else:
            if main != "multipart/form-data":
                raise UnsupportedMedia(
                    f"this route takes multipart/form-data, not {ascii(main or 'no content type')[:80]}"
                )
            from python_multipart.multipart import parse_options_header

            boundary = parse_options_header(ctype.encode("latin-1"))[1].get(b"boundary", b"")
            if not boundary or len(boundary) > 200:
                raise InvalidRequest("multipart/form-data request without a usable boundary")
        length = headers.get(b"content-length")
        if length is not None and not length.strip().isdigit():
            raise InvalidRequest("Content-Length is not a number")
        declared = int(length) if length is not None else spec.max_bytes
        if declared > spec.max_bytes:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {spec.max_bytes} bytes")
        if spec.auth:
            auth = headers.get(b"authorization")
            check_token(auth.decode("latin-1") if auth is not None else None, self.token, self.token_env)
        if spec.model and self.inflight >= self.max_concurrency:
            self.refused += 1
            raise Overloaded(
                f"{self.inflight} requests in flight, the capacity of this worker; retry in {self.retry_after_s} s",
                retry_after=self.retry_after_s,
            )
        if self.inflight_bytes + declared > self.max_inflight_bytes:
            self.refused += 1
            raise Overloaded(
                f"{self.inflight_bytes} request bytes in flight; this one would pass the worker's "
                f"{self.max_inflight_bytes}; retry in {self.retry_after_s} s",
                retry_after=self.retry_after_s,
            )
        counted = 1 if spec.model else 0
        self.inflight += counted
        self.inflight_bytes += declared
        start = time.perf_counter()
        try:
            body = await self._read(receive, spec.max_bytes)
            if body is None:
                return  # the client went away
            if spec.media == "json":
                if spec.max_values is not None and body.count(b",") >= spec.max_values:
                    raise PayloadTooLarge(
                        f"JSON body holds more than {spec.max_values} values; at most that many accepted"
                    )
            else:
                _MultipartCheck(spec).check(body, boundary)
            await self._call(scope, body, receive, shaper)
        finally:
            self.inflight -= counted
            self.inflight_bytes -= declared
            if spec.model:
                self.latency_ms.append(1000 * (time.perf_counter() - start))

    @staticmethod
    async def _read(receive: Receive, limit: int) -> bytes | None:
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)

    async def _call(self, scope: Scope, body: bytes, receive: Receive, shaper: _Shaper) -> None:
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        task = asyncio.current_task()
        expired = False

        def expire() -> None:
            nonlocal expired
            if not shaper.started and task is not None:  # once the answer is under way, let it finish
                expired = True
                task.cancel()

        timer = asyncio.get_running_loop().call_later(self.timeout_s, expire)
        try:
            await self.app(scope, replay, shaper)
        except asyncio.CancelledError:
            if not expired or task is None:
                raise
            task.uncancel()
            raise Unavailable(
                f"no answer within {self.timeout_s:g} s; retry in {self.retry_after_s} s",
                retry_after=self.retry_after_s,
                code="timeout",
            ) from None
        finally:
            timer.cancel()

    # ------------------------------------------------------------------ OpenAPI

    def latency(self) -> dict[str, float]:
        """p50 / p99 milliseconds the last 2,000 model requests spent in this worker (from the
        gateway to the end of the answer), and how many."""
        xs = sorted(self.latency_ms)
        if not xs:
            return {}
        return {"n": len(xs), "p50_ms": xs[len(xs) // 2], "p99_ms": xs[min(len(xs) - 1, int(0.99 * len(xs)))]}

    async def _docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(self.document(json.loads(body))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": start.get("status", 500), "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def document(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The OpenAPI document with each route's error answers in the one shape."""
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas["Error"] = ERROR_SCHEMA
        spec["components"].setdefault("securitySchemes", {})["registrationToken"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the token in the server's registration token variable",
        }
        for path, route in self.routes.items():
            op = spec.get("paths", {}).get(path, {}).get("post")
            if op is None:
                continue
            responses = {k: v for k, v in op.get("responses", {}).items() if str(k).startswith("2")}
            for status in sorted(set(route.errors) | {400, 413, 415, 503}):
                entry: dict[str, Any] = {
                    "description": DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
                if status == 503:
                    entry["headers"] = {
                        "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
                    }
                responses[str(status)] = entry
            op["responses"] = responses
            if route.auth:
                op["security"] = [{"registrationToken": []}]
        return spec


class QuietClientErrors(logging.Filter):
    """Drops BentoML's ERROR-with-traceback records for client errors (pydantic validation,
    4xx exceptions); the gateway logs each of those once at WARNING instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        if type(exc).__name__ == "ValidationError":
            return False
        status = getattr(getattr(exc, "error_code", None), "value", None)
        return not (isinstance(status, int) and status < 500)


def quiet_client_errors(logger_name: str = "bentoml._internal.server.http_app") -> None:
    """Install `QuietClientErrors` once on BentoML's request-error logger."""
    target = logging.getLogger(logger_name)
    if not any(isinstance(f, QuietClientErrors) for f in target.filters):
        target.addFilter(QuietClientErrors())
