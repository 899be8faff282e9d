"""The bento served for real: `bentoml serve` on 127.0.0.1, called over HTTP.

One server per test session (the bento the package step built from a small
untrained model); every bad input must get a 4xx that says what is wrong, and
the worker must survive all of them.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tifffile

from tests.serving_helpers import (
    Server,
    bento_env,
    counts_tubelet,
    display8_calibration,
    display8_tubelet,
    in_process_scores,
    packaged_once,
    radiometric_calibration,
    small_package_params,
)

LIMITS = small_package_params()
TIMEOUT = 60


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, model dir) for the packaged bento, torn down after the module."""
    paths, home, result = packaged_once(tmp_path_factory)
    server = Server(result["bento_tag"], home, paths["root"], tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        server.wait_ready()
        yield server, paths["model"]
    finally:
        server.stop()


def _post(server: Server, route: str, **kw) -> requests.Response:
    return requests.post(server.url + route, timeout=TIMEOUT, **kw)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)  # (T, H, W) -> T pages
    return buf.getvalue()


def _upload(server: Server, data: bytes, camera_id: str, name: str = "t.npy", ctype: str = "application/octet-stream"):
    return _post(server, "/classify_upload", files={"file": (name, data, ctype)}, data={"camera_id": camera_id})


def _error(resp: requests.Response) -> str:
    body = resp.json()
    return json.dumps(body)


def _assert_prediction(resp: requests.Response, expected: dict[str, float], calibration_version: str, model_tag: str):
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body["scores"]) == set(expected)
    for k, v in expected.items():
        assert body["scores"][k] == pytest.approx(v, abs=1e-5)
    assert body["label"] == max(expected, key=expected.get)
    assert body["calibration_version"] == calibration_version
    assert body["model_version"] == model_tag


# ------------------------------------------------------------------ health and metadata


def test_health_and_readiness(served):
    server, _ = served
    for route in ("/healthz", "/livez", "/readyz"):
        assert requests.get(server.url + route, timeout=TIMEOUT).status_code == 200


def test_metadata_has_lineage_gate_envelope_classes(served):
    server, _ = served
    meta = _post(server, "/metadata", json={}).json()
    assert meta["classes"] == ["person", "vehicle", "animal", "nuisance"]
    assert meta["lineage"]["calibrations"] == {"cam-d8": "d1", "cam-lin": "v1"}
    assert meta["lineage"]["data_version"] == "0123456789abcdef" * 2
    assert meta["gate"]["passed"] is True
    assert meta["envelope"]["pitch_deg"] == [-3.0, 3.0]
    assert meta["input"]["frames"] == 8 and meta["input"]["size"] == 32
    assert meta["cameras"]["cam-lin"]["origin"] == "trained"
    assert meta["model_version"].startswith(LIMITS.model_name + ":")


# ------------------------------------------------------------------ happy paths


def test_classify_json_equals_in_process(served):
    server, model_dir = served
    arr = counts_tubelet()
    resp = _post(server, "/classify", json={"tubelet": arr.tolist(), "camera_id": "cam-lin"})
    tag = _post(server, "/metadata", json={}).json()["model_version"]
    _assert_prediction(resp, in_process_scores(model_dir, arr, radiometric_calibration()), "v1", tag)
    assert resp.json()["units"] == "celsius"


@pytest.mark.parametrize("fmt", ["npy", "tiff"])
def test_classify_upload_equals_in_process(served, fmt):
    server, model_dir = served
    arr = counts_tubelet(t=6, h=40, w=30, seed=3)  # uint16 raw counts
    data = _npy(arr) if fmt == "npy" else _tiff(arr)
    resp = _upload(server, data, "cam-lin", name=f"t.{fmt}")
    tag = _post(server, "/metadata", json={}).json()["model_version"]
    _assert_prediction(resp, in_process_scores(model_dir, arr, radiometric_calibration()), "v1", tag)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 9, 70), (20, 100, 60), (32, 128, 12)])
def test_any_tubelet_size_is_resampled(served, shape):
    server, model_dir = served
    arr = display8_tubelet(*shape)
    resp = _upload(server, _npy(arr), "cam-d8")
    tag = _post(server, "/metadata", json={}).json()["model_version"]
    _assert_prediction(resp, in_process_scores(model_dir, arr, display8_calibration()), "d1", tag)
    assert resp.json()["units"] == "display8"


def test_register_a_display8_camera_and_use_it_at_once(served):
    server, model_dir = served
    cal = display8_calibration("roof-cam-7", "2026-11-22a")
    arr = display8_tubelet(4, 16, 16, seed=7)
    before = _post(server, "/classify", json={"tubelet": arr.tolist(), "camera_id": "roof-cam-7"})
    assert before.status_code == 404 and "unknown camera 'roof-cam-7'" in _error(before)
    reg = _post(server, "/register_camera", json={"calibration": cal.model_dump(mode="json")})
    assert reg.status_code == 200, reg.text
    assert reg.json() == {
        "camera_id": "roof-cam-7",
        "calibration_version": "2026-11-22a",
        "units": "display8",
        "replaced": False,
    }
    resp = _post(server, "/classify", json={"tubelet": arr.tolist(), "camera_id": "roof-cam-7"})
    tag = _post(server, "/metadata", json={}).json()["model_version"]
    _assert_prediction(resp, in_process_scores(model_dir, arr, cal), "2026-11-22a", tag)
    assert _post(server, "/metadata", json={}).json()["cameras"]["roof-cam-7"]["origin"] == "registered"


@pytest.mark.parametrize(
    "calibration, status, message",
    [
        (radiometric_calibration("new-radiometric").model_dump(mode="json"), 400, "only display8 cameras"),
        (display8_calibration("cam-lin").model_dump(mode="json"), 409, "cannot be replaced"),
        ({**display8_calibration("x1").model_dump(mode="json"), "agc": {"mode": "none"}}, 400, "agc.mode"),
        ({"camera_id": "Bad Id!", "version": "1"}, 400, "camera_id"),
    ],
    ids=["radiometric", "trained-camera", "display8-without-agc", "malformed"],
)
def test_register_camera_refusals(served, calibration, status, message):
    server, _ = served
    resp = _post(server, "/register_camera", json={"calibration": calibration})
    assert resp.status_code == status, resp.text
    assert message in _error(resp)


# ------------------------------------------------------------------ bad input


GOOD = counts_tubelet(t=4, h=16, w=16)


def _json_case(server, tubelet, camera="cam-lin"):
    return _post(server, "/classify", json={"tubelet": tubelet, "camera_id": camera})


BAD_CASES = {
    # name: (request function, status, message fragment)
    "2d-frame": (lambda s: _json_case(s, GOOD[0].tolist()), 400, "validation error"),
    "too-small": (lambda s: _upload(s, _npy(GOOD[:, :7, :]), "cam-lin"), 400, "at least 8 x 8"),
    "4d-upload": (lambda s: _upload(s, _npy(GOOD[None]), "cam-lin"), 400, "shape (T, H, W)"),
    "zero-frames": (lambda s: _upload(s, _npy(GOOD[:0]), "cam-lin"), 400, "no frames"),
    "ragged-json": (lambda s: _json_case(s, [GOOD[0].tolist(), GOOD[1, :3].tolist()]), 400, "regular"),
    "strings-json": (lambda s: _json_case(s, [[["a"] * 8] * 8]), 400, "validation error"),
    "complex-dtype": (lambda s: _upload(s, _npy(GOOD.astype(np.complex64)), "cam-lin"), 400, "not numeric"),
    "bool-dtype": (lambda s: _upload(s, _npy(GOOD > 7000), "cam-lin"), 400, "not numeric"),
    "object-npy": (lambda s: _upload(s, _npy(np.array([{"a": 1}], dtype=object)), "cam-lin"), 400, "unreadable"),
    "nan": (lambda s: _upload(s, _npy(np.where(GOOD > 0, np.nan, 0.0)), "cam-lin"), 400, "non-finite"),
    "inf": (lambda s: _upload(s, _npy(np.full((4, 8, 8), np.inf, np.float32)), "cam-lin"), 400, "non-finite"),
    "nan-json": (
        lambda s: _post(
            s,
            "/classify",
            data='{"tubelet": ' + json.dumps(np.full((2, 8, 8), np.nan).tolist()) + ', "camera_id": "cam-lin"}',
            headers={"Content-Type": "application/json"},
        ),
        400,
        "non-finite",
    ),
    "out-of-range-counts": (
        lambda s: _upload(s, _npy(np.full((2, 8, 8), 20000, np.uint16)), "cam-lin"),
        400,
        "0..16383",
    ),
    "display8-gets-16bit": (lambda s: _upload(s, _npy(GOOD), "cam-d8"), 400, "0..255"),
    "too-many-frames": (
        lambda s: _upload(s, _npy(np.zeros((LIMITS.max_frames + 1, 8, 8), np.uint8)), "cam-d8"),
        413,
        f"at most {LIMITS.max_frames} accepted",
    ),
    "too-wide": (
        lambda s: _upload(s, _npy(np.zeros((1, 8, LIMITS.max_side + 1), np.uint8)), "cam-d8"),
        413,
        "per side",
    ),
    "too-many-values": (
        lambda s: _upload(s, _npy(np.zeros((32, 100, 100), np.uint8)), "cam-d8"),
        413,
        f"at most {LIMITS.max_elements}",
    ),
    "upload-over-limit": (
        lambda s: _upload(s, _npy(np.zeros((4, 128, 128), np.float64)) + b"\0" * LIMITS.max_upload_bytes, "cam-d8"),
        413,
        "exceeds",
    ),
    "body-over-limit": (
        lambda s: _post(
            s,
            "/classify",
            data=b"[" + b"0," * (LIMITS.max_request_bytes // 2) + b"0]",
            headers={"Content-Type": "application/json"},
        ),
        413,
        "exceeds the limit",
    ),
    "unknown-camera": (lambda s: _json_case(s, GOOD.tolist(), camera="nope"), 404, "unknown camera 'nope'"),
    "text-plain": (
        lambda s: _post(s, "/classify", data="hello", headers={"Content-Type": "text/plain"}),
        400,
        "validation error",
    ),
    "png-upload": (
        lambda s: _upload(s, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "cam-lin", "t.png", "image/png"),
        415,
        "unsupported file type",
    ),
    "empty-upload": (lambda s: _upload(s, b"", "cam-lin"), 400, "empty"),
    "truncated-npy": (lambda s: _upload(s, _npy(GOOD)[:-100], "cam-lin"), 400, ".npy"),
    "truncated-tiff": (lambda s: _upload(s, _tiff(GOOD)[: len(_tiff(GOOD)) // 2], "cam-lin", "t.tiff"), 400, "TIFF"),
    "missing-camera": (lambda s: _post(s, "/classify", json={"tubelet": GOOD.tolist()}), 400, "camera_id"),
    "infer-not-strings": (lambda s: _post(s, "/infer", json={"x": [[1.0, 2.0]]}), 400, "list of base64 strings"),
    "infer-wrong-size": (lambda s: _post(s, "/infer", json={"x": ["AAAAAA=="]}), 400, "holds 4 bytes"),
    "infer-not-base64": (lambda s: _post(s, "/infer", json={"x": ["%%%"]}), 400, "not valid base64"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_gets_a_4xx_that_says_what_is_wrong(served, case):
    server, _ = served
    call, status, fragment = BAD_CASES[case]
    resp = call(server)
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert fragment in resp.text, resp.text[:500]


def test_worker_survives_bad_input(served):
    """After every bad input above, the same worker still answers good requests."""
    server, _ = served
    for case in ("nan", "truncated-tiff", "object-npy", "body-over-limit", "png-upload"):
        BAD_CASES[case][0](server)
    assert server.alive()
    assert _post(server, "/classify", json={"tubelet": GOOD.tolist(), "camera_id": "cam-lin"}).status_code == 200
    assert requests.get(server.url + "/readyz", timeout=TIMEOUT).status_code == 200


# ------------------------------------------------------------------ concurrency


def test_concurrent_clients_get_in_process_results(served):
    """16 threads, good and bad requests interleaved: every good one 200 and exact, every bad one 400."""
    server, model_dir = served
    tubelets = [counts_tubelet(t=8, h=16 + i % 5, w=20, seed=i) for i in range(32)]
    expected = [in_process_scores(model_dir, a, radiometric_calibration()) for a in tubelets]
    bad = np.full((4, 8, 8), np.nan, np.float32)

    def call(i: int) -> tuple[int, requests.Response]:
        if i % 4 == 3:  # every fourth request is bad: it must not fail a batch of good ones
            return i, _upload(server, _npy(bad), "cam-lin")
        return i, _upload(server, _npy(tubelets[i]), "cam-lin")

    before = _post(server, "/stats", json={}).json()["batch_sizes"]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(len(tubelets))))
    tag = _post(server, "/metadata", json={}).json()["model_version"]
    for i, resp in results:
        if i % 4 == 3:
            assert resp.status_code == 400 and "non-finite" in resp.text
        else:
            _assert_prediction(resp, expected[i], "v1", tag)
    after = _post(server, "/stats", json={}).json()["batch_sizes"]
    calls = {int(k): v - before.get(k, 0) for k, v in after.items()}
    # Every good request went through the batched model call, whatever the batch sizes were.
    assert sum(k * v for k, v in calls.items()) == 24, calls


# ------------------------------------------------------------------ schemathesis


def test_schemathesis_finds_no_server_error(served, tmp_path):
    """Property-based requests from the live OpenAPI schema: zero 5xx."""
    server, _ = served
    st = Path(sys.executable).with_name("st")
    report = tmp_path / "junit.xml"
    cmd = [
        str(st),
        "run",
        server.url + "/docs.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "15",
        "--seed",
        "1",
        "--workers",
        "2",
        "--phases",
        "examples,coverage,fuzzing",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "60",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=bento_env(tmp_path / "unused"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Server error" not in out
    import xml.etree.ElementTree as ET

    cases = ET.parse(report).getroot().iter("testcase")
    tested = {c.get("name"): [e.tag for e in c if e.tag in ("failure", "error")] for c in cases}
    for route in ("/classify", "/classify_upload", "/register_camera", "/infer", "/metadata"):
        assert f"POST {route}" in tested, f"schemathesis did not exercise {route}: {sorted(tested)}"
    assert not any(tested.values()), tested
    assert server.alive()


def test_overload_gets_429_or_503_never_500(served):
    """More clients than max_concurrency: the excess gets 429 (BentoML's concurrency limit;
    the internal /infer calls count too) or 503 (batcher), both 'retry later'; never a 500."""
    server, _ = served
    payload = _npy(counts_tubelet(t=8, h=16, w=16))
    barrier = __import__("threading").Barrier(LIMITS.max_concurrency + 16)

    def call(_: int) -> int:
        barrier.wait(timeout=60)  # all at once
        return _upload(server, payload, "cam-lin").status_code

    with ThreadPoolExecutor(LIMITS.max_concurrency + 16) as pool:
        codes = list(pool.map(call, range(LIMITS.max_concurrency + 16)))
    assert set(codes) <= {200, 429, 503}, sorted(codes)
    assert codes.count(200) > 0
    assert server.alive()
    assert _post(server, "/classify", json={"tubelet": GOOD.tolist(), "camera_id": "cam-lin"}).status_code == 200
