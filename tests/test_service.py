"""The bento served for real: `bentoml serve` on 127.0.0.1, called over HTTP.

One server per module (the bento the package step built from a small untrained model),
plus servers of the same service with other arguments where a test needs them (two
workers, a small capacity). Every bad input must get a 4xx in the one error shape that
says what is wrong, logged once without a traceback; the worker must survive all of
them with its memory bounded; good answers must equal the in-process prediction, alone
or in a crowd.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from serving_payloads import (
    good_payloads,
    hostile_payloads,
    multipart,
    npy_bytes,
    tiff_pages,
)

from tests.serving_helpers import (
    REGISTER_TOKEN,
    Server,
    counts_tubelet,
    display8_calibration,
    display8_tubelet,
    in_process_scores,
    packaged_once,
    radiometric_calibration,
    schemathesis_run,
    small_package_params,
    source_server,
    worker_rss,
)
from thermops.serve.errors import is_error_body

LIMITS = small_package_params()
TIMEOUT = 60
AUTH = {"Authorization": f"Bearer {REGISTER_TOKEN}"}
CAMERAS = {"cam-lin": radiometric_calibration(), "cam-d8": display8_calibration()}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, model dir, bento tag, BENTOML_HOME) for the packaged bento, torn down after the module."""
    paths, home, result = packaged_once(tmp_path_factory)
    server = Server(result["bento_tag"], home, paths["root"], tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        server.wait_ready()
        yield server, paths["model"], result["bento_tag"], home
    finally:
        server.stop()


def _post(server: Server, route: str, **kw) -> requests.Response:
    return requests.post(server.url + route, timeout=TIMEOUT, **kw)


def _send(server: Server, payload) -> requests.Response:
    return _post(server, payload.route, data=payload.body, headers=payload.headers)


def _upload(server: Server, data: bytes, camera_id: str, name: str = "t.npy"):
    return _post(server, "/classify_upload", files={"file": (name, data)}, data={"camera_id": camera_id})


def _model_version(server: Server) -> str:
    return _post(server, "/metadata", json={}).json()["model_version"]


def _assert_prediction(resp: requests.Response, expected: dict[str, float], calibration_version: str, model_tag: str):
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body["scores"]) == set(expected)
    for k, v in expected.items():
        assert body["scores"][k] == pytest.approx(v, abs=1e-5)
    assert body["label"] == max(expected, key=expected.get)
    assert body["calibration_version"] == calibration_version
    assert body["model_version"] == model_tag


def _error(resp: requests.Response) -> dict:
    body = resp.json()
    assert is_error_body(body), body
    return body["error"]


# ------------------------------------------------------------------ health and metadata


def test_health_and_readiness(served):
    server = served[0]
    for route in ("/healthz", "/livez", "/readyz"):
        assert requests.get(server.url + route, timeout=TIMEOUT).status_code == 200


def test_metadata_has_lineage_gate_envelope_classes_and_no_secret(served):
    server = served[0]
    meta = _post(server, "/metadata", json={}).json()
    assert meta["classes"] == ["person", "vehicle", "animal", "nuisance"]
    assert meta["lineage"]["calibrations"] == {"cam-d8": "d1", "cam-lin": "v1"}
    assert meta["lineage"]["data_version"] == "0123456789abcdef" * 2
    assert meta["gate"]["passed"] is True
    assert meta["envelope"]["pitch_deg"] == [-3.0, 3.0]
    assert meta["input"]["frames"] == 8 and meta["input"]["size"] == 32
    assert meta["cameras"]["cam-lin"]["origin"] == "trained"
    assert meta["model_version"].startswith(LIMITS.model_name + ":")
    assert meta["device"] == "cpu" and meta["limits"]["max_concurrency"] == LIMITS.max_concurrency
    assert REGISTER_TOKEN not in json.dumps(meta)


# ------------------------------------------------------------------ good requests


@pytest.mark.parametrize("payload", good_payloads(), ids=lambda p: p.name)
def test_good_requests_equal_in_process(served, payload):
    """JSON, .npy, page-loop TIFF, zlib TIFF; radiometric and display8 cameras."""
    server, model_dir, _, _ = served
    cam = CAMERAS[payload.camera]
    resp = _send(server, payload)
    _assert_prediction(resp, in_process_scores(model_dir, payload.tubelet, cam), cam.version, _model_version(server))
    assert resp.json()["units"] == ("celsius" if payload.camera == "cam-lin" else "display8")


def test_every_page_of_a_page_loop_tiff_is_a_frame(served):
    """Written one page at a time, the TIFF is classified from all its frames, not the first:
    the answer equals the .npy upload of the same frames and differs from the first frame's."""
    server = served[0]
    arr = counts_tubelet(8, 32, 32, seed=21)
    arr[4:] += 200  # the later frames differ
    whole = _upload(server, tiff_pages(arr), "cam-lin", "t.tiff").json()["scores"]
    npy = _upload(server, npy_bytes(arr), "cam-lin").json()["scores"]
    first = _upload(server, npy_bytes(arr[:1]), "cam-lin").json()["scores"]
    assert whole == pytest.approx(npy, abs=1e-6)
    assert whole != pytest.approx(first, abs=1e-6)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 9, 70), (20, 100, 60), (32, 128, 12)])
def test_any_tubelet_size_is_resampled(served, shape):
    server, model_dir, _, _ = served
    arr = display8_tubelet(*shape)
    resp = _upload(server, npy_bytes(arr), "cam-d8")
    _assert_prediction(resp, in_process_scores(model_dir, arr, display8_calibration()), "d1", _model_version(server))


def test_a_model_without_geometry_answers_the_same_with_or_without_window_geometry(served):
    """Today's geometry-free model: the window fields are accepted and ignored on both routes, even
    values a geometry model would refuse (a window wider than the image, a point above the horizon);
    /metadata and the answer say so (`geometry` null)."""
    server, model_dir, _, _ = served
    meta = _post(server, "/metadata", json={}).json()
    assert meta["input"]["geometry"] == [] and meta["request_geometry"]["takes_geometry"] is False
    assert "ignored" in meta["request_geometry"]["note"]
    arr = counts_tubelet(seed=43)
    plain = _post(server, "/classify", json={"tubelet": arr.tolist(), "camera_id": "cam-lin"})
    _assert_prediction(
        plain, in_process_scores(model_dir, arr, radiometric_calibration()), "v1", _model_version(server)
    )
    assert plain.json()["geometry"] is None
    plain_upload = _upload(server, npy_bytes(arr), "cam-lin")
    assert plain_upload.json() == plain.json()
    for fields in ({"window_px": 48.0, "ground_px": [192.0, 250.0]}, {"window_px": 5000.0, "ground_px": [192.0, 5.0]}):
        body = {"tubelet": arr.tolist(), "camera_id": "cam-lin", **fields}
        assert _post(server, "/classify", json=body).json() == plain.json()
        form = {"camera_id": "cam-lin", **{k: json.dumps(v) for k, v in fields.items()}}
        up = _post(server, "/classify_upload", files={"file": ("t.npy", npy_bytes(arr))}, data=form)
        assert up.json() == plain.json()
    # malformed fields are still refused (schema), before anything else
    bad = _post(server, "/classify", json={"tubelet": arr.tolist(), "camera_id": "cam-lin", "window_px": -1.0})
    assert bad.status_code == 400 and _error(bad)["field"] == "window_px"


# ------------------------------------------------------------------ cameras


def test_register_a_display8_camera_with_the_token_and_use_it_at_once(served):
    server, model_dir, _, _ = served
    cal = display8_calibration("roof-cam-7", "2026-11-22a")
    arr = display8_tubelet(4, 16, 16, seed=7)
    before = _post(server, "/classify", json={"tubelet": arr.tolist(), "camera_id": "roof-cam-7"})
    assert before.status_code == 404 and _error(before)["code"] == "unknown_camera"
    body = {"calibration": cal.model_dump(mode="json")}
    assert _post(server, "/register_camera", json=body).status_code == 401
    assert _post(server, "/register_camera", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 403
    reg = _post(server, "/register_camera", json=body, headers=AUTH)
    assert reg.status_code == 200, reg.text
    assert reg.json() == {
        "camera_id": "roof-cam-7",
        "calibration_version": "2026-11-22a",
        "units": "display8",
        "replaced": False,
    }
    resp = _post(server, "/classify", json={"tubelet": arr.tolist(), "camera_id": "roof-cam-7"})
    _assert_prediction(resp, in_process_scores(model_dir, arr, cal), "2026-11-22a", _model_version(server))
    assert _post(server, "/metadata", json={}).json()["cameras"]["roof-cam-7"]["origin"] == "registered"


@pytest.mark.parametrize(
    "calibration, status, code, message",
    [
        (
            radiometric_calibration("new-radiometric").model_dump(mode="json"),
            400,
            "invalid_calibration",
            "only display8",
        ),
        (display8_calibration("cam-lin").model_dump(mode="json"), 409, "camera_conflict", "cannot be replaced"),
        (
            {**display8_calibration("x1").model_dump(mode="json"), "agc": {"mode": "none"}},
            400,
            "invalid_calibration",
            "agc",
        ),
        ({"camera_id": "Bad Id!", "version": "1"}, 400, "invalid_calibration", "camera_id"),
    ],
    ids=["radiometric", "trained-camera", "display8-without-agc", "malformed"],
)
def test_register_camera_refusals(served, calibration, status, code, message):
    resp = _post(served[0], "/register_camera", json={"calibration": calibration}, headers=AUTH)
    assert resp.status_code == status, resp.text
    err = _error(resp)
    assert err["code"] == code and message in err["message"] and err["field"] == "calibration"


def test_registrations_are_capped(served):
    server = served[0]
    codes = [
        _post(
            server,
            "/register_camera",
            json={"calibration": display8_calibration(f"cap-{i}").model_dump(mode="json")},
            headers=AUTH,
        ).status_code
        for i in range(LIMITS.max_registered_cameras + 1)
    ]
    assert codes[-1] == 409 and 200 in codes
    over = _post(
        server,
        "/register_camera",
        json={"calibration": display8_calibration("cap-x").model_dump(mode="json")},
        headers=AUTH,
    )
    assert _error(over)["code"] == "too_many_cameras"


# ------------------------------------------------------------------ bad input


HOSTILE = hostile_payloads(LIMITS)


@pytest.mark.parametrize("payload", HOSTILE, ids=lambda p: p.name)
def test_bad_input_gets_its_4xx_in_one_shape_that_says_what_is_wrong(served, payload):
    resp = _send(served[0], payload)
    assert resp.status_code in payload.statuses, (resp.status_code, resp.text[:500])
    err = _error(resp)
    assert payload.fragment in err["message"], err
    assert resp.headers["content-type"] == "application/json"


def test_errors_of_other_routes_and_methods_have_the_shape_too(served):
    server = served[0]
    for resp in (
        requests.get(server.url + "/nope", timeout=TIMEOUT),
        requests.get(server.url + "/classify", timeout=TIMEOUT),
        _post(server, "/metadata", data=b"[not json", headers={"Content-Type": "application/json"}),
    ):
        assert 400 <= resp.status_code < 500
        _error(resp)


def test_each_client_error_is_logged_once_at_warning_without_traceback(served):
    server = served[0]
    marker = f"log-probe-{time.time_ns()}"
    resp = _post(server, "/classify", json={"tubelet": [[[0.0] * 8] * 8], "camera_id": marker})
    assert resp.status_code == 404
    time.sleep(0.5)
    lines = [ln for ln in server.log.read_text(errors="replace").splitlines() if marker in ln]
    assert len(lines) == 1 and "[WARNING]" in lines[0] and "404 unknown_camera" in lines[0], lines
    # and a 4-D JSON array (the 9,000 lines) writes one line too
    before = len(server.log.read_text(errors="replace").splitlines())
    _post(server, "/classify", json={"tubelet": np.zeros((4, 8, 8, 8)).tolist(), "camera_id": "cam-lin"})
    time.sleep(0.5)
    new = server.log.read_text(errors="replace").splitlines()[before:]
    assert len([ln for ln in new if "/classify" in ln]) == 1, new[:20]


def test_worker_survives_bad_input_with_memory_bounded_and_no_traceback(served):
    """All hostile requests, three times over from 8 threads: never a 5xx, the worker alive,
    its resident memory growing by less than 256 MiB (it would need gigabytes to decode the bombs)."""
    server = served[0]
    base = worker_rss(server)
    peak = [base]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], worker_rss(server))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda p: _send(server, p).status_code, HOSTILE * 3))
    finally:
        stop.set()
        watcher.join()
    assert all(400 <= c < 500 for c in codes), sorted(set(codes))
    assert peak[0] - base < 256 << 20, f"worker RSS grew {(peak[0] - base) >> 20} MiB"
    assert server.alive()
    assert (
        _post(server, "/classify", json={"tubelet": counts_tubelet().tolist(), "camera_id": "cam-lin"}).status_code
        == 200
    )
    assert "Traceback" not in server.log.read_text(errors="replace")


# ------------------------------------------------------------------ concurrency


def test_concurrent_good_and_bad_requests_answer_as_alone_and_batch(served):
    """16 threads, good and bad interleaved: every good answer equals its in-process
    prediction, every bad one gets its 4xx, and the model saw batches larger than one."""
    server, model_dir, _, _ = served
    tubelets = [counts_tubelet(t=8, h=16 + i % 5, w=20, seed=i) for i in range(48)]
    expected = [in_process_scores(model_dir, a, radiometric_calibration()) for a in tubelets]
    bad = np.full((4, 8, 8), np.nan, np.float32)

    def call(i: int) -> tuple[int, requests.Response]:
        if i % 4 == 3:
            return i, _upload(server, npy_bytes(bad), "cam-lin")
        return i, _upload(server, npy_bytes(tubelets[i]), "cam-lin")

    before = _post(server, "/stats", json={}).json()["batch_sizes"]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(len(tubelets))))
    tag = _model_version(server)
    for i, resp in results:
        if i % 4 == 3:
            assert resp.status_code == 400 and "non-finite" in resp.text
        else:
            _assert_prediction(resp, expected[i], "v1", tag)
    after = _post(server, "/stats", json={}).json()["batch_sizes"]
    calls = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    assert sum(k * v for k, v in calls.items()) == 36, calls
    assert max(calls) > 1, calls


@pytest.fixture(scope="module")
def small_capacity(served, tmp_path_factory):
    """The same service with a capacity of 4 requests in flight."""
    _, _, tag, home = served
    server = source_server(
        home, tag, tmp_path_factory.mktemp("cap") / "serve.log", max_concurrency=4, state_dir="state-cap"
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_above_capacity_503_with_retry_after_below_never(small_capacity):
    server = small_capacity
    payload = npy_bytes(counts_tubelet(t=8, h=32, w=32))
    n = 40
    barrier = threading.Barrier(n)

    def call(_: int) -> requests.Response:
        barrier.wait(timeout=60)
        return _upload(server, payload, "cam-lin")

    with ThreadPoolExecutor(n) as pool:
        resps = list(pool.map(call, range(n)))
    codes = [r.status_code for r in resps]
    assert set(codes) <= {200, 503}, sorted(codes)
    assert codes.count(200) >= 4 and codes.count(503) > 0
    for r in resps:
        if r.status_code == 503:
            assert r.headers["retry-after"] == str(LIMITS.retry_after_s) and _error(r)["code"] == "overloaded"
    # below the capacity: never refused
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: _upload(server, payload, "cam-lin").status_code, range(40))) == {200}
    assert server.alive()


def test_two_workers_share_registrations_and_a_restart_keeps_them(served, tmp_path_factory):
    _, _, tag, home = served
    log = tmp_path_factory.mktemp("two") / "serve.log"
    args = {"workers": 2, "state_dir": "state-two"}
    server = source_server(home, tag, log, **args)
    arr = display8_tubelet(4, 16, 16, seed=9)
    try:
        server.wait_ready()
        cal = display8_calibration("gate-9", "g1").model_dump(mode="json")
        assert _post(server, "/register_camera", json={"calibration": cal}, headers=AUTH).status_code == 200
        pids, codes = set(), []
        deadline = time.monotonic() + 90  # which worker accepts a connection is the kernel's choice: under
        while len(pids) < 2 and time.monotonic() < deadline:  # load one may take many in a row, so ask until both did
            s = requests.Session()  # a new connection each time: the workers take turns
            codes.append(
                s.post(server.url + "/classify", json={"tubelet": arr.tolist(), "camera_id": "gate-9"}).status_code
            )
            pids.add(s.post(server.url + "/stats", json={}).json()["pid"])
        assert len(pids) == 2, f"both workers answered ({len(codes)} connections)"
        assert set(codes) == {200}
    finally:
        server.stop()
    again = source_server(home, tag, log.with_name("again.log"), **args)
    try:
        again.wait_ready()
        resp = _post(again, "/classify", json={"tubelet": arr.tolist(), "camera_id": "gate-9"})
        assert resp.status_code == 200 and resp.json()["calibration_version"] == "g1"
    finally:
        again.stop()


# ------------------------------------------------------------------ schemathesis


def test_schemathesis_finds_no_server_error_and_only_documented_answers(served, tmp_path):
    """Property-based requests from the live OpenAPI schema: zero 5xx, every status and
    body as documented (the error routes included)."""
    server = served[0]
    tested = schemathesis_run(server.url, tmp_path, max_examples=40)
    for route in ("/classify", "/classify_upload", "/register_camera", "/metadata", "/stats"):
        assert f"POST {route}" in tested, f"schemathesis did not exercise {route}: {sorted(tested)}"
    assert not any(tested.values()), tested
    assert server.alive()


def test_the_openapi_schema_documents_each_route_errors(served):
    spec = requests.get(served[0].url + "/docs.json", timeout=TIMEOUT).json()
    assert "Error" in spec["components"]["schemas"]
    for route, extra in (
        ("/classify", {"404"}),
        ("/classify_upload", {"404"}),
        ("/register_camera", {"401", "403", "409"}),
    ):
        responses = spec["paths"][route]["post"]["responses"]
        assert {"200", "400", "413", "415", "503"} | extra <= set(responses), responses.keys()
        assert "500" not in responses
    assert "infer" not in json.dumps(spec["paths"])  # the model call is not a public route


def test_multipart_upload_part_order_does_not_matter(served):
    server, model_dir, _, _ = served
    arr = counts_tubelet(seed=31)
    body, headers = multipart([("camera_id", b"cam-lin", None), ("file", npy_bytes(arr), "t.npy")])
    resp = _post(server, "/classify_upload", data=body, headers=headers)
    _assert_prediction(resp, in_process_scores(model_dir, arr, radiometric_calibration()), "v1", _model_version(server))
