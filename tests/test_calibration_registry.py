"""The camera registry: add and record calibrations, validated before writing, history through git."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from pipeline.recalibrate import main
from tests.calibration_helpers import commit_all, make_project
from thermops.camera.calibration import CalibrationError, load_calibration
from thermops.camera.registry import (
    add_camera,
    calibration_history,
    find_calibration_version,
    next_version,
    parse_assignment,
    record_calibration,
)

DAY = dt.date(2026, 11, 22)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_next_version_bumps_within_a_day_and_restarts_on_a_new_one():
    assert next_version("2026-11-22.1", DAY) == "2026-11-22.2"
    assert next_version("2026-11-01.3", DAY) == "2026-11-22.1"
    assert next_version("hit-uav-display8-v1", DAY) == "2026-11-22.1"


def test_add_display8_camera_of_unknown_geometry(tmp_path):
    cal = add_camera(tmp_path, "yard-east", width=640, height=480, valid_from=DAY, description="new pole")
    loaded = load_calibration(tmp_path / "yard-east.yaml")
    assert loaded == cal
    assert loaded.version == "2026-11-22.1" and loaded.units == "display8"
    assert loaded.geometry.known is False and loaded.geometry.fx is None
    assert (loaded.geometry.image_width, loaded.geometry.image_height) == (640, 480)
    assert loaded.agc.mode == "unknown"


def test_add_refuses_duplicates_and_bad_input_and_writes_nothing(tmp_path):
    add_camera(tmp_path, "cam1", width=320, height=256, valid_from=DAY)
    before = _snapshot(tmp_path)
    with pytest.raises(CalibrationError, match="already registered"):
        add_camera(tmp_path, "cam1", width=640, height=512)
    with pytest.raises(CalibrationError, match="geometry.image_width"):
        add_camera(tmp_path, "cam2", width=0, height=512)
    with pytest.raises(CalibrationError, match="camera_id"):
        add_camera(tmp_path, "Bad Id", width=640, height=512)
    with pytest.raises(CalibrationError, match="--width and --height"):
        add_camera(tmp_path, "cam3")
    assert _snapshot(tmp_path) == before


def test_add_from_a_full_calibration_file(tmp_path):
    src = yaml.safe_load(open("data/calibration/fence_mid.yaml"))
    for key in ("camera_id", "version", "valid_from"):
        del src[key]
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(src))
    reg = tmp_path / "reg"
    cal = add_camera(reg, "fence_b", from_file=tmp_path / "in.yaml", valid_from=DAY)
    assert cal.camera_id == "fence_b" and cal.version == "2026-11-22.1" and cal.geometry.fx == 903.29


def test_record_bumps_version_and_keeps_git_history(tmp_path):
    root = make_project(tmp_path, cameras=("fence_mid",))
    reg = root / "data" / "calibration"
    old, new = record_calibration(reg, "fence_mid", assignments=[("geometry.pitch_deg", 8.0)], valid_from=DAY)
    assert (old.version, new.version) == ("2026-11-01.1", "2026-11-22.1")
    assert new.valid_from == DAY and new.geometry.pitch_deg == 8.0 and new.radiometry == old.radiometry
    commit_all(root, "re-aimed")
    _, third = record_calibration(reg, "fence_mid", assignments=[("geometry.roll_deg", 0.5)], valid_from=DAY)
    assert third.version == "2026-11-22.2"
    commit_all(root, "roll fixed")
    versions = [e.calibration.version for e in calibration_history(reg, "fence_mid")]
    assert versions == ["2026-11-22.2", "2026-11-22.1", "2026-11-01.1"]
    assert find_calibration_version(reg, "fence_mid", "2026-11-01.1") == old
    assert find_calibration_version(reg, "fence_mid", "1999-01-01.1") is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"assignments": [("geometry.pitch_deg", 200.0)]}, "geometry.pitch_deg"),
        ({"assignments": [("geometry.pich_deg", 8.0)]}, "no field 'pich_deg'"),
        ({"assignments": [("radiometry.mode", "planck")]}, "needs planck_r"),
        ({"assignments": [("geometry.pitch_deg", 8.0)], "valid_from": dt.date(2026, 1, 1)}, "before the current"),
        ({"assignments": [("geometry.pitch_deg", 8.0)], "version": "2026-11-01.1"}, "is the current one"),
        ({"assignments": []}, "nothing changed"),
    ],
)
def test_record_rejects_bad_changes_and_writes_nothing(tmp_path, kwargs, match):
    root = make_project(tmp_path, cameras=("fence_mid",))
    reg = root / "data" / "calibration"
    before = _snapshot(reg)
    kwargs.setdefault("valid_from", DAY)
    with pytest.raises(CalibrationError, match=match):
        record_calibration(reg, "fence_mid", **kwargs)
    assert _snapshot(reg) == before  # no temp file left behind either


def test_parse_assignment_types_values_and_rejects_junk():
    assert parse_assignment("geometry.pitch_deg=8") == ("geometry.pitch_deg", 8)
    assert parse_assignment("nuc.table_id=fm-b") == ("nuc.table_id", "fm-b")
    with pytest.raises(CalibrationError, match="KEY=VALUE"):
        parse_assignment("geometry.pitch_deg")


def test_cli_add_record_history_and_clear_errors(tmp_path, capsys):
    root = make_project(tmp_path, cameras=("fence_mid",))
    reg = str(root / "data" / "calibration")
    main(["--calibrations", reg, "add", "yard-east", "--width", "640", "--height", "512", "--valid-from", "2026-11-22"])
    assert "added yard-east version 2026-11-22.1" in capsys.readouterr().out
    main(
        ["--calibrations", reg, "record", "fence_mid", "--set", "geometry.pitch_deg=8.0", "--valid-from", "2026-11-22"]
    )
    assert "recorded fence_mid version 2026-11-22.1 (was 2026-11-01.1)" in capsys.readouterr().out
    commit_all(root, "cli edits")
    main(["--calibrations", reg, "history", "fence_mid"])
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in out] == ["2026-11-22.1", "2026-11-01.1"]
    before = _snapshot(root / "data" / "calibration")
    for argv in (
        ["record", "fence_mid", "--set", "geometry.pitch_deg=abc"],
        ["record", "nope", "--set", "geometry.pitch_deg=3"],
        ["add", "fence_mid", "--width", "1", "--height", "1"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["--calibrations", reg, *argv])
        assert exc.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert _snapshot(root / "data" / "calibration") == before


def test_history_without_a_git_binary_reads_the_same_versions(tmp_path, monkeypatch):
    # The component image may lack git; libgit2 (pygit2, a DVC dependency) reads history then.
    root = make_project(tmp_path, cameras=("fence_mid",))
    reg = root / "data" / "calibration"
    record_calibration(reg, "fence_mid", assignments=[("geometry.pitch_deg", 8.0)], valid_from=DAY)
    commit_all(root, "re-aimed")
    record_calibration(reg, "fence_mid", description="uncommitted", valid_from=DAY)
    with_git = calibration_history(reg, "fence_mid")
    monkeypatch.setattr("thermops.camera.registry.shutil.which", lambda name: None)
    without = calibration_history(reg, "fence_mid")
    assert [e.calibration for e in without] == [e.calibration for e in with_git]
    assert [e.commit for e in without] == [e.commit for e in with_git] and len(without) == 2


def test_record_a_confirmation_new_version_same_values(tmp_path, capsys):
    root = make_project(tmp_path, cameras=("fence_mid",))
    reg = root / "data" / "calibration"
    old, new = record_calibration(
        reg, "fence_mid", confirm=True, valid_from=DAY, description="re-checked, nothing moved"
    )
    assert new.version == "2026-11-22.1" and new.valid_from == DAY
    assert new.geometry == old.geometry and new.radiometry == old.radiometry and new.nuc == old.nuc
    main(["--calibrations", str(reg), "record", "fence_mid", "--confirm", "--valid-from", "2026-11-22"])
    assert "confirmed fence_mid version 2026-11-22.2 (was 2026-11-22.1)" in capsys.readouterr().out
    # Without --confirm an unchanged record is refused, and the error says how to confirm.
    with pytest.raises(CalibrationError, match="use --confirm"):
        record_calibration(reg, "fence_mid", valid_from=DAY)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["record", "fence_mid", "--confirm", "--set", "geometry.pitch_deg=8"], "contradicts --set and --from"),
        (["record", "fence_mid", "--set", "geometry.pitch_deg=8", "--from", "x.yaml"], "give --set or --from"),
        (["add", "cam9", "--from", "x.yaml", "--width", "640"], "--from FILE and --width contradict"),
        (["add", "cam9", "--from", "x.yaml", "--description", "d"], "--from FILE and --description contradict"),
        (["add", "cam9", "--width", "640"], "--width and --height"),
        (["reset", "--all", "fence_mid"], "--all and a camera"),
        (["reset"], "name a camera, or --all"),
    ],
)
def test_cli_rejects_contradictory_flags_and_writes_nothing(tmp_path, capsys, argv, message):
    root = make_project(tmp_path, cameras=("fence_mid",))
    reg = root / "data" / "calibration"
    before = _snapshot(reg)
    extra = ["--params", str(root / "params.yaml")] if argv[0] == "reset" else []
    with pytest.raises(SystemExit) as exc:
        main(["--calibrations", str(reg), argv[0], *extra, *argv[1:]])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert _snapshot(reg) == before


def test_add_says_what_happens_next(tmp_path, capsys):
    main(["--calibrations", str(tmp_path), "add", "yard-east", "--width", "640", "--height", "512"])
    out = capsys.readouterr().out
    assert "next: commit data/calibration/yard-east.yaml" in out and "new camera" in out and "unused" in out


def test_every_cli_write_is_canonical_and_fmt_restores_the_bytes(tmp_path, capsys):
    from thermops.camera.registry import canonical_yaml, format_calibration, is_canonical

    root = make_project(tmp_path, cameras=("fence_mid",))
    reg = root / "data" / "calibration"
    path = reg / "fence_mid.yaml"
    _, new = record_calibration(reg, "fence_mid", assignments=[("geometry.pitch_deg", 8.0)], valid_from=DAY)
    assert path.read_text() == canonical_yaml(new) and is_canonical(path, new)
    canonical = path.read_bytes()
    # A hand edit: a comment and two keys swapped. Same content, other bytes.
    lines = path.read_text().splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if line.startswith("description:"))
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    path.write_text("# re-aimed by the night shift\n" + "".join(lines))
    assert load_calibration(path) == new and not is_canonical(path, new)
    with pytest.raises(SystemExit) as exc:
        main(["--calibrations", str(reg), "fmt", "--check"])
    assert exc.value.code == 1 and "not canonical: " in capsys.readouterr().out
    assert format_calibration(reg, "fence_mid") is True and path.read_bytes() == canonical
    assert format_calibration(reg, "fence_mid") is False
    main(["--calibrations", str(reg), "fmt", "--check"])
    assert "1 calibration file(s) in the canonical form" in capsys.readouterr().out
