"""The front door in-process: an ASGI app behind `Gateway`, driven with raw ASGI messages.

What must hold: limits and content types are answered before the body is read or the
app runs; capacity gives 503 with Retry-After; every error leaves in one shape and is
logged once, at WARNING, without a traceback; the OpenAPI document lists every route's
errors.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from serving_payloads import BOUNDARY, multipart

from thermops.serve.errors import ERROR_SCHEMA, is_error_body
from thermops.serve.gateway import Gateway, QuietClientErrors, RouteSpec

TOKEN_ENV = "THERMOPS_GATEWAY_TEST_TOKEN"
TOKEN = "gateway-test-token-0123456789"
ROUTES = {
    "/classify": RouteSpec("json", 10_000, model=True, max_values=100, errors=(400, 404, 413, 415, 503)),
    "/classify_upload": RouteSpec(
        "multipart", 20_000, model=True, parts={"file": "file", "camera_id": "field"}, max_file_bytes=5_000
    ),
    "/register_camera": RouteSpec("json", 1_000, auth=True, errors=(400, 401, 403, 409, 413, 415, 503)),
}


class App:
    """A stand-in for BentoML's routes: echoes the body size, or answers what it is told."""

    def __init__(self, delay: float = 0.0, status: int = 200, body: bytes = b'{"ok": true}'):
        self.calls = 0
        self.delay, self.status, self.body = delay, status, body

    async def __call__(self, scope, receive, send):
        self.calls += 1
        msg = await receive()
        if self.delay:
            await asyncio.sleep(self.delay)
        out = self.body if self.status != 200 else json.dumps({"got": len(msg.get("body", b""))}).encode()
        await send({"type": "http.response.start", "status": self.status, "headers": [(b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": out})


def make(app=None, monkeypatch=None, **kw) -> Gateway:
    if monkeypatch is not None:
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
    opts = dict(max_concurrency=2, max_inflight_bytes=50_000, retry_after_s=3, timeout_s=5.0, token_env=TOKEN_ENV)
    opts.update(kw)
    return Gateway(app or App(), ROUTES, **opts)


def call(gate: Gateway, path: str, body: bytes = b"", headers: dict | None = None, method: str = "POST"):
    """Run one request through the gateway: (status, headers, decoded body, receive() calls)."""
    return asyncio.run(_call(gate, path, body, headers or {}, method))


async def _call(gate, path, body, headers, method):
    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if "content-length" not in {k.lower() for k in headers}:
        hdrs.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": hdrs}
    reads = 0
    out: dict = {"chunks": []}

    async def receive():
        nonlocal reads
        reads += 1
        if reads == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    async def send(msg):
        if msg["type"] == "http.response.start":
            out["status"], out["headers"] = msg["status"], dict(msg.get("headers", []))
        else:
            out["chunks"].append(msg.get("body", b""))

    await gate(scope, receive, send)
    raw = b"".join(out["chunks"])
    return out["status"], out["headers"], (json.loads(raw) if raw else None), reads


JSON = {"Content-Type": "application/json"}


def test_a_good_request_passes_through_unchanged():
    app = App()
    status, headers, body, _ = call(make(app), "/classify", b'{"tubelet": [1, 2]}', JSON)
    assert (status, body, app.calls) == (200, {"got": 19}, 1)
    assert headers[b"x-app"] == b"1"


@pytest.mark.parametrize(
    "path, body, headers, status, code",
    [
        ("/classify", b"x" * 10, {"Content-Type": "application/octet-stream"}, 415, "unsupported_media_type"),
        (
            "/classify",
            b"x" * 10,
            {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            415,
            "unsupported_media_type",
        ),
        ("/classify_upload", b"{}", JSON, 415, "unsupported_media_type"),
        ("/classify_upload", b"--x", {"Content-Type": "multipart/form-data"}, 400, "invalid_request"),
        ("/classify", b"", {**JSON, "Content-Length": "20000"}, 413, "too_large"),
        ("/classify", b"", {**JSON, "Content-Length": "12abc"}, 400, "invalid_request"),
        ("/register_camera", b"{}", JSON, 401, "unauthorized"),
        ("/register_camera", b"{}", {**JSON, "Authorization": "Bearer nope"}, 403, "forbidden"),
        ("/register_camera", b"{}", {**JSON, "Authorization": "Basic abc"}, 401, "unauthorized"),
    ],
    ids=[
        "binary-to-json",
        "multipart-to-json",
        "json-to-upload",
        "no-boundary",
        "declared-too-large",
        "bad-length",
        "no-token",
        "wrong-token",
        "not-bearer",
    ],
)
def test_refused_before_the_body_is_read_or_the_app_runs(monkeypatch, path, body, headers, status, code):
    app = App()
    got, hdrs, answer, reads = call(make(app, monkeypatch), path, body, headers)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert is_error_body(answer) and app.calls == 0 and reads == 0


def test_the_right_token_opens_registration(monkeypatch):
    app = App()
    status, _, _, _ = call(
        make(app, monkeypatch), "/register_camera", b"{}", {**JSON, "Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200 and app.calls == 1


def test_registration_is_off_without_a_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    status, _, answer, _ = call(make(), "/register_camera", b"{}", {**JSON, "Authorization": f"Bearer {TOKEN}"})
    assert status == 403 and "switched off" in answer["error"]["message"]


def test_a_short_token_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(RuntimeError, match="16"):
        make()


def test_a_body_streamed_past_the_limit_is_413_without_a_length_header():
    app = App()
    gate = make(app)

    async def run():
        sent = []
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/classify",
            "headers": [(b"content-type", b"application/json")],
        }
        chunks = iter([b"[" + b"1" * 6_000, b"1" * 6_000, b"]"])

        async def receive():
            return {"type": "http.request", "body": next(chunks), "more_body": True}

        async def send(msg):
            sent.append(msg)

        await gate(scope, receive, send)
        return sent

    sent = asyncio.run(run())
    assert sent[0]["status"] == 413 and app.calls == 0


def test_json_values_are_counted_before_parsing():
    app = App()
    status, _, answer, _ = call(make(app), "/classify", b"[" + b"0," * 150 + b"0]", JSON)
    assert status == 413 and "more than 100 values" in answer["error"]["message"] and app.calls == 0


@pytest.mark.parametrize(
    "parts, fragment",
    [
        ([("upload", b"x", "t.npy"), ("camera_id", b"c", None)], "unexpected multipart part 'upload'"),
        ([("file", b"http://10.0.0.1/x", None), ("camera_id", b"c", None)], "must be a file"),
        ([("file", b"x", "t.npy"), ("camera_id", b"c", "c.txt")], "must be a text field"),
        ([("file", b"x", "t.npy"), ("file", b"y", "u.npy"), ("camera_id", b"c", None)], "sent twice"),
        ([("file", b"x", "t.npy")], "lacks the part(s) camera_id"),
        ([("file", b"x" * 6_000, "t.npy"), ("camera_id", b"c", None)], "over the limit of 5000 bytes"),
        ([("file", b"x", "t.npy"), ("camera_id", b"c" * 300, None)], "over 256 bytes"),
        ([("file", b"x", "a" * 200 + ".npy"), ("camera_id", b"c", None)], "file name"),
    ],
    ids=[
        "wrong-name",
        "text-file-part",
        "file-camera",
        "twice",
        "missing",
        "file-too-big",
        "long-field",
        "long-filename",
    ],
)
def test_multipart_must_be_exactly_the_route_parts(parts, fragment):
    app = App()
    body, headers = multipart(parts)
    status, _, answer, _ = call(make(app), "/classify_upload", body, headers)
    assert status in (400, 413) and fragment in answer["error"]["message"], answer
    assert app.calls == 0


def test_a_truncated_multipart_body_is_400():
    body, headers = multipart([("file", b"x" * 100, "t.npy"), ("camera_id", b"c", None)])
    status, _, answer, _ = call(make(), "/classify_upload", body[:-30], headers)
    assert status == 400 and "closing boundary" in answer["error"]["message"]


def test_a_good_multipart_body_reaches_the_app():
    app = App()
    body, headers = multipart([("file", b"\x93NUMPY" + b"\0" * 100, "t.npy"), ("camera_id", b"cam-lin", None)])
    status, _, answer, _ = call(make(app), "/classify_upload", body, headers)
    assert status == 200 and answer == {"got": len(body)} and app.calls == 1


def test_over_capacity_is_503_with_retry_after_and_below_never():
    app = App(delay=0.2)
    gate = make(app, max_concurrency=2)

    async def run(n):
        return await asyncio.gather(*(_call(gate, "/classify", b"[1]", JSON, "POST") for _ in range(n)))

    below = asyncio.run(run(2))
    assert [r[0] for r in below] == [200, 200]
    over = asyncio.run(run(5))
    statuses = sorted(r[0] for r in over)
    assert statuses == [200, 200, 503, 503, 503]
    refused = [r for r in over if r[0] == 503]
    assert all(r[1][b"retry-after"] == b"3" and r[2]["error"]["code"] == "overloaded" for r in refused)
    assert gate.inflight == 0 and gate.inflight_bytes == 0 and gate.refused == 3


def test_bytes_in_flight_are_capped():
    gate = make(App(delay=0.2), max_concurrency=100, max_inflight_bytes=15_000)

    async def run():
        body = b"[" + b"1" * 6_000 + b"]"
        return await asyncio.gather(*(_call(gate, "/classify", body, JSON, "POST") for _ in range(3)))

    statuses = sorted(r[0] for r in asyncio.run(run()))
    assert statuses == [200, 200, 503]


def test_a_request_past_the_deadline_is_503():
    app = App(delay=2.0)
    status, headers, answer, _ = call(make(app, timeout_s=0.2), "/classify", b"[1]", JSON)
    assert status == 503 and answer["error"]["code"] == "timeout" and headers[b"retry-after"] == b"3"


@pytest.mark.parametrize(
    "status, body, code, fragment, field",
    [
        (
            400,
            json.dumps(
                {
                    "error": "2 validation errors for Input",
                    "detail": [
                        {"type": "float_type", "loc": ["tubelet", 0, 1, 2], "msg": "Input should be a valid number"},
                        {"type": "float_type", "loc": ["tubelet", 0, 1, 3], "msg": "Input should be a valid number"},
                    ],
                }
            ).encode(),
            "invalid_request",
            "tubelet[0][1][2]: Input should be a valid number (and 1 more error(s))",
            "tubelet",
        ),
        (400, json.dumps([{"error": "bad thing"}]).encode(), "invalid_request", "bad thing", None),
        (404, b"Not Found", "not_found", "Not Found", None),
        (500, b'{"error": "An unexpected error has occurred"}', "internal_error", "unexpected", None),
    ],
    ids=["pydantic-detail", "bentoml-tuple", "plain-text", "server-error"],
)
def test_foreign_errors_leave_in_the_one_shape(status, body, code, fragment, field):
    got, headers, answer, _ = call(make(App(status=status, body=body)), "/classify", b"[1]", JSON)
    assert got == status and is_error_body(answer), answer
    assert answer["error"]["code"] == code and fragment in answer["error"]["message"]
    assert answer["error"]["field"] == field
    assert headers[b"content-type"] == b"application/json"


def test_unknown_paths_get_the_shape_too():
    status, _, answer, _ = call(make(App(status=404, body=b"Not Found")), "/nope", method="GET")
    assert status == 404 and answer["error"]["code"] == "not_found"


def test_each_client_error_is_logged_once_at_warning_without_traceback(caplog):
    caplog.set_level(logging.INFO, logger="thermops.serve")
    call(make(), "/classify", b"x", {"Content-Type": "text/plain"})
    records = [r for r in caplog.records if r.name == "thermops.serve"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert "POST /classify -> 415 unsupported_media_type" in records[0].getMessage()


def test_bentoml_tracebacks_for_client_errors_are_filtered():
    flt = QuietClientErrors()

    class ValidationError(Exception):
        pass

    class Code:
        def __init__(self, value):
            self.value = value

    class Client(Exception):
        error_code = Code(404)

    class Server(Exception):
        error_code = Code(500)

    def rec(exc):
        return logging.LogRecord("x", logging.ERROR, "f", 1, "Exception on /classify", None, (type(exc), exc, None))

    assert not flt.filter(rec(ValidationError()))
    assert not flt.filter(rec(Client()))
    assert flt.filter(rec(Server()))
    assert flt.filter(rec(RuntimeError()))


def test_openapi_document_lists_every_route_error():
    spec = {
        "paths": {
            path: {"post": {"responses": {"200": {"description": "ok"}, "500": {"description": "bentoml"}}}}
            for path in ROUTES
        }
    }
    doc = make().document(spec)
    assert doc["components"]["schemas"]["Error"] == ERROR_SCHEMA
    for path, route in ROUTES.items():
        responses = doc["paths"][path]["post"]["responses"]
        assert "500" not in responses and "200" in responses
        assert set(route.errors) | {400, 413, 415, 503} == {int(k) for k in responses if k != "200"}
        assert responses["503"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
        for k, v in responses.items():
            if k != "200":
                assert v["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert doc["paths"]["/register_camera"]["post"]["security"] == [{"registrationToken": []}]
