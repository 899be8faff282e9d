"""Controlled splits, geometry features, the space-to-depth stem, masked tube modelling, the unlabeled step."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from params_helpers import from_params

from tests.training_helpers import CLASSES, make_prepared
from thermops.data.prepared import PreparedDataError, load_prepared
from thermops.io import read_csv, write_csv
from thermops.learn.datasets import SplitParams, load_splits, load_unlabeled, split_rows, unpack
from thermops.learn.engine import OptimConfig, classification_loss, evaluate, fit, predict
from thermops.learn.ssl import (
    MaskedTubeModel,
    MTMConfig,
    cells,
    embeddings,
    fit_linear,
    init_head_by_probe,
    mtm_loss,
    tube_mask,
)
from thermops.model.card import input_spec_from_card, load_model_dir, make_card, model_config_from_card, save_model_dir
from thermops.model.network import ModelConfig, TubeletClassifier
from thermops.model.preprocess import GEOMETRY_FEATURES, REF_WINDOW_M, InputSpec, geometry_features

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _split(**changes) -> SplitParams:
    return from_params(SplitParams, "split", **changes)


def _rows() -> list[dict]:
    """Two cameras x two labels x 10 one-tubelet tracks at distances 10..100 m, plus a track without distance."""
    rows = []
    for cam in ("a", "b"):
        for label in ("person", "vehicle"):
            for k in range(10):
                rows.append(
                    {
                        "track_id": f"{cam}/{label}/{k}",
                        "camera_id": cam,
                        "label": label,
                        "split": ("train", "val", "test")[k % 3],
                        "distance_m": str(10.0 * (k + 1)),
                    }
                )
    rows.append({"track_id": "a/x/0", "camera_id": "a", "label": "person", "split": "train", "distance_m": ""})
    return rows


def test_range_split_trains_near_and_tests_far_per_camera_and_label():
    rows = _rows()
    got = split_rows(rows, _split(mode="range", near_fraction=0.5, far_fraction=0.3))
    for r, s in zip(rows, got):
        if not r["distance_m"]:
            assert s is None  # no distance, no place in a range split
            continue
        d = float(r["distance_m"])
        if d <= 50:  # the nearest 5 of 10 tracks of each (camera, label)
            assert s == ("val" if r["split"] == "val" else "train"), r
        elif d >= 80:  # the farthest 3
            assert s == "test", r
        else:
            assert s is None, r
    # every (camera, label) group is in train and in test: the class mix is kept, only the range moves
    for cam in ("a", "b"):
        for label in ("person", "vehicle"):
            sel = [s for r, s in zip(rows, got) if r["camera_id"] == cam and r["label"] == label]
            assert {"train", "test"} <= set(sel)


def test_camera_split_holds_one_camera_out():
    rows = _rows()
    got = split_rows(rows, _split(mode="camera", heldout_camera="b"))
    assert all((s == "test") == (r["camera_id"] == "b") for r, s in zip(rows, got))
    assert {s for r, s in zip(rows, got) if r["camera_id"] == "a"} == {"train", "val"}
    with pytest.raises(PreparedDataError, match="heldout_camera 'c'"):
        split_rows(rows, _split(mode="camera", heldout_camera="c"))


def test_prepared_split_is_the_manifest_split_and_bad_params_are_refused():
    rows = _rows()
    assert split_rows(rows, _split(mode="prepared")) == [r["split"] for r in rows]
    assert split_rows(rows, None) == [r["split"] for r in rows]
    with pytest.raises(ValueError, match="split.mode"):
        _split(mode="random")
    with pytest.raises(ValueError, match="near_fraction"):
        _split(near_fraction=0.8, far_fraction=0.3)


def test_geometry_features_and_their_errors():
    spec = from_params(InputSpec, "input", geometry=GEOMETRY_FEATURES)
    assert geometry_features(REF_WINDOW_M * math.e, spec.size, spec) == pytest.approx([1.0, 0.0, 1.0])
    assert geometry_features(None, spec.size * 4, spec) == pytest.approx([0.0, math.log(4), 0.0])
    only = dataclasses.replace(spec, geometry=("pixel_scale",))
    assert geometry_features(2.0, 16, only) == pytest.approx([math.log(0.5)])
    with pytest.raises(ValueError, match="positive"):
        geometry_features(-1.0, 32, spec)
    with pytest.raises(ValueError, match="input.geometry"):
        from_params(InputSpec, "input", geometry=("elevation",))


@pytest.fixture(scope="module")
def ranged(tmp_path_factory) -> Path:
    """The training blobs with distances and windows that vary per row."""
    root = make_prepared(tmp_path_factory.mktemp("ranged") / "prepared", n_per_class=10, seed=4)
    rows = read_csv(root / "manifest.csv")
    for i, r in enumerate(rows):
        r["distance_m"] = str(5.0 + 10.0 * (i % 10))
        r["window_m"] = str(1.0 + (i % 7))
        r["window_px"] = str(8 + 4 * (i % 5))
    write_csv(root / "manifest.csv", rows, list(rows[0]))
    return root


def test_load_splits_under_a_split_and_with_geometry(ranged):
    spec = from_params(InputSpec, "input", geometry=GEOMETRY_FEATURES)
    data = load_prepared(ranged)
    s = load_splits(ranged, CLASSES, spec, _split(mode="range", near_fraction=0.5, far_fraction=0.3))
    assigned = split_rows(data.rows, _split(mode="range", near_fraction=0.5, far_fraction=0.3))
    assert len(s.test) == assigned.count("test") and len(s.train) == assigned.count("train")
    assert s.data_info["split"] == "range" and s.data_info["split_params"]["far_fraction"] == 0.3
    assert s.test.geo.shape == (len(s.test), 3)
    test_rows = [r for r, a in zip(data.rows, assigned) if a == "test"]
    expect = [geometry_features(float(r["window_m"]), float(r["window_px"]), spec) for r in test_rows]
    assert torch.allclose(s.test.geo, torch.tensor(expect, dtype=torch.float32))
    x, g, px, y = s.train[torch.arange(3)]
    assert x.shape == (3, 1, 8, 32, 32) and g.shape == (3, 3) and y.shape == (3,)
    train_rows = [r for r, a in zip(data.rows, assigned) if a == "train"][:3]
    assert px.tolist() == [float(r["window_px"]) for r in train_rows]  # what the range augmentation reads
    assert [t is u for t, u in zip(unpack((x, g, px, y)), (x, g, px, y))] == [True] * 4
    assert unpack((x, px, y))[1] is None and unpack((x, g, y))[2] is None
    # pretraining reads the same training rows, never more
    pre, info = load_unlabeled(ranged, spec, _split(mode="range", near_fraction=0.5, far_fraction=0.3))
    assert info["n"] == assigned.count("train") == len(pre)
    _, pre_px = pre[torch.arange(3)]  # (x, px), never a label
    assert pre_px.tolist() == [float(r["window_px"]) for r in train_rows]


def test_geometry_classifier_trains_and_insists_on_its_features(ranged):
    spec = from_params(InputSpec, "input", geometry=GEOMETRY_FEATURES)
    s = load_splits(ranged, CLASSES, spec)
    torch.manual_seed(0)
    model = TubeletClassifier(from_params(ModelConfig, "model", size="tiny"), len(CLASSES), geo_dim=3)
    cfg = from_params(OptimConfig, "finetune.optim", epochs=1, batch_size=8, warmup_epochs=0)
    fit(model, classification_loss(None), s.train, cfg, seed=0, device=CPU, resume=False)
    metrics, _ = evaluate(model, s.test, CLASSES, CPU)
    assert 0 <= metrics["accuracy"] <= 1
    with pytest.raises(ValueError, match="geometry features"):
        predict(model, s.test.inputs, CPU)
    # the geometry changes the logits: the head reads it
    a = predict(model, s.test.inputs, CPU, geo=s.test.geo)
    b = predict(model, s.test.inputs, CPU, geo=s.test.geo + 1.0)
    assert not torch.allclose(a, b)


def test_card_round_trip_of_geometry_and_patch_and_old_cards(tmp_path):
    spec = from_params(InputSpec, "input", geometry=("metric_scale", "pixel_scale"))
    cfg = from_params(ModelConfig, "model", size="fast")
    m = TubeletClassifier(cfg, 4, geo_dim=2).eval()
    card = make_card(classes=CLASSES, model_cfg=cfg, input_spec=spec, calibrations={}, data={"prepared_hash": "x"})
    save_model_dir(tmp_path / "m", m, card)
    m2, card2 = load_model_dir(tmp_path / "m")
    x, g = torch.randn(2, 1, 8, 32, 32), torch.randn(2, 2)
    with torch.no_grad():
        assert torch.equal(m(x, g), m2(x, g))
    assert input_spec_from_card(card2) == spec and card2["model"]["patch"] == 4
    # a card written before these knobs existed: no geometry, the full-resolution stem
    old = dict(card2, model={k: v for k, v in card2["model"].items() if k != "patch"})
    old["input"] = {k: v for k, v in card2["input"].items() if k != "geometry"}
    assert model_config_from_card(old).resolved_patch() == 1 and input_spec_from_card(old).geometry == ()


def test_space_to_depth_stem_is_lossless_and_sizes_differ_in_resolution():
    cfg = from_params(ModelConfig, "model", size="fast")
    enc = TubeletClassifier(cfg, 4).encoder
    x = torch.randn(2, 1, 8, 32, 32)
    c = enc.space_to_depth(x)
    assert c.shape == (2, 16, 8, 8, 8)
    assert torch.equal(cells(x, 4), c)  # the same cell layout the masked-tube target uses
    back = c.reshape(2, 4, 4, 8, 8, 8).permute(0, 3, 4, 1, 5, 2).reshape(2, 1, 8, 32, 32)
    assert torch.equal(back, x)
    assert enc.features(x).shape == (2, 64, 4, 4, 4)
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.randn(1, 1, 8, 30, 30))
    with pytest.raises(ValueError, match="patch"):
        from_params(ModelConfig, "model", patch=0)


def test_tube_mask_hides_whole_tubes_at_the_ratio():
    g = torch.Generator().manual_seed(0)
    m = tube_mask(5, 8, 8, 0.75, g, "cpu")
    assert m.shape == (5, 8, 8) and (m.flatten(1).sum(1) == 48).all()
    assert not torch.equal(m[0], m[1])  # per-sample draws


def test_mtm_loss_counts_hidden_cells_only():
    cfg = from_params(MTMConfig, "pretrain.mtm")
    model = MaskedTubeModel(TubeletClassifier(from_params(ModelConfig, "model", size="fast"), 4).encoder, cfg)
    x = torch.randn(4, 1, 8, 32, 32)
    loss_fn = mtm_loss(cfg, None)

    class Oracle(torch.nn.Module):
        """Predicts every cell from the unmasked input it would need: exact on visible cells only."""

        def forward(self, xm):
            return cells(xm, cfg.cell)

    g = torch.Generator().manual_seed(1)
    oracle_loss = loss_fn(Oracle(), (x,), g)  # visible cells are exact, hidden ones predicted as 0
    g = torch.Generator().manual_seed(1)
    mask = tube_mask(4, 8, 8, cfg.mask_ratio, g, "cpu")
    hidden = cells(x, cfg.cell).pow(2).mean(dim=(1, 2))
    assert oracle_loss == pytest.approx(float((hidden * mask).sum() / mask.sum()), rel=1e-5)
    out = model(x)
    assert out.shape == (4, cfg.cell**2, 8, 8, 8)
    loss = loss_fn(model, (x,), torch.Generator().manual_seed(2))
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.stem[0].weight.grad.abs().sum() > 0


def _unlabeled_params(tmp: Path, **changes) -> Path:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["unlabeled"].update(clips_per_camera=1, frames_per_clip=10, objects_per_clip=2, nuisance_per_clip=1, **changes)
    p["cameras"] = ["gate_wide"]
    (tmp / "params.yaml").write_text(yaml.safe_dump(p))
    return tmp / "params.yaml"


def _unlabeled(params: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "components.unlabeled", "--params", str(params), "--calibration",
         str(ROOT / "data/calibration"), "--raw", str(out.parent / "raw"), "--out", str(out),
         "--cache", str(out.parent / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_unlabeled_step_writes_label_free_tubelets(tmp_path):
    r = _unlabeled(_unlabeled_params(tmp_path), tmp_path / "unlabeled")
    assert r.returncode == 0, r.stderr[-2000:]
    data = load_prepared(tmp_path / "unlabeled")
    assert len(data.rows) > 0 and data.tubelets.shape[1:] == (8, 32, 32)
    assert "label" not in data.rows[0] and "kind" not in data.rows[0]
    assert {r["split"] for r in data.rows} == {"unlabeled"}
    assert {r["camera_id"] for r in data.rows} == {"gate_wide"}
    assert all(r["clip_id"].startswith("u") for r in data.rows)  # other clips than the labelled gate_wide-000..
    assert np.isfinite(data.tubelets).all()
    # a labelled source as unlabeled pretraining data is refused before anything is written
    bad = _unlabeled(_unlabeled_params(tmp_path, real_sources=["synthetic"]), tmp_path / "u2")
    assert bad.returncode == 1 and "leak" in bad.stderr and not (tmp_path / "u2").exists()


def test_unlabeled_cache_renders_only_the_recalibrated_camera_and_changes_no_byte(tmp_path):
    """Cached cameras give the bytes a fresh render gives; a recalibrated camera is rendered again."""
    import shutil

    from components.unlabeled import UnlabeledParams
    from components.unlabeled import run as unlabeled
    from thermops.camera.calibration import load_calibrations, write_calibration
    from thermops.data.extract import PrepareParams
    from thermops.world.synth import SynthParams

    cal = tmp_path / "calibration"
    shutil.copytree(ROOT / "data/calibration", cal)
    cache = tmp_path / "cache"
    cfg = from_params(
        UnlabeledParams, "unlabeled", clips_per_camera=1, frames_per_clip=10, objects_per_clip=2, nuisance_per_clip=1
    )
    args = (cfg, from_params(SynthParams, "synth"), from_params(PrepareParams, "prepare"), ["gate_wide", "fence_mid"],
            ["synthetic"], ["person", "vehicle", "animal", "nuisance"], 7, cal, tmp_path / "raw")  # fmt: skip

    def files(out: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    first = unlabeled(*args, tmp_path / "u1", cache)
    assert first["cameras_from_cache"] == [] and len(list(cache.glob("*.npz"))) == 2
    again = unlabeled(*args, tmp_path / "u2", cache)
    assert again["cameras_from_cache"] == ["gate_wide", "fence_mid"]
    fresh = unlabeled(*args, tmp_path / "u3", None)
    assert files(tmp_path / "u1") == files(tmp_path / "u2") == files(tmp_path / "u3")

    old = load_calibrations(cal)["fence_mid"]
    geometry = old.geometry.model_copy(update={"pitch_deg": old.geometry.pitch_deg + 3})
    write_calibration(old.model_copy(update={"geometry": geometry, "version": "2026-11-29.1"}), cal)
    moved = unlabeled(*args, tmp_path / "u4", cache)
    assert moved["cameras_from_cache"] == ["gate_wide"]
    assert len(list(cache.glob("*.npz"))) == 2  # the old fence_mid entry is gone
    before, after = load_prepared(tmp_path / "u1"), load_prepared(tmp_path / "u4")

    def camera(data, cam):
        idx = [i for i, r in enumerate(data.rows) if r["camera_id"] == cam]
        return [data.rows[i] for i in idx], np.asarray(data.tubelets[idx])

    rows_b, arr_b = camera(before, "gate_wide")
    rows_a, arr_a = camera(after, "gate_wide")
    assert rows_a == rows_b and np.array_equal(arr_a, arr_b)
    assert {r["calibration_version"] for r in camera(after, "fence_mid")[0]} == {"2026-11-29.1"}
    assert fresh["n_tubelets"] == first["n_tubelets"]


def test_range_augmentation_lowers_resolution_and_moves_pixel_scale():
    from thermops.learn.augment import AugmentConfig, augment_with_geometry, far

    cfg = from_params(AugmentConfig, "finetune.augment", far_p=1.0, far_max=4.0)
    x = torch.randn(64, 1, 8, 32, 32)  # white noise: any resolution loss lowers its variance
    view, k = far(x, cfg, torch.Generator().manual_seed(0))
    assert view.shape == x.shape and (k >= 1).all() and (k <= 4.0 + 1e-6).all() and (k > 1.5).any()
    far_rows = k > 1.5
    assert view[far_rows].var() < 0.5 * x[far_rows].var()
    untouched = k == 1
    assert torch.equal(view[untouched], x[untouched])
    off = from_params(AugmentConfig, "finetune.augment", far_p=0.0)
    assert torch.equal(far(x, off, torch.Generator().manual_seed(0))[0], x)
    # the geometry features follow the view: pixel_scale drops by log k, metric_scale stays
    geometry = ("metric_scale", "pixel_scale")
    geo = torch.zeros(64, 2)
    plain = dataclasses.replace(cfg, crop_scale=(1.0, 1.0), max_shift=0.0, flip=False, speed=(1.0, 1.0), reverse_p=0.0,
                                gain=(1.0, 1.0), offset=0.0, noise=0.0, stripes=0.0)  # fmt: skip
    v2, g2 = augment_with_geometry(x, geo, plain, torch.Generator().manual_seed(5), geometry)
    assert torch.equal(g2[:, 0], geo[:, 0]) and (g2[:, 1] <= 0).all() and (g2[:, 1] < -0.4).any()
    near, _ = augment_with_geometry(
        x, geo, dataclasses.replace(plain, far_p=0.0), torch.Generator().manual_seed(5), geometry
    )
    changed = (v2 - near).flatten(1).abs().amax(1) > 1e-6  # same draws before the range step
    assert torch.equal(changed, g2[:, 1] < -1e-6)  # exactly the rows whose resolution dropped


def test_range_augmentation_blurs_each_window_to_the_camera_pixels_it_would_cover():
    from thermops.learn.augment import AugmentConfig, far

    cfg = from_params(AugmentConfig, "finetune.augment", far_p=1.0, far_max=8.0)
    x = torch.randn(256, 1, 8, 32, 32)
    # the same draws for every px: k depends on the generator only
    _, k = far(x, cfg, torch.Generator().manual_seed(1), px=torch.full((256,), 32.0))
    assert (k >= 1).all() and (k <= 8.0 + 1e-5).all() and (k > 4).any()
    # a window cut from 400 camera pixels still covers >= 50 px 8 times farther: nothing to lose at 32
    wide, k_wide = far(x, cfg, torch.Generator().manual_seed(1), px=torch.full((256,), 400.0))
    assert torch.equal(wide, x) and torch.equal(k_wide, k)  # the physical factor, for pixel_scale
    # a window cut from 64 px loses detail exactly where 64 / k < 32, i.e. k > 2
    mid, _ = far(x, cfg, torch.Generator().manual_seed(1), px=torch.full((256,), 64.0))
    changed = (mid - x).flatten(1).abs().amax(1) > 1e-6
    assert torch.equal(changed, torch.round(64.0 / k) < 32)
    # at the same k, fewer camera pixels lose more detail: 16 px across is cut to 16 / k
    small, _ = far(x, cfg, torch.Generator().manual_seed(1), px=torch.full((256,), 16.0))
    both = changed
    assert small[both].var() < mid[both].var()
    # without px every window is taken as the input's side (the old rule): S / k snapped to 4 px
    legacy, k_legacy = far(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(k_legacy, 32 / torch.clamp(torch.round(32 / k / 4) * 4, min=4, max=32))
    assert legacy.shape == x.shape


def test_a_window_without_a_positive_pixel_size_is_refused_by_name(ranged, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ranged, bad)
    rows = read_csv(bad / "manifest.csv")
    rows[0]["window_px"] = "0"
    write_csv(bad / "manifest.csv", rows, list(rows[0]))
    with pytest.raises(PreparedDataError, match="window_px '0' is not a positive pixel count"):
        load_splits(bad, CLASSES, from_params(InputSpec, "input"))  # the prepared split: every row is read


def test_geometry_drop_marks_whole_views_as_of_a_camera_without_geometry():
    from thermops.learn.augment import AugmentConfig, augment_with_geometry

    x = torch.randn(512, 1, 8, 32, 32)
    geometry = ("metric_scale", "pixel_scale", "known")
    geo = torch.tensor([[0.3, -0.5, 1.0]] * 512)
    base = from_params(AugmentConfig, "finetune.augment")
    assert base.geometry_drop == 0  # the default classifier takes no features anyway
    view0, geo0 = augment_with_geometry(x, geo, base, torch.Generator().manual_seed(3), geometry)
    assert torch.equal(geo0, geo)  # off: the features pass through

    drop = dataclasses.replace(base, geometry_drop=0.25)
    view1, geo1 = augment_with_geometry(x, geo, drop, torch.Generator().manual_seed(3), geometry)
    assert torch.equal(view1, view0)  # the drop's draws come after the view's: the view is the same
    dropped = geo1[:, 2] == 0
    assert 0.18 < float(dropped.float().mean()) < 0.32
    assert (geo1[dropped][:, 0] == 0).all() and torch.equal(geo1[~dropped], geo[~dropped])
    assert torch.equal(geo1[:, 1], geo[:, 1])  # the pixels across the window are known either way
    assert torch.equal(geo, torch.tensor([[0.3, -0.5, 1.0]] * 512))  # the caller's features are not written
    with pytest.raises(ValueError, match="geometry_drop"):
        dataclasses.replace(base, geometry_drop=1.5)


@pytest.mark.parametrize("method", ["simclr", "mtm"])
def test_each_pretraining_method_trains_the_encoder(method):
    from components.pretrain import PretrainParams, build

    cfg = from_params(PretrainParams, "pretrain", method=method)
    torch.manual_seed(0)
    model, loss_fn = build(cfg, TubeletClassifier(from_params(ModelConfig, "model"), 4).encoder)
    x = torch.randn(8, 1, 8, 32, 32)
    loss = loss_fn(model, (x,), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    # MTM reads the feature map, not the pooled embedding: its projection (`proj`) stays untouched
    grads = [p.grad for n, p in model.encoder.named_parameters() if method == "simclr" or not n.startswith("proj.")]
    assert all(g is not None for g in grads) and all(float(g.abs().sum()) > 0 for g in grads)
    with pytest.raises(ValueError, match="pretrain.method"):
        from_params(PretrainParams, "pretrain", method="byol")


def test_each_few_label_arm_trains_with_its_own_encoder_learning_rate(tmp_path):
    """scratch_encoder_lr_scale reaches the scratch arm only: at 0 its encoder weights stay at their init,
    while the pretrained arm (low_label.optim.encoder_lr_scale 1.0) moves its encoder."""
    from components.finetune import FinetuneParams, few_label_comparison, initializer

    prepared = make_prepared(tmp_path / "prepared", n_per_class=12, seed=4)
    spec = from_params(InputSpec, "input")
    splits = load_splits(prepared, CLASSES, spec)
    mc = from_params(ModelConfig, "model", size="tiny")
    ft = from_params(FinetuneParams, "finetune")
    low = dataclasses.replace(
        ft.low_label,
        optim=dataclasses.replace(ft.low_label.optim, epochs=1, batch_size=8, warmup_epochs=0, encoder_lr_scale=1.0),
        seeds=[0],
        scratch_encoder_lr_scale=0.0,
    )
    ft = dataclasses.replace(ft, low_label=low)
    enc = TubeletClassifier(mc, len(CLASSES)).encoder.state_dict()
    made = initializer(mc, len(CLASSES), 0, enc)
    seen: dict[str, tuple[TubeletClassifier, dict]] = {}

    def fresh(pretrained: bool, seed: int):
        m, missing, unexpected = made(pretrained, seed)
        weights = {k: v.clone() for k, v in m.encoder.named_parameters()}
        seen["pretrained" if pretrained else "scratch"] = (m, weights)
        return m, missing, unexpected

    few_label_comparison(ft, splits, CLASSES, 0, torch.device("cpu"), fresh)

    def moved(arm: str) -> bool:
        m, before = seen[arm]
        return any(not torch.equal(p, before[k]) for k, p in m.encoder.named_parameters())

    assert moved("pretrained") and not moved("scratch")


def test_lp_ft_of_a_geometry_classifier_probes_all_its_head_sees(ranged):
    """A classifier with geometry features (input.geometry) gets LP-FT too: its head is the probe of the
    image embedding beside the geometry embedding of each row's own features (a probe of the image
    embedding alone does not even fit the head), and the few-label comparison runs its pretrained arm so."""
    import components.finetune as F

    spec = from_params(InputSpec, "input", geometry=GEOMETRY_FEATURES)
    s = load_splits(ranged, CLASSES, spec)
    mc = from_params(ModelConfig, "model", size="tiny")
    torch.manual_seed(0)
    model = TubeletClassifier(mc, len(CLASSES), geo_dim=3)
    init_head_by_probe(model, s.train.inputs, s.train.labels, CPU, geo=s.train.geo)
    assert model.training  # left in the mode it was in
    model.eval()
    with torch.no_grad():
        feats = model.features(s.train.inputs, s.train.geo)
    assert feats.shape[1] == model.head.in_features > mc.embed_dim
    w, b = fit_linear(feats, s.train.labels, len(CLASSES))
    assert torch.allclose(model.head.weight, w, atol=1e-4) and torch.allclose(model.head.bias, b, atol=1e-4)
    with pytest.raises(ValueError, match="geometry features"):
        init_head_by_probe(model, s.train.inputs, s.train.labels, CPU)  # its features are not optional
    ft = from_params(F.FinetuneParams, "finetune")
    low = dataclasses.replace(
        ft.low_label,
        optim=dataclasses.replace(ft.low_label.optim, epochs=1, batch_size=8, warmup_epochs=0),
        seeds=[0],
        pretrained_probe_init=True,
    )
    ft = dataclasses.replace(ft, low_label=low, probe_init=False)
    made = F.initializer(mc, len(CLASSES), 3, TubeletClassifier(mc, len(CLASSES)).encoder.state_dict())
    out = F.few_label_comparison(ft, s, CLASSES, 0, CPU, made, geometry=GEOMETRY_FEATURES)
    assert out["few_label"]["pretrained_probe_init"]  # the path `dvc repro` with input.geometry crashed in
    assert 0.0 <= out["few_label"]["pretrained"]["macro_f1"]["mean"] <= 1.0


@pytest.mark.parametrize("lp_ft", [True, False])
def test_lp_ft_starts_only_the_pretrained_arms_head_from_a_probe_of_the_few_labels(tmp_path, monkeypatch, lp_ft):
    """low_label.pretrained_probe_init: the pretrained arm's head starts from the linear probe of its frozen
    encoder on the labelled subset alone (never the whole train split); the scratch arm's head stays random."""
    import components.finetune as F

    prepared = make_prepared(tmp_path / "prepared", n_per_class=12, seed=4)
    splits = load_splits(prepared, CLASSES, from_params(InputSpec, "input"))
    mc = from_params(ModelConfig, "model", size="tiny")
    ft = from_params(F.FinetuneParams, "finetune")
    low = dataclasses.replace(
        ft.low_label,
        optim=dataclasses.replace(ft.low_label.optim, epochs=1, batch_size=8, warmup_epochs=0),
        seeds=[0, 1],
        pretrained_probe_init=lp_ft,
    )
    ft = dataclasses.replace(ft, low_label=low, probe_init=False)
    made = F.initializer(mc, len(CLASSES), 0, TubeletClassifier(mc, len(CLASSES)).encoder.state_dict())
    arms: dict[int, str] = {}

    def fresh(pretrained: bool, seed: int):
        m, missing, unexpected = made(pretrained, seed)
        arms[id(m)] = "pretrained" if pretrained else "scratch"
        return m, missing, unexpected

    probed: list[tuple[str, int]] = []
    real = F.init_head_by_probe

    def spy(model, x, y, *args, **kwargs):
        probed.append((arms[id(model)], len(x)))
        real(model, x, y, *args, **kwargs)
        probe_w, _ = fit_linear(embeddings(model.encoder, x, CPU), y, len(CLASSES), *args[1:3])
        assert torch.allclose(model.head.weight, probe_w)  # the head is that probe

    monkeypatch.setattr(F, "init_head_by_probe", spy)
    out = F.few_label_comparison(ft, splits, CLASSES, 0, CPU, fresh)
    n_low = out["few_label"]["n_labels"]
    assert n_low < len(splits.train)
    assert probed == ([("pretrained", n_low)] * 2 if lp_ft else [])
