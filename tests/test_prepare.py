"""The prepare step on hand-made raw data: metric windows, splits, errors, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from params_helpers import from_params

from components import prepare
from thermops.camera.calibration import load_calibrations
from thermops.camera.geometry import PinholeCamera
from thermops.data.extract import PrepareError, PrepareParams, window_frames
from thermops.data.prepared import load_prepared, row_boxes
from thermops.data.raw import write_raw

CAM = "fence_mid"
CLASSES = ["person", "vehicle", "animal", "nuisance"]


def _make_raw(root: Path, cal, objects: list[tuple[str, str, float, float]], n_frames: int = 12) -> None:
    """One clip: warm rectangles of (track, label, range m, height m) on a 15 degC scene."""
    cam = PinholeCamera.from_calibration(cal)
    h, w = cal.geometry.image_height, cal.geometry.image_width
    temp = np.full((n_frames, h, w), 15.0)
    anns = []
    for k, (track, label, rng_m, height_m) in enumerate(objects):
        for f in range(n_frames):
            g = cam.ground_point_at_range(rng_m, lateral_m=(k - 1) * 0.08 * rng_m + 0.02 * f)
            uv, _ = cam.project(np.array([[g[0], g[1], 0.0], [g[0], g[1], height_m]]))
            hpx = uv[0, 1] - uv[1, 1]
            x0, x1 = uv[0, 0] - 0.2 * hpx, uv[0, 0] + 0.2 * hpx
            y0, y1 = uv[1, 1], uv[0, 1]
            temp[f, int(round(y0)) : int(round(y1)), int(round(x0)) : int(round(x1))] = 30.0
            anns.append(
                {
                    "clip_id": "c0",
                    "frame": f,
                    "track_id": track,
                    "label": label,
                    "source_label": label,
                    "x0": x0,
                    "y0": y0,
                    "x1": x1,
                    "y1": y1,
                    "ground_x": g[0],
                    "ground_y": g[1],
                    "distance_m": float(np.hypot(*g)),
                }
            )
    counts = np.round(cal.radiometry.celsius_to_counts(temp)).astype(np.uint16)
    clip = {
        "clip_id": "c0",
        "camera_id": CAM,
        "calibration_version": cal.version,
        "source": "synthetic",
        "n_frames": n_frames,
        "height": h,
        "width": w,
        "dtype": "uint16",
        "units": "counts",
        "fps": 9.0,
        "time_of_day_h": 22.0,
        "weather": "clear",
        "ambient_c": 15.0,
    }
    write_raw(root / "synthetic" / CAM, [clip], anns, {"c0": counts})


@pytest.fixture()
def cal(repo_root):
    return load_calibrations(repo_root / "data" / "calibration")[CAM]


def _run(tmp_path, repo_root, p=None, out="prepared"):
    p = from_params(PrepareParams, "prepare") if p is None else p
    return prepare.run(
        p, ["synthetic"], CLASSES, 7, tmp_path / "raw", repo_root / "data" / "calibration", tmp_path / out
    )


def _warm_fraction(tub: np.ndarray) -> float:
    """Fraction of the tubelet's rows that hold the warm object (first frame)."""
    rows = (tub[0] > 22.5).any(axis=1)
    return rows.mean()


def test_metric_window_makes_near_and_far_comparable(tmp_path, repo_root, cal):
    _make_raw(
        tmp_path / "raw",
        cal,
        [("near", "person", 30.0, 1.8), ("far", "person", 150.0, 1.8), ("truck", "vehicle", 60.0, 3.6)],
    )
    _run(tmp_path, repo_root)
    data = load_prepared(tmp_path / "prepared")
    objs = {r["track_id"].split("/")[-1]: i for i, r in enumerate(data.rows) if r["kind"] == "object"}
    near, far, truck = (_warm_fraction(data.tubelets[objs[k]]) for k in ("near", "far", "truck"))
    # A 1.8 m person fills ~1.8/4 of a 4 m window at 30 m and at 150 m alike.
    assert near == pytest.approx(1.8 / 4.0, abs=0.08)
    assert far == pytest.approx(near, abs=0.08)
    # Metric windows keep true size: the 3.6 m vehicle looks twice as tall as the person.
    assert truck == pytest.approx(2 * near, rel=0.2)
    row = data.rows[objs["far"]]
    assert row["units"] == "celsius" and float(row["window_m"]) == pytest.approx(4.0, rel=0.1)
    assert float(data.tubelets[objs["far"]].max()) == pytest.approx(30.0, abs=0.5)


def test_context_windows_without_geometry_scale_with_the_box(tmp_path, repo_root, cal):
    _make_raw(tmp_path / "raw", cal, [("person", "person", 40.0, 1.8), ("truck", "vehicle", 40.0, 3.6)])
    _run(tmp_path, repo_root, from_params(PrepareParams, "prepare", geometric=False, context=2.0))
    data = load_prepared(tmp_path / "prepared")
    fr = [_warm_fraction(data.tubelets[i]) for i, r in enumerate(data.rows) if r["kind"] == "object"]
    assert fr[0] == pytest.approx(0.5, abs=0.1) and fr[1] == pytest.approx(0.5, abs=0.1)


def test_box_fraction_cuts_some_tracks_box_relative_though_geometry_is_known(tmp_path, repo_root, cal):
    objs = [(f"t{i}", "person", 30.0 + 12 * i, 1.8) for i in range(10)]
    _make_raw(tmp_path / "raw", cal, objs)
    _run(tmp_path, repo_root, from_params(PrepareParams, "prepare", box_fraction=0.5, context=1.2))
    data = load_prepared(tmp_path / "prepared")
    objects = [r for r in data.rows if r["kind"] == "object"]
    metric = [r for r in objects if abs(float(r["window_m"]) - 4.0) < 0.3]
    boxed = [r for r in objects if abs(int(r["window_px"]) - 1.2 * float(r["box_px"])) <= 1.0]
    assert metric and boxed and len(metric) + len(boxed) == len(objects)  # each track one way or the other
    assert all(float(r["window_m"]) < 3.0 for r in boxed)  # the metric extent a box window covers is recorded
    _run(tmp_path, repo_root, from_params(PrepareParams, "prepare", box_fraction=0.5, context=1.2), out="again")
    assert (tmp_path / "again" / "manifest.csv").read_bytes() == (tmp_path / "prepared" / "manifest.csv").read_bytes()


def test_counts_kept_when_radiometric_off(tmp_path, repo_root, cal):
    _make_raw(tmp_path / "raw", cal, [("p", "person", 40.0, 1.8)])
    _run(tmp_path, repo_root, from_params(PrepareParams, "prepare", radiometric=False))
    data = load_prepared(tmp_path / "prepared")
    assert {r["units"] for r in data.rows} == {"counts"}
    assert float(data.tubelets.max()) == pytest.approx(cal.radiometry.celsius_to_counts(30.0), abs=2)


def test_splits_by_track_deterministic_and_complete(tmp_path, repo_root, cal):
    objs = [(f"t{i}", CLASSES[i % 3], 30.0 + 10 * i, 1.8) for i in range(9)]
    _make_raw(tmp_path / "raw", cal, objs, n_frames=24)
    s1 = _run(tmp_path, repo_root)
    data = load_prepared(tmp_path / "prepared")
    splits_of: dict[str, set] = {}
    for r in data.rows:
        splits_of.setdefault(r["track_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    assert set(s1["by_split"]) == {"train", "val", "test"}
    assert len(data.rows) == s1["n_tubelets"] and data.tubelets.shape[1:] == (8, 32, 32)
    assert all(len(row_boxes(r)) == 8 for r in data.rows if r["kind"] == "object")
    _run(tmp_path, repo_root, out="again")
    for name in ("tubelets.npy", "manifest.csv", "summary.json"):
        assert (tmp_path / "prepared" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_short_and_single_frame_tracks_repeat_their_last_frame():
    assert window_frames([4], 8, 8) == [[4] * 8]
    assert window_frames([1, 2, 3], 5, 5) == [[1, 2, 3, 3, 3]]
    assert window_frames(list(range(20)), 8, 6) == [list(range(0, 8)), list(range(6, 14)), list(range(12, 20))]


def test_calibration_version_mismatch_is_rejected_and_nothing_written(tmp_path, repo_root, cal):
    stale = cal.model_copy(update={"version": "1999-01-01.1"})
    _make_raw(tmp_path / "raw", stale, [("p", "person", 40.0, 1.8)])
    with pytest.raises(PrepareError, match="re-run its import"):
        _run(tmp_path, repo_root)
    assert not (tmp_path / "prepared").exists()
    assert not list(tmp_path.glob(".prepared*"))


def test_unknown_label_and_unimported_source_are_rejected(tmp_path, repo_root, cal):
    _make_raw(tmp_path / "raw", cal, [("p", "ghost", 40.0, 1.8)])
    with pytest.raises(PrepareError, match="'ghost' is not one of the classes"):
        _run(tmp_path, repo_root)
    with pytest.raises(PrepareError, match="was not imported"):
        prepare.run(
            from_params(PrepareParams, "prepare"),
            ["hit-uav"],
            CLASSES,
            7,
            tmp_path / "raw",
            repo_root / "data" / "calibration",
            tmp_path / "x",
        )


def test_failed_run_keeps_previous_output(tmp_path, repo_root, cal):
    _make_raw(tmp_path / "raw", cal, [("p", "person", 40.0, 1.8)])
    _run(tmp_path, repo_root)
    before = (tmp_path / "prepared" / "manifest.csv").read_bytes()
    frames = tmp_path / "raw" / "synthetic" / CAM / "frames" / "c0.npy"
    frames.write_bytes(frames.read_bytes()[:1000])  # truncated file
    with pytest.raises(PrepareError, match="unreadable frames"):
        _run(tmp_path, repo_root)
    assert (tmp_path / "prepared" / "manifest.csv").read_bytes() == before


def test_params_are_validated():
    with pytest.raises(ValueError, match="sum to 1"):
        from_params(PrepareParams, "prepare", splits={"train": 0.5, "val": 0.2, "test": 0.2})


def test_cli_reports_errors_in_one_line(tmp_path, repo_root):
    from tests.conftest import run_step

    (tmp_path / "params.yaml").write_text(
        "seed: 1\nclasses: [person]\ndata: {sources: [synthetic]}\nprepare: {size: 4}\n"
    )
    proc = run_step(
        "components.prepare",
        "--params",
        str(tmp_path / "params.yaml"),
        "--raw",
        str(tmp_path),
        "--calibration",
        str(repo_root / "data" / "calibration"),
        "--out",
        str(tmp_path / "out"),
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: prepare:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_flat_background_is_skipped_and_near_windows_fit_the_frame(tmp_path, repo_root, cal):
    # A drip 1.5 m from the lens: a 4 m window would span thousands of pixels.
    _make_raw(tmp_path / "raw", cal, [("drip", "nuisance", 1.5, 0.3), ("p", "person", 40.0, 1.8)])
    raw = tmp_path / "raw" / "synthetic" / CAM / "frames" / "c0.npy"
    frames = np.load(raw)
    frames[:, : frames.shape[1] // 2] = frames.min()  # a flat, saturated upper half
    np.save(raw, frames)
    _run(tmp_path, repo_root, from_params(PrepareParams, "prepare", background_per_clip=20))
    data = load_prepared(tmp_path / "prepared")
    assert max(int(r["window_px"]) for r in data.rows) <= cal.geometry.image_width
    assert all(float(r["std"]) > 0 for r in data.rows if r["kind"] == "background")


def test_background_boxes_in_metres_span_the_same_sizes_at_every_range(tmp_path, repo_root, cal):
    """Box windows: background "boxes" 8-32 px across cover more metres the farther they are (the
    range-split shortcut: far background looks as big as a vehicle); `background_m` draws their
    metres instead, so near and far background windows cover the same range of sizes."""
    _make_raw(tmp_path / "raw", cal, [("p", "person", 40.0, 1.8)], n_frames=8)
    raw = tmp_path / "raw" / "synthetic" / CAM / "frames" / "c0.npy"
    frames = np.load(raw)
    np.save(raw, frames + np.random.default_rng(0).integers(0, 30, frames.shape).astype(frames.dtype))  # texture
    base = from_params(PrepareParams, "prepare", geometric=False, background_per_clip=60, background_m=None)

    def background(p, out):
        _run(tmp_path, repo_root, p, out)
        rows = [r for r in load_prepared(tmp_path / out).rows if r["kind"] == "background"]
        d = np.array([float(r["distance_m"]) for r in rows])
        m = np.array([float(r["window_m"]) for r in rows])
        near, far = d < np.median(d), d >= np.median(d)
        return m, near, far

    m, near, far = background(base, "px")
    assert np.median(m[far]) > 2 * np.median(m[near])  # pixel-sized: metres grow with range
    lo, hi = 0.3, 10.0
    m, near, far = background(from_params(PrepareParams, "prepare", geometric=False, background_per_clip=60,
                                          background_m=[lo, hi]), "m")  # fmt: skip
    ratio = np.median(m[far]) / np.median(m[near])
    assert 0.5 < ratio < 2.0
    capped = m < base.context * hi * 0.999  # windows reaching the frame edge are capped below context x hi
    assert (m[capped] >= base.context * lo * 0.999).all()
    with pytest.raises(ValueError, match="background_m"):
        from_params(PrepareParams, "prepare", background_m=[2.0, 1.0])


def _still_images(root: Path, cal, n: int) -> None:
    """`n` still images (one-frame clips) with a person, a vehicle and an animal box each."""
    h, w = cal.geometry.image_height, cal.geometry.image_width
    clips, anns, frames = [], [], {}
    for i in range(n):
        cid = f"img{i:02d}"
        frames[cid] = np.full((1, h, w), 6000, np.uint16)
        clips.append(
            {
                "clip_id": cid,
                "camera_id": CAM,
                "calibration_version": cal.version,
                "source": "synthetic",
                "n_frames": 1,
                "height": h,
                "width": w,
                "dtype": "uint16",
                "units": "counts",
                "fps": 0.0,
                "time_of_day_h": None,
                "weather": "",
                "ambient_c": None,
            }
        )
        for k, label in enumerate(["person", "vehicle", "animal"]):
            x0 = 40 + 100 * k
            frames[cid][0, 100:140, x0 : x0 + 20] = 7000
            anns.append(
                {
                    "clip_id": cid,
                    "frame": 0,
                    "track_id": f"t{k}",
                    "label": label,
                    "source_label": label,
                    "x0": x0,
                    "y0": 100,
                    "x1": x0 + 20,
                    "y1": 140,
                    "ground_x": None,
                    "ground_y": None,
                    "distance_m": None,
                }
            )
    write_raw(root, clips, anns, frames)


def test_single_images_are_split_by_image(tmp_path, repo_root, cal):
    """Boxes of one still image never straddle splits (they share scene and moment)."""
    _still_images(tmp_path / "raw" / "synthetic" / CAM, cal, 12)
    _run(tmp_path, repo_root, from_params(PrepareParams, "prepare", background_per_clip=0))
    data = load_prepared(tmp_path / "prepared")
    split_of_image: dict[str, set] = {}
    for r in data.rows:
        split_of_image.setdefault(r["clip_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_image.values())
    assert {next(iter(s)) for s in split_of_image.values()} == {"train", "val", "test"}
    assert all(len(row_boxes(r)) == 8 for r in data.rows)  # one frame repeated T times


def test_test_images_are_cut_alone_and_equal_the_full_cut(tmp_path, repo_root, cal, monkeypatch):
    """`keep_splits={'test'}` (the heldout step's by-image sources) cuts only the test images, and cuts them
    exactly as a full run does: the split of a still image comes from the image list, not from the cut."""
    from thermops.data import extract

    _still_images(tmp_path / "raw" / "synthetic" / CAM, cal, 20)
    folders = [("synthetic", tmp_path / "raw" / "synthetic" / CAM)]
    cals = load_calibrations(repo_root / "data" / "calibration")
    p = from_params(PrepareParams, "prepare")
    rows, arr = extract.extract_all(folders, cals, p, CLASSES, 7)
    loaded = []
    real_load = extract.load_frames
    monkeypatch.setattr(extract, "load_frames", lambda root, clip: loaded.append(clip.clip_id) or real_load(root, clip))
    trows, tarr = extract.extract_all(folders, cals, p, CLASSES, 7, frozenset({"test"}))
    test = [i for i, r in enumerate(rows) if r["split"] == "test"]
    assert test and [r["tubelet_id"] for r in trows] == [rows[i]["tubelet_id"] for i in test]
    assert np.array_equal(tarr, arr[test])
    assert sorted(set(loaded)) == sorted({rows[i]["clip_id"] for i in test})  # no other image was read


def test_clip_splits_of_the_source_are_kept_and_manifest_says_what_the_object_is(tmp_path, repo_root, cal):
    """Clips that name their split (the embedded world's clip-disjoint splits) keep it for every tubelet."""
    from thermops.data.raw import read_annotations, read_clips

    root = tmp_path / "raw" / "synthetic" / CAM
    _make_raw(tmp_path / "raw", cal, [(f"t{i}", CLASSES[i % 3], 30.0 + 10 * i, 1.8) for i in range(9)])
    clips = [{**c.__dict__, "split": "test", "agc": "gamma-inverted"} for c in read_clips(root)]
    frames = {"c0": np.load(root / "frames" / "c0.npy")}
    write_raw(root, clips, read_annotations(root), frames)
    _run(tmp_path, repo_root)
    data = load_prepared(tmp_path / "prepared")
    assert {r["split"] for r in data.rows} == {"test"}  # not split by track
    objects = [r for r in data.rows if r["kind"] == "object"]
    assert {r["agc"] for r in data.rows} == {"gamma-inverted"}
    assert {r["source_label"] for r in objects} == {"person", "vehicle", "animal"}
    assert {r["source_label"] for r in data.rows if r["kind"] == "background"} <= {"background"}
    assert all(float(r["box_px"]) > 2 for r in objects)
    clips[0]["split"] = "holdout"
    with pytest.raises(ValueError, match="holdout"):
        write_raw(root, clips, read_annotations(root), frames)
