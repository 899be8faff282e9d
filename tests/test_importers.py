"""Importers and the ingest step: the three real sets against their MANIFEST counts,
a 16-bit TIFF sequence and a PyAV video made here, and corrupted copies that must be
rejected with a clear message and no partial output."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from components import ingest
from thermops.camera.calibration import parse_calibration, write_calibration
from thermops.data.importers import ImportDataError, IngestParams, SourceParams, import_source
from thermops.data.importers.tracks import iou, link_tracks
from thermops.data.raw import load_frames, read_annotations, read_clips

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
CAL = ROOT / "data" / "calibration"
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
CLASSES = list(PARAMS["classes"])
# hit-uav/MANIFEST.md: box counts of the 400-image subset.
MANIFEST_HIT_UAV = {"Bicycle": 617, "Car": 928, "DontCare": 20, "OtherVehicle": 23, "Person": 1782}


def _params(**over) -> IngestParams:
    from thermops.config import section

    return section({"ingest": {**PARAMS["ingest"], **over}}, "ingest", IngestParams)


def _spec(name: str, **over) -> SourceParams:
    """A source of params.yaml with its root made absolute (tests run from any folder)."""
    raw = dict(PARAMS["ingest"]["sources"][name])
    raw["root"] = str((ROOT / raw["root"]).resolve())
    raw.update(over)
    return _params(sources={name: raw}).sources[name]


def _import(name: str, spec: SourceParams, out: Path, cal_dir: Path = CAL) -> dict:
    return import_source(name, spec, _params(), CLASSES, cal_dir, out)


@pytest.fixture(scope="module")
def hit_uav_voc(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imp") / "hit-uav"
    _import("hit-uav", _spec("hit-uav"), out)
    return out


# ---------------------------------------------------------------- real sets


def test_hit_uav_voc_counts_match_manifest(hit_uav_voc):
    clips = read_clips(hit_uav_voc)
    anns = read_annotations(hit_uav_voc)
    summary = yaml.safe_load((hit_uav_voc / "import.json").read_text())
    assert len(clips) == 400 and summary["frames"] == 400
    # MANIFEST: Person 1782, Car 928, Bicycle 617, OtherVehicle 23, DontCare 20.
    assert summary["boxes_per_source_label"] == MANIFEST_HIT_UAV
    by_src = collections.Counter(a["source_label"] for a in anns)
    assert by_src == {"Person": 1782, "Car": 928, "Bicycle": 617, "OtherVehicle": 23}  # DontCare dropped
    assert collections.Counter(a["label"] for a in anns) == {"person": 1782, "vehicle": 951, "nuisance": 617}
    # Images with at least one box of each class: Person 242, Car 187, Bicycle 58, OtherVehicle 16.
    imgs = {k: len({a["clip_id"] for a in anns if a["source_label"] == k}) for k in by_src}
    assert imgs == {"Person": 242, "Car": 187, "Bicycle": 58, "OtherVehicle": 16}
    # 127 day images (`0_` prefix), 273 night; 4 images have no boxes at all (DontCare only is not "no boxes").
    assert sum(c.clip_id.startswith("0_") for c in clips) == 127
    assert all(c.units == "display8" and c.dtype == "uint8" and (c.width, c.height) == (640, 512) for c in clips)
    assert {c.calibration_version for c in clips} == {"hit-uav-display8-v1"}
    # Still images: one frame per clip, every box its own one-frame track.
    assert all(c.n_frames == 1 for c in clips) and all(a["frame"] == 0 for a in anns)
    per_clip = collections.Counter((a["clip_id"], a["track_id"]) for a in anns)
    assert set(per_clip.values()) == {1}
    assert (hit_uav_voc / "LICENSE_CC-BY-4.0.txt").is_file() and (hit_uav_voc / "MANIFEST.md").is_file()
    frame = load_frames(hit_uav_voc, clips[0])
    assert frame.dtype == np.uint8 and frame.shape == (1, 512, 640)


def test_hit_uav_coco_variant_gives_the_same_boxes_as_voc(hit_uav_voc, tmp_path):
    out = tmp_path / "coco"
    summary = _import("hit-uav-coco", _spec("hit-uav-coco"), out)
    assert summary["clips"] == 400
    assert summary["boxes_per_source_label"] == MANIFEST_HIT_UAV

    def boxes(root):
        return sorted((a["clip_id"], a["label"], a["x0"], a["y0"], a["x1"], a["y1"]) for a in read_annotations(root))

    assert boxes(out) == boxes(hit_uav_voc)


def test_standard_coco_read_of_hit_uav_fails_naming_the_variant(tmp_path):
    with pytest.raises(ImportDataError, match=r"no top-level 'annotations'.*variant: hit-uav"):
        _import("hit-uav-coco", _spec("hit-uav-coco", variant="standard"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_thermal_dogs_people_yolo_counts_match_manifest(tmp_path):
    out = tmp_path / "dogs"
    _import("thermal-dogs-people", _spec("thermal-dogs-people"), out)
    clips, anns = read_clips(out), read_annotations(out)
    assert len(clips) == 203
    split = {"train": (142, 97, 84), "valid": (41, 27, 22), "test": (20, 16, 11)}  # images, person, dog
    for s, (n_img, n_person, n_dog) in split.items():
        assert sum(c.clip_id.startswith(f"{s}_") for c in clips) == n_img
        got = collections.Counter(a["source_label"] for a in anns if a["clip_id"].startswith(f"{s}_"))
        assert got == {"person": n_person, "dog": n_dog}
    assert collections.Counter(a["label"] for a in anns) == {"person": 140, "animal": 117}
    assert len({c.clip_id for c in clips} - {a["clip_id"] for a in anns}) == 18  # images with no box
    # Pseudo-colour -> one channel by the Spectra ramp (params `palette: spectra`), checked on one
    # image: the on-image colour bar (left columns, hot at the top) becomes a falling grey ramp, and
    # the labelled people are brighter than the image around them (white-hot), which luma breaks.
    from PIL import Image

    from thermops.data.importers.images import to_single_channel

    src = sorted((REAL / "thermal-dogs-people" / "test" / "images").glob("IMG_0002 4_*.jpg"))[0]  # bar at the left
    rgb = np.asarray(Image.open(src).convert("RGB"))
    clip = next(c for c in clips if c.clip_id.startswith("test_IMG_0002_4"))
    got = load_frames(out, clip)[0]
    assert got.dtype == np.uint8 and got.shape == (416, 416)
    assert np.array_equal(got, to_single_channel(rgb, "x", "spectra"))
    bar = np.median(got[:, 0:3].astype(float), axis=1)
    assert bar[:40].mean() > 230 and bar[-40:].mean() < 30 and np.corrcoef(bar, np.arange(416))[0, 1] < -0.95
    by_id = {c.clip_id: c for c in clips}
    contrast = []
    for a in [a for a in anns if a["label"] == "person"][:30]:
        x0, y0, x1, y1 = (int(round(a[k])) for k in ("x0", "y0", "x1", "y1"))
        frame = load_frames(out, by_id[a["clip_id"]])[0].astype(float)
        contrast.append(np.median(frame[y0:y1, x0:x1]) - np.median(frame))
    assert np.median(contrast) > 20  # people are warm, so brighter than the median of their image


def test_palette_ramp_inverts_to_a_monotone_grey_and_luma_does_not():
    from thermops.data.importers.images import PALETTES, to_single_channel

    ramp = PALETTES["spectra"].astype(np.uint8)[None]  # (1, K, 3), coldest first
    grey = to_single_channel(ramp, "ramp", "spectra")[0].astype(int)
    assert grey[0] < 10 and grey[-1] > 245 and np.all(np.diff(grey) >= -3)  # monotone up to the 5-bit table
    luma = to_single_channel(ramp, "ramp", "luma")[0].astype(int)
    assert (np.maximum.accumulate(luma) - luma).max() > 100  # red is far darker than yellow: luma folds the ramp
    with pytest.raises(ValueError, match="unknown palette"):
        to_single_channel(ramp, "ramp", "iron")


def test_tno_sequences_import_as_frame_folders(tmp_path):
    # Frames only (no auto-labelling): every frame of the three sequences.
    out = tmp_path / "tno"
    _import("tno-fel", _spec("tno-fel", autolabel="none", frame_range={}), out)
    clips = {c.clip_id: c for c in read_clips(out)}
    expected = {"Nato_camp_sequence": 32, "Duine_sequence": 23, "Tree_sequence": 19}  # tno MANIFEST.md
    assert {k: c.n_frames for k, c in clips.items()} == expected
    assert {c.camera_id for c in clips.values()} == {"tno-nato-camp", "tno-duine", "tno-tree"}
    assert all((c.width, c.height, c.units) == (360, 270, "display8") for c in clips.values())
    assert read_annotations(out) == []
    # The default params: person boxes by background subtraction, none in the first frame.
    out2 = tmp_path / "tno-auto"
    _import("tno-fel", _spec("tno-fel"), out2)
    clips2 = {c.clip_id: c for c in read_clips(out2)}
    anns = read_annotations(out2)
    assert clips2["Tree_sequence"].n_frames == 10  # cut before the field-of-view shift
    assert {a["label"] for a in anns} == {"person"} and {a["source_label"] for a in anns} == {"auto:bgsub"}
    assert not [a for a in anns if a["frame"] == 0]
    frames_with_box = collections.Counter(a["clip_id"] for a in anns)
    assert frames_with_box == {"Nato_camp_sequence": 31, "Duine_sequence": 22, "Tree_sequence": 9}
    # Boxes are person-sized (the walking person is 15-30 px wide, 35-55 px tall here).
    w = np.array([a["x1"] - a["x0"] for a in anns])
    h = np.array([a["y1"] - a["y0"] for a in anns])
    assert (w < 40).all() and (h < 60).all() and (h > w).mean() > 0.9


# ---------------------------------------------------------------- made here


def _radiometric_cal(directory: Path, camera: str, w: int, h: int) -> None:
    write_calibration(
        parse_calibration(
            {
                "camera_id": camera,
                "version": "lab-1",
                "valid_from": "2026-11-01",
                "source": "test",
                "geometry": {"known": False, "image_width": w, "image_height": h},
                "radiometry": {
                    "mode": "linear",
                    "bit_depth": 14,
                    "gain_counts_per_k": 50.0,
                    "offset_counts": 7000.0,
                    "netd_mk": 50.0,
                },
            }
        ),
        directory,
    )


def _display_cal(directory: Path, camera: str, w: int, h: int) -> None:
    write_calibration(
        parse_calibration(
            {
                "camera_id": camera,
                "version": "v1",
                "valid_from": "2026-11-01",
                "source": "test",
                "geometry": {"known": False, "image_width": w, "image_height": h},
                "radiometry": {"mode": "display8", "bit_depth": 8},
                "agc": {"mode": "unknown"},
            }
        ),
        directory,
    )


def _moving_square(t: int, h: int, w: int, base: int, hot: int, dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    frames = (base + rng.integers(0, 3, size=(t, h, w))).astype(dtype)
    for k in range(t):
        frames[k, 20:32, 4 + 3 * k : 12 + 3 * k] = hot
    return frames


def test_sixteen_bit_tiff_sequence_keeps_counts(tmp_path):
    import tifffile

    cal = tmp_path / "cal"
    _radiometric_cal(cal, "lab", 64, 48)
    frames = _moving_square(8, 48, 64, 8000, 9500, np.uint16)
    seq = tmp_path / "src" / "seq"
    seq.mkdir(parents=True)
    for k in range(4):  # four single-page files, then one multi-page file with the rest
        tifffile.imwrite(seq / f"f{k + 1}.tif", frames[k])
    tifffile.imwrite(seq / "f10.tif", frames[4:])  # natural order: f10 after f4
    spec = SourceParams(
        format="frames",
        root=str(tmp_path / "src"),
        items=["seq"],
        camera_id="lab",
        fps=9.0,
        autolabel="bgsub",
        autolabel_class="person",
    )
    out = tmp_path / "out"
    import_source("lab", spec, _params(bgsub_threshold=200.0), CLASSES, cal, out)
    (clip,) = read_clips(out)
    assert (clip.units, clip.dtype, clip.n_frames, clip.fps) == ("counts", "uint16", 8, 9.0)
    assert np.array_equal(load_frames(out, clip), frames)
    anns = read_annotations(out)
    assert len(anns) == 8 and {a["track_id"] for a in anns} == {"0"}  # one track by IoU linking
    assert [a["x0"] for a in anns] == [4.0 + 3 * k for k in range(8)]


def test_video_decoded_with_pyav(tmp_path):
    import av

    frames = _moving_square(12, 48, 64, 40, 230, np.uint8)
    src = tmp_path / "src"
    src.mkdir()
    with av.open(str(src / "walk.mkv"), "w") as container:
        stream = container.add_stream("ffv1", rate=10)  # lossless, so the frames can be compared
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gray"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="gray")))
        container.mux(stream.encode())
    cal = tmp_path / "cal"
    _display_cal(cal, "cam-v", 64, 48)
    spec = SourceParams(
        format="video", root=str(src), items=["walk.mkv"], camera_id="cam-v", autolabel="bgsub", absent_frames=[0]
    )
    out = tmp_path / "out"
    import_source("vid", spec, _params(bgsub_threshold=60.0), CLASSES, cal, out)
    (clip,) = read_clips(out)
    assert (clip.n_frames, clip.fps, clip.units) == (12, 10.0, "display8")
    assert np.array_equal(load_frames(out, clip), frames)
    anns = read_annotations(out)
    assert [a["frame"] for a in anns] == list(range(1, 12)) and {a["track_id"] for a in anns} == {"0"}


def test_iou_linking_keeps_crossing_tracks_apart():
    assert iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))[0, 0] == pytest.approx(1 / 3)
    a = [[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]]
    b = [[30, 0, 40, 10], [28, 0, 38, 10], [26, 0, 36, 10]]
    frames = [[("person", a[k]), ("vehicle", b[k])] for k in range(3)]
    frames[1] = frames[1][::-1]  # box order must not matter
    assert link_tracks(frames, 0.3, 1) == [[0, 1], [1, 0], [0, 1]]
    # A gap longer than max_gap starts a new track.
    gap = [[("person", a[0])], [], [], [("person", a[0])]]
    assert link_tracks(gap, 0.3, 1) == [[0], [], [], [1]]


# ---------------------------------------------------------------- corrupted copies


def _voc_copy(tmp_path: Path, n: int = 3) -> Path:
    """A small copy of the HIT-UAV VOC set (n images) to corrupt."""
    src = REAL / "hit-uav"
    root = tmp_path / "hit"
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "voc").mkdir(parents=True)
    for img in sorted((src / "images").glob("*.jpg"))[:n]:
        shutil.copy(img, root / "images" / img.name)
        shutil.copy(src / "annotations" / "voc" / f"{img.stem}.xml", root / "annotations" / "voc")
    return root


def _run_ingest(tmp_path: Path, sources: dict, cal_dir: Path = CAL, names: list[str] | None = None) -> Path:
    params = dict(PARAMS)
    params["data"] = {"sources": ["synthetic", *(list(sources) if names is None else names)]}
    params["ingest"] = {**PARAMS["ingest"], "sources": sources}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    out = tmp_path / "imported"
    ingest.run(path, out, cal_dir)
    return out


def _voc_source(root: Path, **over) -> dict:
    return {
        "format": "voc",
        "root": str(root),
        "camera_id": "hit-uav",
        "items": ["images"],
        "annotations": "annotations/voc",
        "class_map": PARAMS["ingest"]["sources"]["hit-uav"]["class_map"],
        **over,
    }


def _edit_xml(root: Path, old: str, new: str) -> None:
    xml = sorted((root / "annotations" / "voc").glob("*.xml"))[0]
    text = xml.read_text()
    assert old in text
    xml.write_text(text.replace(old, new, 1))


def _corrupt_truncated(root: Path) -> None:
    img = sorted((root / "images").glob("*.jpg"))[1]
    img.write_bytes(img.read_bytes()[:2000])


def _corrupt_box_outside(root: Path) -> None:
    _edit_xml(root, "<xmax>220</xmax>", "<xmax>900</xmax>")


def _corrupt_unknown_class(root: Path) -> None:
    _edit_xml(root, "<name>Car</name>", "<name>Tank</name>")


def _corrupt_empty_folder(root: Path) -> None:
    for p in (root / "images").iterdir():
        p.unlink()


def _corrupt_nan_frame(root: Path) -> None:
    import tifffile

    img = sorted((root / "images").glob("*.jpg"))[0]
    arr = np.zeros((512, 640), np.float32)
    arr[10, 10] = np.nan
    img.unlink()
    tifffile.imwrite(root / "images" / f"{img.stem}.tif", arr)


CORRUPTIONS = {
    "truncated image": (_corrupt_truncated, r"unreadable image"),
    "box outside the image": (_corrupt_box_outside, r"box \[186\.0, 108\.0, 900\.0, 143\.0\] outside the 640x512"),
    "unknown class": (_corrupt_unknown_class, r"class 'Tank' is not mapped; add it to ingest\.sources\.hit-uav"),
    "empty folder": (_corrupt_empty_folder, r"images: no image files"),
    "NaN frame": (_corrupt_nan_frame, r"1 NaN/inf pixel values"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_copy_is_rejected_and_nothing_is_left(case, tmp_path):
    corrupt, message = CORRUPTIONS[case]
    root = _voc_copy(tmp_path)
    good = _run_ingest(tmp_path, {"hit-uav": _voc_source(root)})  # a previous good import
    before = sorted(p.relative_to(good) for p in good.rglob("*"))
    corrupt(root)
    with pytest.raises(ImportDataError, match=message):
        _run_ingest(tmp_path, {"hit-uav": _voc_source(root)})
    # The previous output is untouched and no temporary folder is left behind.
    assert sorted(p.relative_to(good) for p in good.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_missing_calibration_is_rejected(tmp_path):
    root = _voc_copy(tmp_path)
    cal = tmp_path / "cal"
    cal.mkdir()
    with pytest.raises(ImportDataError, match=r"camera hit-uav has no calibration file .*cal/hit-uav\.yaml"):
        _run_ingest(tmp_path, {"hit-uav": _voc_source(root)}, cal_dir=cal)
    assert not (tmp_path / "imported").exists()


def test_calibration_size_mismatch_and_bad_class_map_are_rejected(tmp_path):
    root = _voc_copy(tmp_path)
    cal = tmp_path / "cal"
    _display_cal(cal, "hit-uav", 320, 256)
    with pytest.raises(ImportDataError, match=r"frames are 640x512, calibration hit-uav says 320x256"):
        _run_ingest(tmp_path, {"hit-uav": _voc_source(root)}, cal_dir=cal)
    with pytest.raises(ImportDataError, match=r"class_map maps to \['tank'\], not thermops classes"):
        _run_ingest(tmp_path, {"hit-uav": _voc_source(root, class_map={"Car": "tank"})})


def test_default_sources_import_nothing_and_never_read_the_real_data(tmp_path):
    # Every real root points nowhere: the default run must not look at them.
    sources = {k: {**v, "root": str(tmp_path / "absent")} for k, v in PARAMS["ingest"]["sources"].items()}
    out = _run_ingest(tmp_path, sources, names=[])
    assert [p.name for p in out.iterdir()] == ["index.json"]
    assert yaml.safe_load((out / "index.json").read_text()) == {"sources": {}}


def test_cli_reports_one_error_line_and_exit_1(tmp_path):
    root = _voc_copy(tmp_path, n=2)
    _corrupt_unknown_class(root)
    params = dict(PARAMS)
    params["data"] = {"sources": ["synthetic", "hit-uav"]}
    params["ingest"] = {**PARAMS["ingest"], "sources": {"hit-uav": _voc_source(root)}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.ingest",
            "--params",
            str(tmp_path / "params.yaml"),
            "--calibration",
            str(CAL),
            "--out",
            str(tmp_path / "imported"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: source hit-uav, clip ") and "class 'Tank' is not mapped" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "imported").exists()
    # An unknown source name is a params error naming it.
    params["data"] = {"sources": ["synthetic", "flir-adas"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.ingest",
            "--params",
            str(tmp_path / "params.yaml"),
            "--calibration",
            str(CAL),
            "--out",
            str(tmp_path / "imported"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "['flir-adas'] have no entry in ingest.sources" in proc.stderr


def test_labelled_image_sequence_is_linked_into_tracks(tmp_path):
    # YOLO labels on consecutive PNG frames (`sequence: true`): one clip, boxes linked by IoU.
    from PIL import Image

    frames = _moving_square(6, 48, 64, 40, 230, np.uint8)
    (tmp_path / "seq" / "images").mkdir(parents=True)
    (tmp_path / "seq" / "labels").mkdir()
    for k, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / "seq" / "images" / f"frame{k}.png")
        cx, cy = (8 + 3 * k) / 64, 26 / 48
        label = f"0 {cx} {cy} {8 / 64} {12 / 48}\n1 0.9 0.1 0.1 0.1\n"  # a walker and a fixed sign
        (tmp_path / "seq" / "labels" / f"frame{k}.txt").write_text(label)
    cal = tmp_path / "cal"
    _display_cal(cal, "cam-s", 64, 48)
    spec = SourceParams(
        format="yolo",
        root=str(tmp_path),
        items=["seq/images"],
        camera_id="cam-s",
        sequence=True,
        fps=9.0,
        names=["walker", "sign"],
        class_map={"walker": "person", "sign": "nuisance"},
    )
    out = tmp_path / "out"
    import_source("seq", spec, _params(), CLASSES, cal, out)
    (clip,) = read_clips(out)
    assert (clip.clip_id, clip.n_frames, clip.fps) == ("seq", 6, 9.0)
    anns = read_annotations(out)
    tracks = {(a["label"], a["track_id"]) for a in anns}
    assert tracks == {("person", "0"), ("nuisance", "1")}
    assert [a["x0"] for a in anns if a["label"] == "person"] == pytest.approx([4.0 + 3 * k for k in range(6)])
