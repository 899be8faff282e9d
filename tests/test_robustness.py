"""Attacks, corruptions, perspective, sanity checks, envelope and decision on tiny real models.

Two tiny classifiers are trained once per module on structured synthetic tubelets:
a plain one and a PGD adversarially trained one (`thermops.learn.adversarial.pgd`).
ART (adversarial-robustness-toolbox) cross-checks the hand-written attacks on the
same model, eps and steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from robustness_helpers import ArgmaxInside, QuantizedInput, gate_params, one_thread, split_xy, train_tiny  # noqa: F401 (autouse fixture)
from torch import nn
from training_helpers import make_prepared

from thermops.config import ParamsError, section
from thermops.robustness import attacks as A
from thermops.robustness import corruptions as C
from thermops.robustness import envelope as E
from thermops.robustness import perspective as P
from thermops.robustness import sanity as S
from thermops.robustness.decision import decide
from thermops.robustness.evaluate import attack_suite
from thermops.robustness.params import GateParams, Regression

# Agreement with ART: robust accuracies on the same 32 test tubelets may differ by at
# most 4 tubelets (0.125) for the gradient attacks (different random starts and step
# rules); C&W must be at least as strong as ART's up to the same tolerance.
ART_TOL = 0.125


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("rob") / "prepared", n_per_class=40, seed=3)


@pytest.fixture(scope="module")
def plain(prepared):
    return train_tiny(prepared, epochs=6, adv_eps=0.0)


@pytest.fixture(scope="module")
def robust(prepared):
    return train_tiny(prepared, epochs=6, adv_eps=0.1)


@pytest.fixture(scope="module")
def test_xy(prepared):
    return split_xy(prepared, "test")


def _eps(threat: str) -> float:
    return 0.05 if threat != "l2" else 0.5


@pytest.mark.parametrize("threat,name", [(t, n) for t, d in A.REGISTRY.items() for n in d])
def test_every_attack_never_beats_clean_accuracy(threat, name, plain, test_xy):
    x, y = test_xy
    norm = "linf" if threat == "black_box" else threat
    atk = A.build_attack(threat, name, plain, _eps(norm), norm=norm, seed=1)
    adv = atk(x, y)
    assert adv.shape == x.shape
    clean = (A.predict(plain, x) == y).float().mean().item()
    robust_acc = ((A.predict(plain, x) == y) & (A.predict(plain, adv) == y)).float().mean().item()
    assert robust_acc <= clean
    if atk.bounded:  # every bounded attack stays inside its threat model
        assert float(A._flat_norm(adv - x, norm).max()) <= _eps(norm) * (1 + 1e-4)
    assert not plain.training  # eval mode restored (it was eval)


def test_attack_base_checks_shapes_and_restores_mode(plain, test_xy):
    x, y = test_xy
    with pytest.raises(ValueError, match=r"\(N, 1, T, H, W\)"):
        A.FGSM(plain, 0.1)(x[:, 0], y)
    plain.train()
    A.FGSM(plain, 0.1)(x[:4], y[:4])
    assert plain.training  # the attack ran in eval mode and gave the mode back
    plain.eval()


@pytest.mark.parametrize("name", sorted(C.REGISTRY))
def test_every_corruption_grows_with_severity(name, prepared):
    from thermops.data.prepared import load_prepared

    raw = np.asarray(load_prepared(prepared).tubelets[:6])
    corr = C.build_corruption(name)
    sizes = [float(np.abs(corr(raw, s, "celsius", seed=2) - raw).mean()) for s in range(1, 6)]
    assert all(b > a for a, b in zip(sizes, sizes[1:])), sizes
    assert corr(raw, 3, "celsius", seed=2).shape == raw.shape
    assert np.array_equal(corr(raw, 3, "celsius", seed=2), corr(raw, 3, "celsius", seed=2))  # seeded


def test_corruption_rejects_bad_severity_and_tables():
    with pytest.raises(ValueError, match="severity"):
        C.build_corruption("netd")(np.zeros((1, 2, 4, 4)), 6)
    with pytest.raises(ValueError, match="5 severities"):
        C.build_corruption("netd", [0.1, 0.2])
    with pytest.raises(KeyError, match="unknown corruption"):
        C.build_corruption("fog")


def test_adversarial_training_raises_robust_accuracy(plain, robust, test_xy):
    x, y = test_xy
    acc = {}
    for tag, model in (("plain", plain), ("robust", robust)):
        acc[tag] = A.robust_correct(A.PGD(model, 0.1, "linf", steps=8, seed=0), x, y).float().mean().item()
    assert acc["robust"] > acc["plain"], acc


def _art_classifier(model, x):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model,
        torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=4,
        clip_values=(float(x.min()) - 10, float(x.max()) + 10),
    )


def _acc(model, x, y, adv) -> float:
    return float(((A.predict(model, x) == y) & (A.predict(model, torch.as_tensor(adv)) == y)).float().mean())


@pytest.mark.parametrize("kind,eps", [("fgsm", 0.05), ("pgd_linf", 0.05), ("pgd_l2", 0.5), ("apgd_linf", 0.05)])
def test_attacks_agree_with_art(kind, eps, plain, test_xy):
    from art.attacks.evasion import AutoProjectedGradientDescent, FastGradientMethod, ProjectedGradientDescent

    x, y = test_xy
    clf = _art_classifier(plain, x)
    xn, yn = x.numpy(), y.numpy()
    if kind == "fgsm":
        art_adv = FastGradientMethod(clf, norm=np.inf, eps=eps, batch_size=64).generate(xn, yn)
        mine = A.FGSM(plain, eps)
    elif kind.startswith("pgd"):
        norm = np.inf if kind == "pgd_linf" else 2
        art_adv = ProjectedGradientDescent(
            clf, norm=norm, eps=eps, eps_step=0.3 * eps, max_iter=8, num_random_init=1, batch_size=64, verbose=False
        ).generate(xn, yn)
        mine = A.PGD(plain, eps, "linf" if norm == np.inf else "l2", steps=8, step_size=0.3)
    else:
        art_adv = AutoProjectedGradientDescent(
            clf,
            norm=np.inf,
            eps=eps,
            eps_step=2 * eps,
            max_iter=8,
            nb_random_init=1,
            batch_size=64,
            loss_type="cross_entropy",
            verbose=False,
        ).generate(xn, yn)
        mine = A.APGD(plain, eps, "linf", steps=8)
    a_art, a_mine = _acc(plain, x, y, art_adv), _acc(plain, x, y, mine(x, y))
    assert abs(a_art - a_mine) <= ART_TOL, (kind, a_art, a_mine)
    if kind == "fgsm":  # deterministic: the same perturbation up to float rounding
        assert a_art == a_mine


def test_cw_at_least_as_strong_as_art(plain, test_xy):
    from art.attacks.evasion import CarliniL2Method

    x, y = test_xy
    x, y = x[:16], y[:16]
    clf = _art_classifier(plain, x)
    art_adv = CarliniL2Method(
        clf, binary_search_steps=3, max_iter=10, learning_rate=0.1, initial_const=1.0, batch_size=16, verbose=False
    ).generate(x.numpy(), y.numpy())
    norms = np.sqrt(((art_adv - x.numpy()) ** 2).reshape(len(x), -1).sum(1))
    fooled = (A.predict(plain, torch.as_tensor(art_adv)) != y).numpy()
    clean = (A.predict(plain, x) == y).numpy()
    masks = A.CarliniWagnerL2(plain, 1.0).robust_mask(x, y, [0.5, 1.0, 2.0])
    for e in (0.5, 1.0, 2.0):
        art_acc = float((clean & ~(fooled & (norms <= e))).mean())
        assert masks[e].float().mean().item() <= art_acc + ART_TOL, (e, art_acc)


def _suite(model, test_xy, **over):
    p = section({"gate": gate_params(attack_subset=24, **over)}, "gate", GateParams)
    x, y = test_xy
    return attack_suite(model, x[:24], y[:24], p, seed=0)


def test_sanity_checks_pass_on_an_honest_model(robust, test_xy):
    s = _suite(robust, test_xy)
    failed = [c for c in s["sanity"] if not c["passed"]]
    assert not failed, failed
    assert {c["name"].split("[")[0] for c in s["sanity"]} == {
        "gradients_finite_nonzero",
        "monotone_in_eps",
        "zero_at_large_eps",
        "more_steps_not_weaker",
        "black_box_not_stronger",
    }


@pytest.mark.parametrize("wrapper", [QuantizedInput, ArgmaxInside])
def test_sanity_checks_catch_gradient_masking(wrapper, robust, test_xy):
    masked = wrapper(robust).eval()
    s = _suite(masked, test_xy)
    failed = {c["name"] for c in s["sanity"] if not c["passed"]}
    assert "gradients_finite_nonzero" in failed
    # The white-box attacks go blind: noise is stronger, or nothing reaches zero at the large eps.
    assert any(n.startswith(("black_box_not_stronger", "zero_at_large_eps")) for n in failed), failed


CENTRES = torch.tensor([0.0, 100.0, 200.0, 300.0])


class MeanIntensity(nn.Module):
    """The class whose centre (100 input units apart) is nearest the tubelet's mean value: a smooth
    model whose every margin lies far beyond the gate's fixed large eps, as a hot vehicle's does
    (a pixel change moves the mean by at most eps / sqrt(D) in L2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x.mean((1, 2, 3, 4))[:, None] - CENTRES[None]) ** 2) / 2000.0  # neighbours 5 apart: no underflow


def high_contrast_rows() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(16) % 4
    return CENTRES[y].reshape(-1, 1, 1, 1, 1) + 0.1 * torch.randn(16, 1, 4, 16, 16, generator=gen), y


def test_the_large_eps_check_reaches_as_far_as_a_known_adversarial():
    x, y = high_contrast_rows()
    p = section({"gate": gate_params(attack_subset=16)}, "gate", GateParams)
    s = attack_suite(MeanIntensity(), x, y, p, seed=0)
    for threat, large, far in (("linf", 1.0, 100.0), ("l2", 20.0, 100.0 * math.sqrt(4 * 16 * 16))):
        ra = s["robust_accuracy"][threat]
        assert ra["worst"][large] == 1.0  # every row keeps its class at the fixed large eps ...
        reach = ra["large_eps_reach"]
        assert reach["rows"] == list(range(16)) and reach["no_known_adversarial"] == []
        assert all(r == pytest.approx(far, rel=0.01) for r in reach["radius"])  # ... the next class's rows lie this far
        assert reach["kept"] == []  # ... and the attacks find an adversarial example out there
        check = next(c for c in s["sanity"] if c["name"] == f"zero_at_large_eps[{threat}]")
        assert check["passed"] and check["value"] == 0.0, check
        assert "1.000 (16 of 16)" in check["detail"]
    # the same model with its gradient masked keeps every row at that radius too: the check fails
    masked = attack_suite(ArgmaxInside(MeanIntensity()), x, y, p, seed=0)
    for threat in ("linf", "l2"):
        check = next(c for c in masked["sanity"] if c["name"] == f"zero_at_large_eps[{threat}]")
        assert not check["passed"] and check["value"] == 1.0, check
        assert masked["robust_accuracy"][threat]["large_eps_reach"]["kept"] == list(range(16))


class PixelsOrGeometry(nn.Module):
    """MeanIntensity's logits, plus 1000 on class c where the row's geometry feature c is 1: such a
    row's class no pixel change moves."""

    def forward(self, x: torch.Tensor, geo: torch.Tensor) -> torch.Tensor:
        return MeanIntensity()(x) + 1000.0 * geo


def test_the_nearest_known_adversarial_uses_each_rows_own_geometry():
    x, y = high_contrast_rows()
    geo = torch.zeros(16, 4)
    geo[::3] = F.one_hot(y[::3], 4).float()  # rows 0, 3, 6, ...: the geometry decides
    rows = torch.arange(16)
    for norm in ("l2", "linf"):
        got = S.nearest_known_adversarial(PixelsOrGeometry(), x, y, rows, norm, geo)
        flat = x.reshape(16, -1)
        for i in range(16):
            if i % 3 == 0:
                assert got[i] == math.inf  # no tubelet's pixels move it
                continue
            other = y != y[i]  # with row i's (zero) geometry each tubelet is its own class
            d = flat[other] - flat[i]
            want = d.norm(dim=1).min() if norm == "l2" else d.abs().amax(1).min()
            assert float(got[i]) == pytest.approx(float(want), rel=1e-6), (norm, i)
    with pytest.raises(ValueError, match="norm 'l1'"):
        S.nearest_known_adversarial(MeanIntensity(), x, y, rows, "l1")


def test_homographies_have_the_stated_size():
    h = w = 16
    for kind in P.KINDS:
        off = P.corner_offsets(kind, 2.0, h, w)
        assert float(off.norm(dim=1).max()) == pytest.approx(2.0, rel=1e-5), kind
        assert torch.allclose(P.corner_offsets(kind, 0.0, h, w), torch.zeros(4, 2), atol=1e-6)
    ident = P.homography(torch.zeros(4, 2), h, w)
    assert torch.allclose(ident[0], torch.eye(3), atol=1e-5)
    raw = torch.randn(2, 3, h, w)
    assert torch.allclose(P.warp(raw, ident), raw, atol=1e-4)
    # Zoom by s about the centre: tau(u) = u - u/s relative to the centre, so ||grad tau|| = 1 - 1/s.
    px = 1.5
    s = P.scale_of_zoom(px, h, w)
    g = P.grad_tau_norm(P.homography(P.corner_offsets("zoom", px, h, w), h, w)[0], h, w)
    assert g == pytest.approx(1 - 1 / s, rel=1e-3)
    # Roll by theta: ||I - R^T|| = 2 sin(theta / 2) = px / radius.
    g = P.grad_tau_norm(P.homography(P.corner_offsets("roll", px, h, w), h, w)[0], h, w)
    assert g == pytest.approx(px / math.hypot(7.5, 7.5), rel=1e-3)


def test_worst_case_homography_is_at_least_as_bad_as_none(plain, prepared):
    from robustness_helpers import SPEC

    from thermops.data.prepared import load_prepared
    from thermops.model.preprocess import resample

    data = load_prepared(prepared)
    idx = data.indices("test")[:12]
    raw = resample(np.asarray(data.tubelets[idx]), SPEC.frames, SPEC.size)
    y = torch.as_tensor(data.labels(["person", "vehicle", "animal", "nuisance"])[idx])
    wc = P.worst_case(plain, raw, y, ["celsius"] * len(idx), SPEC, budget_px=2.0, steps=4)
    assert wc["accuracy"] <= wc["clean_accuracy"]
    assert float(wc["offsets"].abs().max()) <= 2.0 + 1e-6


def test_envelope_is_the_largest_size_meeting_every_threshold():
    geo = [
        {
            "kind": k,
            "px": s * m,
            "accuracy": 0.9 if m <= 2 else 0.4,
            "flip_rate": 0.05,
            "scale": 1 + s * m / 10,
            "r": 0.0,
            "grad_tau": 0.0,
        }
        for k in ("tilt", "roll", "zoom")
        for m in (1.0, 2.0, 3.0)
        for s in (1, -1)
    ]
    geo[0]["flip_rate"] = 0.9  # tilt +1 px flips too much: nothing geometric is validated for tilt
    radio = [
        {"kind": "gain", "value": s * v, "accuracy": 0.9 if v < 0.3 else 0.2, "flip_rate": 0.0}
        for v in (0.1, 0.2, 0.4)
        for s in (1, -1)
    ] + [{"kind": "offset", "value": 1.0, "accuracy": 0.9, "flip_rate": 0.0}]
    from robustness_helpers import SPEC

    env = E.envelope(geo, radio, min_accuracy=0.5, max_flip_rate=0.2, spec=SPEC, window_px=40.0)
    assert env["geometric"]["max_corner_px"] == 0.0
    assert env["geometric"]["max_corner_px_by_kind"]["roll"] == 2.0
    assert env["geometric"]["max_scale_change"] == pytest.approx(0.2)
    assert env["radiometric"]["max_gain_change"] == pytest.approx(0.2)
    assert env["radiometric"]["max_offset_k"] == 1.0
    empty = E.envelope(geo, radio, min_accuracy=0.5, max_flip_rate=0.2, spec=SPEC, window_px=None, clean_ok=False)
    assert empty["radiometric"]["max_offset_k"] == 0.0


def _metrics(clean=0.8, rob=0.5, mce=1.0, flip=0.1, slope=0.5):
    return {
        "clean_accuracy": clean,
        "robust_accuracy": {"linf": {"worst": {0.05: rob, 2.0: 0.0}}, "l2": {"worst": {0.5: rob}}},
        "mean_ce": mce,
        "flip_rate": flip,
        "stability_slope": slope,
        "sanity": [],
    }


def test_decision_catches_a_regression_against_the_blessed_model():
    p = section({"gate": gate_params()}, "gate", GateParams)
    th = p.thresholds
    blessed = _metrics(clean=0.9, rob=0.7)
    ok = decide(
        _metrics(clean=0.89, rob=0.69),
        th,
        blessed,
        Regression(accuracy_tol=0.03, relative_tol=0.1, z=1.0, min_camera_n=10),
    )
    assert ok["passed"], ok["reasons"]
    bad = decide(
        _metrics(clean=0.8, rob=0.5, mce=1.3),
        th,
        blessed,
        Regression(accuracy_tol=0.03, relative_tol=0.1, z=1.0, min_camera_n=10),
    )
    assert not bad["passed"]
    names = {c["name"] for c in bad["checks"] if not c["passed"]}
    assert {"regression:clean_accuracy", "regression:robust_accuracy[linf][0.05]", "regression:mean_ce"} <= names
    assert len(bad["reasons"]) == len(names)  # one reason per failed check
    first = decide(
        _metrics(clean=0.8, rob=0.5, mce=1.3),
        th,
        None,
        Regression(accuracy_tol=0.03, relative_tol=0.1, z=1.0, min_camera_n=10),
    )
    assert first["passed"] and not any(c["kind"] == "regression" for c in first["checks"])


def test_decision_fails_on_absolute_thresholds_and_sanity():
    p = section({"gate": gate_params(thresholds={"robust_accuracy": {"linf": {0.05: 0.6}}})}, "gate", GateParams)
    m = _metrics(clean=0.3, rob=0.5, flip=0.9)
    m["sanity"] = [{"name": "zero_at_large_eps[linf]", "passed": False, "value": 0.4, "limit": 0.05, "detail": "x"}]
    d = decide(m, p.thresholds, None, p.regression)
    failed = {c["name"] for c in d["checks"] if not c["passed"]}
    assert failed == {"clean_accuracy", "robust_accuracy[linf][0.05]", "flip_rate", "sanity:zero_at_large_eps[linf]"}


def test_regression_margin_grows_with_sampling_noise():
    p = section({"gate": gate_params()}, "gate", GateParams)
    blessed = _metrics(clean=0.9, rob=0.7)
    cand = _metrics(clean=0.8, rob=0.6)
    strict = decide(
        cand, p.thresholds, blessed, Regression(accuracy_tol=0.03, relative_tol=0.1, z=1.0, min_camera_n=10)
    )  # n unknown: tolerance alone
    assert "regression:clean_accuracy" in {c["name"] for c in strict["checks"] if not c["passed"]}
    for m in (blessed, cand):
        m["n_test"] = 40
        m["robust_accuracy"]["linf"]["n"] = 40
    noisy = decide(
        cand, p.thresholds, blessed, Regression(accuracy_tol=0.03, relative_tol=0.1, z=1.0, min_camera_n=10)
    )  # SE of 0.8 vs 0.9 on 40 each ~ 0.078
    assert "regression:clean_accuracy" not in {c["name"] for c in noisy["checks"] if not c["passed"]}


def _cams(**acc_n):
    return {cam: {"accuracy": a, "n": n} for cam, (a, n) in acc_n.items()}


def test_per_camera_regression_fails_the_camera_that_dropped_even_when_overall_holds():
    p = section({"gate": gate_params()}, "gate", GateParams)
    reg = Regression(accuracy_tol=0.03, relative_tol=0.1, z=1.0, min_camera_n=30)
    blessed, cand = _metrics(clean=0.8), _metrics(clean=0.8)
    blessed["n_test"] = cand["n_test"] = 400
    blessed["per_camera"] = _cams(north=(0.7, 200), south=(0.9, 200))
    cand["per_camera"] = _cams(north=(0.9, 200), south=(0.7, 200))  # north improved, south broke
    d = decide(cand, p.thresholds, blessed, reg)
    checks = {c["name"]: c for c in d["checks"]}
    assert checks["regression:clean_accuracy"]["passed"]
    assert checks["regression:clean_accuracy[north]"]["passed"]
    south = checks["regression:clean_accuracy[south]"]
    se = ((0.7 * 0.3 + 0.9 * 0.1) / 200) ** 0.5  # the overall formula on each side's own n
    assert south["limit"] == pytest.approx(0.9 - (0.03 + se)) and not south["passed"]
    assert d["reasons"] == [r for r in d["reasons"] if r.startswith("regression:clean_accuracy[south]")] != []
    assert "camera south" in d["reasons"][0]
    # around the margin: 0.85 vs 0.9 on 200 each: limit 0.9 - (0.03 + 0.033) = 0.837
    for south_acc, ok in ((0.85, True), (0.83, False)):
        cand["per_camera"] = _cams(north=(0.9, 200), south=(south_acc, 200))
        assert decide(cand, p.thresholds, blessed, reg)["passed"] is ok


def test_per_camera_regression_skips_cameras_below_min_camera_n():
    p = section({"gate": gate_params()}, "gate", GateParams)
    blessed, cand = _metrics(clean=0.8), _metrics(clean=0.8)
    blessed["per_camera"] = _cams(big=(0.8, 300), tiny=(0.9, 12))
    cand["per_camera"] = _cams(big=(0.8, 300), tiny=(0.2, 12))
    reg = Regression(accuracy_tol=0.03, relative_tol=0.1, z=1.0, min_camera_n=30)
    d = decide(cand, p.thresholds, blessed, reg)
    tiny = next(c for c in d["checks"] if c["name"] == "regression:clean_accuracy[tiny]")
    assert d["passed"] and tiny["passed"] and tiny["skipped"] and tiny["limit"] is None
    assert "n 12 < min_camera_n 30" in tiny["text"]
    from thermops.robustness.report import per_camera_rows

    rows = {r[0]: r for r in per_camera_rows({**cand, "checks": d["checks"], "baseline": {"version": 2}})}
    assert rows["tiny"][-1] == "skipped: n 12 < min_camera_n 30" and rows["big"][-1] == "pass"
    # the same figures with the knob below 12 are compared, and the drop fails
    strict = decide(
        cand, p.thresholds, blessed, Regression(accuracy_tol=0.03, relative_tol=0.1, z=1.0, min_camera_n=12)
    )
    assert not strict["passed"] and strict["reasons"][0].startswith("regression:clean_accuracy[tiny]")
    with pytest.raises(ParamsError, match="min_camera_n must be >= 1"):
        section({"gate": gate_params(regression={"min_camera_n": 0})}, "gate", GateParams)


def test_per_camera_regression_without_production_per_camera_figures_says_so():
    from thermops.robustness.report import per_camera_rows

    p = section({"gate": gate_params()}, "gate", GateParams)
    reg = Regression(accuracy_tol=0.03, relative_tol=0.1, z=1.0, min_camera_n=30)
    cand = _metrics(clean=0.8)
    cand["per_camera"] = _cams(north=(0.1, 100), south=(0.9, 100))
    d = decide(cand, p.thresholds, _metrics(clean=0.8), reg)  # a card written before per-camera figures
    notes = [c for c in d["checks"] if c["name"] == "regression:clean_accuracy[per camera]"]
    assert d["passed"] and len(notes) == 1 and notes[0]["passed"] and notes[0]["skipped"]
    assert "not compared: the production model's figures have no per-camera accuracy" in notes[0]["text"]
    rows = per_camera_rows({**cand, "checks": d["checks"], "baseline": {"version": 2}})
    assert [r[0] for r in rows] == ["north", "south"] and {r[-1] for r in rows} == {"not compared"}
    # a camera the production model was never measured on is named, not compared, not failed
    blessed = _metrics(clean=0.8)
    blessed["per_camera"] = _cams(south=(0.9, 100))
    d = decide(cand, p.thresholds, blessed, reg)
    north = next(c for c in d["checks"] if c["name"] == "regression:clean_accuracy[north]")
    assert d["passed"] and north["skipped"] and "not in the production model's figures" in north["text"]


def test_pgd_early_stop_changes_the_work_not_the_result(plain, test_xy):
    x, y = test_xy
    fast = A.PGD(plain, 0.05, "linf", steps=6, seed=4)
    full = A.PGD(plain, 0.05, "linf", steps=6, seed=4, early_stop=False)
    assert torch.equal(A.robust_correct(fast, x, y), A.robust_correct(full, x, y))
    assert fast.n_grad < full.n_grad  # fooled tubelets left the batch
