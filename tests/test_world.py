"""The embedded thermal world: geometry, sensor physics, scene physics, determinism, the synthesize CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from params_helpers import from_params

from components import synthesize
from thermops.camera import sensor as S
from thermops.camera.calibration import load_calibration
from thermops.camera.geometry import PinholeCamera
from thermops.config import load_params, section
from thermops.data.raw import load_frames, read_annotations, read_clips
from thermops.world.objects import Canvas, Person
from thermops.world.scene import conditions
from thermops.world.synth import LABELS, SynthParams, camera_seed, synthesize_camera

ROOT = Path(__file__).resolve().parents[1]
CAL_DIR = ROOT / "data" / "calibration"
CAMERAS = ["gate_wide", "fence_mid", "perimeter_long", "street_cam", "yard_cam"]


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def cfg(params) -> SynthParams:
    return section(params, "synth", SynthParams)


def small(cfg: SynthParams, clips: int = 1, frames: int = 4, **kw) -> SynthParams:
    """`clips` train clips of `frames` frames (no val or test clips), counts output unless `outputs` says."""
    return dataclasses.replace(
        cfg,
        **{
            "clips": {"train": clips, "val": 0, "test": 0},
            "frames": {"train": frames, "val": frames, "test": frames},
            "stills": {"train": 0, "val": 0, "test": 0},
            "outputs": {"counts": 1.0},
            **kw,
        },
    )


def _small_cal(cal, w: int = 64, h: int = 48):
    g = cal.geometry.model_copy(update={"image_width": w, "image_height": h, "cx": (w - 1) / 2, "cy": (h - 1) / 2})
    return cal.model_copy(update={"geometry": g})


def test_calibrations_exist_and_differ():
    cals = [load_calibration(CAL_DIR / f"{c}.yaml") for c in CAMERAS]
    geoms = {(c.geometry.image_width, c.geometry.fx, c.geometry.height_m, c.geometry.pitch_deg) for c in cals}
    assert len(geoms) == len(CAMERAS)
    assert min(c.geometry.min_range_m for c in cals) <= 10.0
    assert max(c.geometry.max_range_m for c in cals) >= 200.0


@pytest.mark.parametrize("cam_id", CAMERAS)
def test_apparent_person_height_follows_pinhole_projection(cam_id):
    cal = load_calibration(CAL_DIR / f"{cam_id}.yaml")
    cam = PinholeCamera.from_calibration(cal)
    cond = conditions(2.0, "clear", 10.0)
    for r in np.geomspace(cam.min_range_m * 1.1, cam.max_range_m * 0.95, 5):
        xy = cam.ground_point_at_range(float(r), 0.0)
        person = Person(
            "person",
            "person_walking",
            xy,
            0.0,
            0.0,
            0.0,
            {"height_m": 1.8, "cloth_c": 30.0, "trousers_c": 30.0, "swing": 0.0},
        )
        field = np.zeros((cam.height, cam.width))
        cv = Canvas(cam, cond, field, np.full_like(field, np.inf))
        lo, hi = person.draw(cv, 0.0)
        expected = cam.apparent_height_px(xy, 1.8)
        assert abs((hi[1] - lo[1]) - expected) / expected < 0.10, (r, hi[1] - lo[1], expected)
        if expected >= 15:  # pixel rows actually painted (quantized to whole rows)
            rows = np.nonzero((field != 0).any(axis=1))[0]
            measured = rows.max() - rows.min() + 1
            assert abs(measured - expected) / expected < 0.10, (r, measured, expected)


def test_person_shrinks_with_distance():
    cam = PinholeCamera.from_calibration(load_calibration(CAL_DIR / "fence_mid.yaml"))
    near = cam.apparent_height_px(cam.ground_point_at_range(30.0), 1.8)
    far = cam.apparent_height_px(cam.ground_point_at_range(150.0), 1.8)
    assert near / far == pytest.approx(5.0, rel=0.15)


def test_temporal_noise_matches_netd():
    cal = _small_cal(load_calibration(CAL_DIR / "fence_mid.yaml"))
    rng = np.random.default_rng(0)
    model = S.SensorModel.from_calibration(
        cal, rng, from_params(S.SensorParams, "synth.sensor", defect_fraction=0.0), fps=9.0
    )
    temps = np.full((64, cal.geometry.image_height, cal.geometry.image_width), 20.0)
    counts = model.counts(temps, rng, ffc_phase_s=10.0).astype(np.float64)
    # Frame differences remove fixed patterns and the slow drift; /sqrt(2) for the difference of two frames.
    noise_k = np.diff(counts, axis=0).std() / math.sqrt(2) / cal.radiometry.gain_counts_per_k
    assert noise_k == pytest.approx(cal.radiometry.netd_mk / 1000.0, rel=0.20)


def test_column_fpn_visible_in_flat_scene():
    cal = _small_cal(load_calibration(CAL_DIR / "gate_wide.yaml"), 96, 64)
    rng = np.random.default_rng(1)
    sp = from_params(S.SensorParams, "synth.sensor", vignetting=0.0, defect_fraction=0.0, row_fpn_k=0.0)
    model = S.SensorModel.from_calibration(cal, rng, sp, fps=9.0)
    counts = model.counts(np.full((8, 64, 96), 15.0), rng).astype(np.float64) / cal.radiometry.gain_counts_per_k
    col_means = counts.mean(axis=(0, 1))
    netd = cal.radiometry.netd_mk / 1000.0
    noise_floor = netd / math.sqrt(8 * 64)  # what temporal noise alone leaves in a column mean
    assert col_means.std() > 5 * noise_floor
    assert col_means.std() == pytest.approx(sp.col_fpn_k, rel=0.35)
    # Without column FPN the column means are flat down to the per-pixel offsets.
    flat = S.SensorModel.from_calibration(cal, np.random.default_rng(1), dataclasses.replace(sp, col_fpn_k=0.0))
    c2 = flat.counts(np.full((8, 64, 96), 15.0), rng).astype(np.float64) / cal.radiometry.gain_counts_per_k
    assert c2.mean(axis=(0, 1)).std() < 0.5 * col_means.std()


def test_building_blocks_shapes_and_ranges():
    rng = np.random.default_rng(2)
    assert S.column_row_fpn((5, 6, 7), 0.1, 0.05, rng).shape == (6, 7)
    v = S.vignetting_map(32, 40, 0.2)
    assert v.max() == pytest.approx(1.0, abs=0.01) and v.min() == pytest.approx(0.8, abs=1e-6)
    ramp = S.offset_ramp(10, 0.5, ffc_every=4).ravel()
    assert ramp.tolist() == [0, 0.5, 1.0, 1.5, 0, 0.5, 1.0, 1.5, 0, 0.5]
    d = S.dead_hot_pixels((100, 100), 0.02, rng)
    assert 100 < np.count_nonzero(d) < 300 and set(np.unique(d)) <= {-1, 0, 1}
    q = S.quantize(np.array([-5.0, 3.4, 1e9]), 14)
    assert q.tolist() == [0.0, 3.0, 16383.0]
    x = np.zeros((2, 9, 9))
    x[:, 4, 4] = 1.0
    b = S.defocus(x, 1.0)
    assert b.sum() == pytest.approx(2.0, rel=1e-6) and b[0, 4, 4] < 0.5
    f = rng.normal(20, 5, (3, 32, 40))
    assert S.temporal_noise((3, 4, 5), 0.05, rng).shape == (3, 4, 5)
    before = f.copy()
    S.agc_linear(f, 1.0), S.agc_plateau(f, 0.02), S.defocus(f, 0.7), S.apply_vignetting(f, v, 20.0)
    assert np.array_equal(f, before)


def test_defects_exist_on_the_detector_but_the_camera_replaces_them():
    cal = _small_cal(load_calibration(CAL_DIR / "gate_wide.yaml"), 80, 60)
    sp = from_params(S.SensorParams, "synth.sensor", defect_fraction=0.01)
    temps = np.full((3, 60, 80), 20.0)
    raw = S.SensorModel.from_calibration(cal, np.random.default_rng(5), dataclasses.replace(sp, replace_defects=False))
    fixed = S.SensorModel.from_calibration(cal, np.random.default_rng(5), sp)
    c_raw, c_fixed = raw.counts(temps, np.random.default_rng(6)), fixed.counts(temps, np.random.default_rng(6))
    assert (c_raw == 0).any() and (c_raw == 2**14 - 1).any()
    celsius = cal.radiometry.counts_to_celsius(c_fixed)
    assert np.abs(celsius - 20.0).max() < 1.5  # no stuck pixel reaches the output


@pytest.mark.parametrize("agc", ["linear", "plateau"])
def test_agc_output_spans_its_range(agc):
    rng = np.random.default_rng(3)
    frames = 8000 + 50 * rng.normal(0, 3, (4, 48, 64))
    frames[:, 10:20, 10:20] += 2000  # a hot object
    out = S.agc_linear(frames, 1.0) if agc == "linear" else S.agc_plateau(frames, 0.02)
    assert out.dtype == np.uint8
    for f in out:
        assert f.min() == 0 and f.max() == 255
        assert len(np.unique(f)) > 64  # grey levels actually used, not just the two tails


def test_polarity_inversion_by_day_and_crossover(cfg):
    cam = PinholeCamera.from_calibration(load_calibration(CAL_DIR / "fence_mid.yaml"))
    from thermops.world.scene import background, camera_rays, layout

    rays = camera_rays(cam)
    lay = layout(cam, np.random.default_rng(4))

    def contrast(hour: float) -> float:
        cond = conditions(hour, "clear", 20.0)
        from thermops.world.objects import clothing_c

        bg, depth, _ = background(cam, rays, lay, cond)
        xy = cam.ground_point_at_range(40.0, 0.0)
        person = Person(
            "person",
            "person_walking",
            xy,
            0.0,
            0.0,
            0.0,
            {"height_m": 1.8, "cloth_c": clothing_c(cond, 0.5), "trousers_c": clothing_c(cond, 0.7), "swing": 0.0},
        )
        field = bg.copy()
        lo, hi = person.draw(Canvas(cam, cond, field, depth), 0.0)
        mask = np.abs(field - bg) > 1e-6
        v1 = int(math.ceil(hi[1]))
        ground_below = bg[v1 + 2 : v1 + 10, int(lo[0]) : int(math.ceil(hi[0]))]
        return float(field[mask].mean() - ground_below.mean())

    assert contrast(14.0) < -2.0  # sun-heated ground hotter than a clothed person
    assert contrast(2.0) > 5.0  # at night the person is the warm one
    assert abs(contrast(8.5)) < abs(contrast(2.0)) / 2  # near crossover in the morning


def test_rain_lowers_contrast():
    dry, wet = conditions(14.0, "clear", 20.0), conditions(14.0, "rain", 20.0)
    assert abs(wet.surface("asphalt") - wet.surface("grass")) < 0.3 * abs(dry.surface("asphalt") - dry.surface("grass"))
    assert dry.sky_zenith_c < -15.0


def test_camera_seed_is_stable_and_per_camera():
    assert camera_seed(1, "gate_wide") == int.from_bytes(hashlib.sha256(b"1/gate_wide").digest()[:8], "big") >> 1
    assert len({camera_seed(1, c) for c in CAMERAS}) == len(CAMERAS)


def _run_cli(tmp: Path, params: dict, cam: str, out: Path, cal_path: Path | None = None) -> None:
    p = tmp / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    synthesize.main(["--params", str(p), "--calibration", str(cal_path or CAL_DIR / f"{cam}.yaml"), "--out", str(out)])


def _tiny_params(params: dict, **synth) -> dict:
    out = dict(params)
    tiny = {
        "clips": {"train": 2, "val": 0, "test": 1},
        "frames": {"train": 4, "val": 4, "test": 8},
        "stills": {"train": 1, "val": 0, "test": 1},
    }
    out["synth"] = {**params["synth"], **tiny, **synth}
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path, params):
    tiny = _tiny_params(params)
    _run_cli(tmp_path, tiny, "gate_wide", tmp_path / "a")
    _run_cli(tmp_path, tiny, "gate_wide", tmp_path / "b")
    _run_cli(tmp_path, {**tiny, "seed": tiny["seed"] + 1}, "gate_wide", tmp_path / "c")
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db
    assert set(da) == set(dc) and da["frames/gate_wide-train000.npy"] != dc["frames/gate_wide-train000.npy"]


def test_clips_rendered_in_parallel_are_the_same_bytes_as_in_one_process(tmp_path, params, monkeypatch):
    # every clip draws from its own stream: the worker count changes the wall time only
    tiny = _tiny_params(params, outputs={"counts": 0.5, "plateau": 0.5})
    monkeypatch.setenv("THERMOPS_WORKERS", "1")
    _run_cli(tmp_path, tiny, "fence_mid", tmp_path / "one")
    monkeypatch.setenv("THERMOPS_WORKERS", "2")
    _run_cli(tmp_path, tiny, "fence_mid", tmp_path / "two")
    one, two = _digest(tmp_path / "one"), _digest(tmp_path / "two")
    assert len([f for f in one if f.startswith("frames/")]) == 5  # 3 sequences and 2 stills
    assert one == two


def test_raw_output_format_and_annotations(tmp_path, params, cfg):
    out = tmp_path / "raw"
    cal = load_calibration(CAL_DIR / "fence_mid.yaml")
    summary = synthesize.run(small(cfg, clips=2, frames=6), cal, out, params["seed"], params["classes"])
    clips = read_clips(out)
    anns = read_annotations(out)
    assert summary["clips"] == 2 and len(clips) == 2
    for c in clips:
        assert c.calibration_version == cal.version and c.units == "counts" and c.camera_id == "fence_mid"
        fr = load_frames(out, c)
        assert fr.dtype == np.uint16 and fr.max() < 2**14
        assert c.weather in ("clear", "overcast", "rain") and c.time_of_day_h is not None
    assert {a["label"] for a in anns} <= set(LABELS) and {a["label"] for a in anns} >= {"person", "vehicle"}
    for a in anns:
        assert 0 <= a["x0"] < a["x1"] <= cal.geometry.image_width
        assert 0 <= a["y0"] < a["y1"] <= cal.geometry.image_height
        assert a["distance_m"] is not None and a["distance_m"] > 0
    tracks = {a["track_id"] for a in anns}
    # Most objects are seen; some leave the frame or hide behind others (cfg.min_visible).
    assert len(tracks) >= 0.6 * 2 * (cfg.objects_per_clip + cfg.nuisance_per_clip)


def test_objects_leaving_the_frame_are_clipped(cfg):
    cal = load_calibration(CAL_DIR / "gate_wide.yaml")
    res = synthesize_camera(small(cfg, clips=3, frames=24), cal, 7)
    anns = [a for r in res for a in r.annotations]
    w, h = cal.geometry.image_width, cal.geometry.image_height
    touching = [a for a in anns if a["x0"] == 0 or a["x1"] == w or a["y1"] == h]
    assert touching, "no object ever touches the frame border in 3 clips"
    by_track: dict[str, list[int]] = {}
    for a in anns:
        by_track.setdefault(a["track_id"], []).append(a["frame"])
    assert any(len(v) < 24 for v in by_track.values())  # some tracks enter or leave mid-clip


@pytest.mark.parametrize("kind", ["linear", "plateau", "gamma", "clipped"])
def test_display_outputs_write_display8_with_their_agc(tmp_path, params, kind):
    display = {**params["synth"]["display"], "inverted": 0.0, "jumps": 0.0}
    tiny = _tiny_params(params, outputs={kind: 1.0}, display=display)
    _run_cli(tmp_path, tiny, "gate_wide", tmp_path / "d8")
    clips = read_clips(tmp_path / "d8")
    for c in clips:
        fr = load_frames(tmp_path / "d8", c)
        assert c.units == "display8" and c.dtype == "uint8" and fr.dtype == np.uint8 and c.agc == kind
        if kind == "clipped":  # a fixed span: frames differ by the scene only, not by a re-stretch
            assert fr.max() - fr.min() > 40
        else:  # automatic: every frame stretched over the range
            assert all(int(f.max()) - int(f.min()) > 150 for f in fr)


def test_output_mix_follows_its_weights_and_splits_are_clip_disjoint(cfg):
    cal = load_calibration(CAL_DIR / "gate_wide.yaml")
    mix = dataclasses.replace(
        small(cfg, frames=2),
        clips={"train": 12, "val": 2, "test": 6},
        frames={"train": 2, "val": 2, "test": 1},
        outputs={"counts": 0.5, "linear": 0.25, "clipped": 0.25},
    )
    res = synthesize_camera(mix, cal, 5)
    rows = [r.row for r in res]
    assert [r["split"] for r in rows] == ["train"] * 12 + ["val"] * 2 + ["test"] * 6
    assert all(r["clip_id"] == f"gate_wide-{r['split']}{i:03d}" for i, r in enumerate(rows[:12]))
    assert {r["n_frames"] for r in rows if r["split"] == "test"} == {1}
    units = [r["units"] for r in rows]
    assert 4 <= units.count("counts") <= 16  # about half of 20
    assert {r["agc"].removesuffix("-inverted") for r in rows if r["units"] == "display8"} <= {"linear", "clipped"}
    assert all((r["agc"] == "") == (r["units"] == "counts") for r in rows)
    # More test clips leave the training clips as they were (one random stream per split).
    more = synthesize_camera(dataclasses.replace(mix, clips={"train": 12, "val": 2, "test": 9}), cal, 5)
    for a, b in zip(res[:14], more[:14]):
        assert a.row == b.row and np.array_equal(a.frames, b.frames)
    tracks = {(r.row["split"], a["track_id"]) for r in res for a in r.annotations}
    assert len({t for _, t in tracks}) == len(tracks)  # no track in two splits


def test_stills_are_single_frames_of_their_own_split(cfg):
    cal = load_calibration(CAL_DIR / "fence_mid.yaml")
    base = small(cfg, clips=1, frames=3)
    res = synthesize_camera(dataclasses.replace(base, stills={"train": 2, "val": 0, "test": 3}), cal, 9)
    stills = [r for r in res if "-still" in r.row["clip_id"]]
    assert [r.row["clip_id"] for r in stills] == [f"fence_mid-{s}-still{i:03d}" for s, i in
                                                  [("train", 0), ("train", 1), ("test", 0), ("test", 1), ("test", 2)]]  # fmt: skip
    assert all(r.row["n_frames"] == 1 and r.frames.shape[0] == 1 for r in stills)
    assert sum(len(r.annotations) for r in stills) >= 3 * 5  # several objects per still
    # Adding stills leaves the sequences as they were.
    (seq,) = synthesize_camera(base, cal, 9)
    assert seq.row == res[0].row and np.array_equal(seq.frames, res[0].frames)


def test_objects_mostly_hidden_or_outside_the_frame_are_not_labelled():
    from thermops.world.synth import _annotation

    cam = PinholeCamera.from_calibration(load_calibration(CAL_DIR / "gate_wide.yaml"))
    person = Person("person", "person_walking", cam.ground_point_at_range(20.0), 0.0, 0.0, 0.0, {})
    inside = (np.array([100.0, 100.0]), np.array([110.0, 120.0]))
    half_out = (np.array([-7.0, 100.0]), np.array([3.0, 120.0]))  # 30 % of the box in the frame
    assert _annotation("c", 0, "t", person, inside, cam, 0.0, 1.0, 0.4) is not None
    assert _annotation("c", 0, "t", person, inside, cam, 0.0, 0.5, 0.4) is not None
    assert _annotation("c", 0, "t", person, inside, cam, 0.0, 0.3, 0.4) is None  # 70 % behind a building
    assert _annotation("c", 0, "t", person, half_out, cam, 0.0, 1.0, 0.4) is None
    row = _annotation("c", 0, "t", person, half_out, cam, 0.0, 1.0, 0.2)
    assert row["x0"] == 0.0 and row["x1"] == 3.0  # kept at a lower bar, clipped to the image


def test_canvas_knows_who_is_seen_where():
    """The owner map behind `min_visible`: a person behind a nearer vehicle keeps only what the vehicle leaves."""
    from thermops.world.objects import Box, box_corners, draw_box

    cam = PinholeCamera.from_calibration(load_calibration(CAL_DIR / "street_cam.yaml"))
    cond = conditions(22.0, "clear", 10.0)
    field = np.full((cam.height, cam.width), 5.0)
    owner = np.full(field.shape, -1, dtype=np.int16)
    cv = Canvas(cam, cond, field, np.full_like(field, np.inf), owner=owner, reach=owner.copy())
    person = Person("person", "person_walking", cam.ground_point_at_range(30.0), 0.0, 0.0, 0.0, {"height_m": 1.8,
                    "cloth_c": 25.0, "trousers_c": 25.0, "swing": 0.0})  # fmt: skip
    cv.current = 0
    person.draw(cv, 0.0)
    alone = int((cv.owner == 0).sum())
    assert alone == int((cv.reach == 0).sum()) > 50  # nothing in front: it owns every pixel it covers
    near = np.asarray(cam.ground_point_at_range(25.0))
    cv.current = 1
    draw_box(cv, Box(box_corners(np.array([*near, 0.0]), math.pi / 2, 6.0, 2.0, 0.0, 1.8), 20.0))
    left = int((cv.owner == 0).sum())
    assert 0 < left < 0.6 * alone  # the legs are behind the vehicle; the head and shoulders still show


def test_display_functions():
    rng = np.random.default_rng(8)
    ramp = np.tile(np.linspace(0.0, 1000.0, 64), (2, 16, 1))
    g_lo, g_hi = S.agc_gamma(ramp, 0.5, 0.0), S.agc_gamma(ramp, 2.0, 0.0)
    mid = (0, 8, 32)
    assert g_lo[mid] > 160 and g_hi[mid] < 80  # gamma < 1 lifts the middle, > 1 lowers it
    assert np.all(np.diff(g_lo[0, 0].astype(int)) >= 0)  # monotone
    fixed = S.agc_fixed(ramp, 400.0, 600.0)
    assert (fixed[0, 0, ramp[0, 0] <= 400] == 0).all() and (fixed[0, 0, ramp[0, 0] >= 600] == 255).all()
    inv = S.invert_display(fixed)
    assert np.array_equal(inv.astype(int), 255 - fixed.astype(int))
    frames = np.full((6, 4, 4), 100, dtype=np.uint8)
    jumped = S.display_jumps(frames, rng, 1, (1.0, 1.0), 30.0)
    levels = [int(f[0, 0]) for f in jumped]
    assert len(set(levels)) == 2 and levels[0] == 100  # one step, the first frame untouched
    with pytest.raises(ValueError):
        S.invert_display(ramp)


def test_motion_smear_keeps_heat_and_trails_behind():
    patch = np.zeros((21, 41))
    patch[8:13, 28:33] = 1.0
    out = S.motion_smear(patch, (400.0, 0.0), 0.012)  # 400 px/s, 12 ms: a 4.8 px e-folding trail
    assert out.sum() == pytest.approx(patch.sum(), rel=0.02)
    cols = np.arange(41)
    centroid = lambda a: float((a.sum(0) * cols).sum() / a.sum())  # noqa: E731
    assert centroid(out) < centroid(patch) - 1.5  # the trail is behind the motion (toward smaller x)
    assert (out[:, :28] > 0).any() and not (out[:, 34:] > 1e-9).any()
    assert np.array_equal(S.motion_smear(patch, (1.0, 0.0), 0.012), patch)  # below a quarter pixel: unchanged


def test_near_objects_are_larger_and_static_ones_stand_still(cfg):
    cal = load_calibration(CAL_DIR / "street_cam.yaml")

    def person_heights(**kw) -> list[float]:
        res = synthesize_camera(small(cfg, clips=4, frames=1, nuisance_per_clip=0, **kw), cal, 3)
        return [a["y1"] - a["y0"] for r in res for a in r.annotations if a["label"] == "person"]

    far, near = person_heights(near_fraction=0.0), person_heights(near_fraction=1.0)
    assert np.median(near) > 1.5 * np.median(far)
    assert max(near) > 100  # persons a third of the frame tall or more
    res = synthesize_camera(small(cfg, clips=3, frames=4, static_fraction=1.0), cal, 3)
    kinds = {a["source_label"] for r in res for a in r.annotations if a["label"] != "nuisance"}
    assert kinds and kinds <= {
        "person_standing",
        "parked_car",
        "parked_van",
        "parked_truck",
        "dog",
        "deer",
        "fox",
        "boar",
    }


def test_glass_reflection_is_a_person_shape_inside_its_panel():
    from thermops.world.objects import GlassReflection

    cal = load_calibration(CAL_DIR / "street_cam.yaml")
    cam = PinholeCamera.from_calibration(cal)
    cond = conditions(22.0, "clear", 10.0)
    xy = cam.ground_point_at_range(15.0)
    heading = math.radians(cam.yaw_deg) + math.pi / 2  # the panel faces the camera
    p = {
        "panel_xy": [float(xy[0]), float(xy[1])], "panel_heading": heading, "panel_w": 3.0, "panel_h": 2.4,
        "panel_z0": 0.0, "panel_c": 0.0, "reflectivity": 0.4, "behind_m": 1.0, "enter_m": -1.0,
        "person": {"height_m": 1.8, "cloth_c": 25.0, "trousers_c": 25.0},
    }  # fmt: skip
    glass = GlassReflection("nuisance", "glass_reflection", np.asarray(xy), 0.0, 1.2, 0.0, p)
    field = np.full((cam.height, cam.width), -20.0)
    lo, hi = glass.draw(Canvas(cam, cond, field, np.full_like(field, np.inf)), 1.0)
    panel = np.abs(field + 20.0) > 1e-6
    ys, xs = np.nonzero(panel)
    ghost = field > 3.0  # the reflection: warmer than the cold glass (0 degC), dimmer than the person
    assert ghost.any() and field[ghost].max() < 0.4 * 35.0 + 1.0  # rho x (skin - glass) at most
    gy, gx = np.nonzero(ghost & panel)
    assert gy.size and xs.min() <= gx.min() and gx.max() <= xs.max()  # only inside the panel
    assert (hi[1] - lo[1]) > 1.5 * (hi[0] - lo[0])  # the box is the upright reflection, taller than wide
    assert lo[0] >= xs.min() - 1 and hi[0] <= xs.max() + 2


def test_distances_span_the_perimeter(cfg):
    dists = []
    for cam in CAMERAS:
        cal = load_calibration(CAL_DIR / f"{cam}.yaml")
        res = synthesize_camera(small(cfg, clips=4, frames=1), cal, 11)
        near_lens = ("bird", "rain_streak")
        dists += [a["distance_m"] for r in res for a in r.annotations if a["source_label"] not in near_lens]
    assert min(dists) < 25 and max(dists) > 200


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["radiometry"].update(netd_mk=-5), "netd_mk"),
        (lambda d: d["geometry"].pop("fx"), "fx"),
        (lambda d: d["geometry"].update(pitch_deg="steep"), "pitch_deg"),
    ],
)
def test_malformed_calibration_is_a_clear_cli_error(tmp_path, params, capsys, edit, field):
    data = yaml.safe_load((CAL_DIR / "gate_wide.yaml").read_text())
    edit(data)
    bad = tmp_path / "cal" / "gate_wide.yaml"
    bad.parent.mkdir()
    bad.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        _run_cli(tmp_path, _tiny_params(params), "gate_wide", out, bad)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and field in err and str(bad) in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists()
