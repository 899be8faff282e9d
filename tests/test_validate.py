"""The validate step: Great Expectations passes good prepared data, and names the
failed expectation, its column and example values for each bad case."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from browser_helpers import inspect_page, needs_chromium

from components import validate
from thermops.data.prepared import MANIFEST_COLUMNS
from thermops.data.validation import ValidateParams
from thermops.io import read_csv, write_csv

ROOT = Path(__file__).resolve().parents[1]
CAL = ROOT / "data" / "calibration"
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
CLASSES = list(PARAMS["classes"])


def _validate(data: Path, out: Path, cal: Path = CAL, frames: int | None = None, **bounds) -> dict:
    p = ValidateParams(**{**PARAMS["validate"], **bounds})
    t = frames or PARAMS["prepare"]["frames"]
    return validate.run(p, CLASSES, t, PARAMS["prepare"]["size"], data, cal, out / "report", out / "validate.json")


def _copy(prepared_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "prepared"
    shutil.copytree(prepared_dir, dst)
    return dst


def _edit_rows(data: Path, edit) -> None:
    rows = read_csv(data / "manifest.csv")
    edit(rows)
    write_csv(data / "manifest.csv", rows, MANIFEST_COLUMNS)


def _edit_tubelets(data: Path, edit) -> None:
    arr = np.load(data / "tubelets.npy")
    edit(arr)
    np.save(data / "tubelets.npy", arr)


def _failed(summary: dict) -> dict[str, dict]:
    return {f["check"]: f for f in summary["failed"]}


def test_good_prepared_data_passes_and_reports_render(prepared_dir, tmp_path):
    summary = _validate(prepared_dir, tmp_path)
    assert summary["success"], summary["failed"]
    assert summary["failed"] == [] and summary["expectations"] > 40
    report = tmp_path / "report"
    assert json.loads((report / "summary.json").read_text()) == summary
    assert "**PASSED**" in (report / "summary.md").read_text()
    # the run's results, every expectation, in one self-contained page (the Kubeflow view)
    index = (report / "index.html").read_text()
    assert "PASSED" in index and index.count("<tr class='ok'>") == summary["expectations"]
    assert not re.search(r"(src|href)=", index)
    docs = report / "datadocs"
    pages = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.html") if "static" not in p.parts)
    assert "expectations/prepared_tubelets.html" in pages and "expectations/class_balance.html" in pages
    assert sum(p.startswith("validations/") for p in pages) == 2
    suite_page = (docs / "expectations" / "prepared_tubelets.html").read_text()
    assert "t_hash" in suite_page and "track_splits" in suite_page  # the suite is shown, column by column
    metric = json.loads((tmp_path / "validate.json").read_text())
    assert metric == {
        "success": 1,
        "expectations": summary["expectations"],
        "failed": 0,
        "tubelets": summary["tubelets"],
    }


def _nan(data):
    _edit_tubelets(data, lambda a: a.__setitem__((0, 0, 0, 0), np.nan))


def _duplicate(data):
    def dup(a):
        a[1] = a[0]

    _edit_tubelets(data, dup)


def _track_in_two_splits(data):
    def edit(rows):
        a = rows[0]
        b = next(r for r in rows if r["split"] != a["split"])
        b["track_id"] = a["track_id"]

    _edit_rows(data, edit)


def _unknown_label(data):
    _edit_rows(data, lambda rows: rows[0].update(label="tank"))


def _stale_calibration(data):
    _edit_rows(data, lambda rows: rows[0].update(calibration_version="2019-01-01.0"))


def _unknown_camera(data):
    _edit_rows(data, lambda rows: rows[0].update(camera_id="roof_east"))


def _hot(data):
    # 900 degC in a celsius tubelet (the world writes display8 tubelets too: pick a celsius one)
    i = next(i for i, r in enumerate(read_csv(data / "manifest.csv")) if r["units"] == "celsius")
    _edit_tubelets(data, lambda a: a.__setitem__((i, 0, 0, 0), 900.0))


def _null(data):
    _edit_rows(data, lambda rows: rows[3].update(split=""))


def _float_frame(data):
    _edit_rows(data, lambda rows: rows[0].update(frame_start="3.5"))


BAD = {
    # case: (corruption, check, column, an example value that must be quoted)
    "NaN frame": (_nan, "no NaN or inf", "t_nonfinite", 1),
    "duplicate tubelet": (_duplicate, "no duplicate tubelets", "t_hash", None),
    "track in two splits": (_track_in_two_splits, "track ids disjoint between splits", "track_splits", None),
    "unknown label": (_unknown_label, "label set", "label", "tank"),
    "stale calibration": (_stale_calibration, "calibration version of {cam}", "calibration_version", "2019-01-01.0"),
    "camera without calibration": (_unknown_camera, "calibration file exists", "camera_id", "roof_east"),
    "implausible temperature": (_hot, "celsius range", "t_max", 900.0),
    "null split": (_null, "no nulls", "split", None),
    "non-integer frame": (_float_frame, "types", "frame_start", None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_fails_naming_the_expectation(case, prepared_dir, tmp_path):
    corrupt, check, column, example = BAD[case]
    data = _copy(prepared_dir, tmp_path)
    cam = read_csv(data / "manifest.csv")[0]["camera_id"]
    corrupt(data)
    summary = _validate(data, tmp_path)
    assert not summary["success"]
    failed = _failed(summary)
    check = check.format(cam=cam)
    assert check in failed, sorted(failed)
    f = failed[check]
    assert f["column"] == column
    if example is not None:
        assert example in f["examples"]
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "**FAILED**" in md and f"| {check} | {f['expectation']} | {column} |" in md
    if case == "track in two splits":
        assert any("+" in str(v) for v in f["examples"])  # e.g. "test+train"
        assert len(f["example_ids"]) == 2


def test_shape_class_balance_and_missing_calibration_file(prepared_dir, tmp_path):
    summary = _validate(prepared_dir, tmp_path / "a", frames=16, class_fraction=[0.3, 0.9])
    failed = _failed(summary)
    assert failed["tubelet shape"]["column"] == "t_frames" and failed["tubelet shape"]["examples"][0] == 8
    assert failed["class balance"]["column"] == "fraction"
    # A calibration file removed: the camera's rows no longer match an existing file.
    cal = tmp_path / "cal"
    shutil.copytree(CAL, cal)
    cam = read_csv(prepared_dir / "manifest.csv")[0]["camera_id"]
    (cal / f"{cam}.yaml").unlink()
    failed = _failed(_validate(prepared_dir, tmp_path / "b", cal=cal))
    assert cam in failed["calibration file exists"]["examples"]


def test_cli_exits_1_with_the_reason_and_keeps_the_report(prepared_dir, tmp_path):
    data = _copy(prepared_dir, tmp_path)
    _nan(data)
    out, metrics = tmp_path / "reports" / "validation", tmp_path / "metrics" / "validate.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.validate",
            "--params",
            str(ROOT / "params.yaml"),
            "--data",
            str(data),
            "--calibration",
            str(CAL),
            "--out",
            str(out),
            "--metrics",
            str(metrics),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: validation failed: 1 expectation(s): no NaN or inf")
    assert "t_nonfinite" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(metrics.read_text())["success"] == 0
    assert (out / "index.html").is_file() and not json.loads((out / "summary.json").read_text())["success"]
    # A missing prepared dataset is an error before anything is written.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.validate",
            "--params",
            str(ROOT / "params.yaml"),
            "--data",
            str(tmp_path / "nope"),
            "--calibration",
            str(CAL),
            "--out",
            str(tmp_path / "r2"),
            "--metrics",
            str(tmp_path / "m2.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "not a prepared dataset" in proc.stderr
    assert not (tmp_path / "r2").exists() and not (tmp_path / "m2.json").exists()


def test_reports_are_deterministic_and_load_nothing_from_the_network(prepared_dir, tmp_path):
    """Two runs on the same data give the same bytes (DVC hashes the folder); every asset is local."""
    _validate(prepared_dir, tmp_path / "a")
    _validate(prepared_dir, tmp_path / "b")
    a, b = tmp_path / "a" / "report", tmp_path / "b" / "report"
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert [f for f in files if (a / f).read_bytes() != (b / f).read_bytes()] == []
    for page in (a / "datadocs").rglob("*.html"):
        if "static" in page.relative_to(a / "datadocs").parts:
            continue
        text = page.read_text()
        for _tag, _attr, url in re.findall(r"<(script|link|img)\b[^>]*?\b(src|href)=[\"']([^\"']+)", text):
            assert not url.startswith(("http:", "https:", "//")), (page.name, url)
            if not url.startswith(("#", "data:")):
                assert (page.parent / url).resolve().is_file(), (page.name, url)
        assert not re.search(r"20\d\d-\d\d-\d\dT", text)  # no run time of this machine


def test_an_asset_the_vendored_set_lacks_is_an_error(tmp_path):
    from thermops.data.validation import offline_docs

    (tmp_path / "index.html").write_text(
        '<html><head><script src="https://cdn.example.org/new.js"></script></head></html>'
    )
    with pytest.raises(ValueError, match="vendor/web does not hold"):
        offline_docs(tmp_path)


@needs_chromium
def test_data_docs_and_the_results_page_render_with_the_network_off(prepared_dir, tmp_path):
    _validate(prepared_dir, tmp_path)
    report = tmp_path / "report"
    pages = [report / "datadocs" / "index.html"]
    pages += sorted((report / "datadocs" / "validations").rglob("*.html"))
    assert len(pages) == 3
    for page in pages:
        seen = inspect_page(page)
        assert seen["images"] and all(i["ok"] for i in seen["images"]), (page.name, seen["images"])
        assert len(seen["styles"]) == 6 and all(s["rules"] > 0 for s in seen["styles"]), (page.name, seen["styles"])
        assert {"jQuery", "vegaEmbed", "bootstrap"} <= set(seen["globals"]), (page.name, seen["globals"])
        assert seen["bootstrap_tables"] >= 1 and seen["text_chars"] > 300
    seen = inspect_page(report / "index.html")
    assert seen["text_chars"] > 2000 and seen["images"] == [] and seen["styles"] == []
