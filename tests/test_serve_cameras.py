"""Registered cameras as managed state: validated, capped, persisted, shared between workers.

A "worker" here is a `CameraRegistry` on the same state folder, in this process or in
another one (the concurrency test registers from several processes at once).
"""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
from serving_helpers import display8_calibration, radiometric_calibration

from thermops.serve.cameras import CameraRegistry, check_token, read_token
from thermops.serve.errors import CameraConflict, Forbidden, TubeletError, Unauthorized, UnknownCamera

TRAINED = {"cam-lin": radiometric_calibration()}


def cal(camera_id: str, version: str = "d1") -> dict:
    return display8_calibration(camera_id, version).model_dump(mode="json")


def test_a_registration_is_seen_by_a_second_worker_and_after_a_restart(tmp_path):
    a = CameraRegistry(TRAINED, tmp_path, max_registered=4)
    b = CameraRegistry(TRAINED, tmp_path, max_registered=4)  # another worker, started before
    with pytest.raises(UnknownCamera):
        b.get("roof-7")
    assert a.register(cal("roof-7"))[1] is False
    assert b.get("roof-7").version == "d1"  # no restart needed
    assert CameraRegistry(TRAINED, tmp_path, max_registered=4).get("roof-7").version == "d1"  # a restart
    a.register(cal("roof-7", "d2"))
    assert b.get("roof-7").version == "d2"  # a replacement reaches the other worker too
    assert b.describe()["roof-7"]["origin"] == "registered"


def test_registrations_are_capped(tmp_path):
    reg = CameraRegistry(TRAINED, tmp_path, max_registered=2)
    reg.register(cal("c1"))
    reg.register(cal("c2"))
    with pytest.raises(CameraConflict) as info:
        reg.register(cal("c3"))
    assert info.value.code == "too_many_cameras" and info.value.status == 409
    _, replaced = reg.register(cal("c2", "d9"))  # replacing an existing one is within the cap
    assert replaced is True
    assert sorted(json.loads((tmp_path / "cameras.json").read_text())) == ["c1", "c2"]


@pytest.mark.parametrize(
    "data, error, fragment",
    [
        (radiometric_calibration("new-rad").model_dump(mode="json"), TubeletError, "only display8"),
        (display8_calibration("cam-lin").model_dump(mode="json"), CameraConflict, "cannot be replaced"),
        ({**cal("x1"), "agc": {"mode": "none"}}, TubeletError, "agc.mode"),
        ({"camera_id": "Bad Id!", "version": "1"}, TubeletError, "camera_id"),
        ("not a mapping", TubeletError, "mapping"),
    ],
)
def test_invalid_registrations_are_refused_and_not_written(tmp_path, data, error, fragment):
    reg = CameraRegistry(TRAINED, tmp_path, max_registered=4)
    with pytest.raises(error, match=fragment):
        reg.register(data)
    assert not (tmp_path / "cameras.json").exists()


def _register_many(state_dir: str, start: int, n: int, cap: int, out) -> None:
    reg = CameraRegistry({}, state_dir, max_registered=cap)
    ok = 0
    for i in range(start, start + n):
        try:
            reg.register(cal(f"cam-{i}"))
            ok += 1
        except CameraConflict:
            pass
    out.put(ok)


def test_concurrent_workers_respect_the_cap_and_leave_a_valid_file(tmp_path):
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_register_many, args=(str(tmp_path), 10 * k, 5, 12, out)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    accepted = sum(out.get(timeout=5) for _ in procs)
    saved = json.loads((tmp_path / "cameras.json").read_text())
    assert accepted == 12 == len(saved)  # 20 tried, the cap held, none lost
    assert not list(tmp_path.glob(".cameras.json.tmp-*"))


def test_a_damaged_state_file_stops_the_start_but_not_a_running_worker(tmp_path):
    reg = CameraRegistry(TRAINED, tmp_path, max_registered=4)
    reg.register(cal("roof-7"))
    (tmp_path / "cameras.json").write_text("{not json")
    assert reg.get("roof-7").version == "d1"  # the running worker keeps what it read
    assert "unreadable registrations" in (reg.state_error or "")
    with pytest.raises(RuntimeError, match="unreadable registrations"):
        CameraRegistry(TRAINED, tmp_path, max_registered=4)


def test_camera_ids_are_checked_before_lookup(tmp_path):
    reg = CameraRegistry(TRAINED, tmp_path, max_registered=4)
    with pytest.raises(TubeletError, match="not a camera id"):
        reg.get("Bad/../id")
    with pytest.raises(UnknownCamera, match="known: cam-lin"):
        reg.get("nope")


def test_tokens(monkeypatch):
    monkeypatch.setenv("T_ENV", "x" * 20)
    token = read_token("T_ENV")
    check_token("Bearer " + "x" * 20, token, "T_ENV")
    check_token("bearer   " + "x" * 20, token, "T_ENV")
    with pytest.raises(Unauthorized):
        check_token(None, token, "T_ENV")
    with pytest.raises(Unauthorized):
        check_token("Token " + "x" * 20, token, "T_ENV")
    with pytest.raises(Forbidden, match="does not grant"):
        check_token("Bearer " + "y" * 20, token, "T_ENV")
    with pytest.raises(Forbidden, match="switched off"):
        check_token("Bearer " + "x" * 20, None, "T_ENV")
    monkeypatch.setenv("T_ENV", "")
    assert read_token("T_ENV") is None
    monkeypatch.setenv("T_ENV", "short")
    with pytest.raises(RuntimeError):
        read_token("T_ENV")
