"""The robustness gate on a classifier that takes geometry features beside the pixels.

A classifier trained with `input.geometry` is called `model(x, geo)` with each row's (N, G)
window geometry. The gate's threat model perturbs pixels only, so every figure must feed
each row its own features, also where an attack or a sweep works on a subset of the rows
(PGD's still-correct samples, APGD's unfooled ones, C&W's prefix, `predict`'s chunks, the
evaluation's deterministic subsets).

The sharpest check is a classifier whose decision depends on the geometry features alone
(`GeometryDecides`: the pixels move its logits by at most 0.01, its geometry margins are
about 3): every attack, corruption, warp and drift must leave every prediction as it was,
so robust accuracy equals clean accuracy everywhere. A row fed another row's features
(misaligned under subsetting) predicts that row's class: `test_the_probe_detects_a_misaligned_row`
shows how many predictions that flips.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from params_helpers import from_params
from robustness_helpers import CFG, SPEC, gate_params, one_thread  # noqa: F401 (autouse fixture)
from torch import nn

from thermops.config import section
from thermops.model.network import TubeletClassifier
from thermops.model.preprocess import GEOMETRY_FEATURES, InputSpec, normalize, resample
from thermops.robustness import attacks as A
from thermops.robustness.evaluate import evaluate, subset
from thermops.robustness.params import GateParams
from thermops.robustness.report import NOT_CURVES

GEO_SPEC: InputSpec = from_params(
    InputSpec, "input", frames=4, size=16, celsius_scale_k=5.0, robust_floor=1.0, geometry=GEOMETRY_FEATURES
)
K = 4
# class c's geometry signature (3 features): three axes and their negative sum
SIGNATURES = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -1.0, -1.0]])


class GeometryDecides(nn.Module):
    """Logits 3 * <geo, signature_c> plus at most 0.01 from the pixels (a non-zero pixel gradient,
    so the attacks take real steps, but no pixel change can move a decision)."""

    def __init__(self):
        super().__init__()
        self.pix = nn.Linear(8, K)
        torch.nn.init.normal_(self.pix.weight, generator=torch.Generator().manual_seed(0))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool3d(x, 2).flatten(1)

    def forward(self, x: torch.Tensor, geo: torch.Tensor) -> torch.Tensor:
        return 3.0 * geo @ SIGNATURES.T + 0.01 * torch.tanh(self.pix(self.embed(x)))


def geometry_rows(n: int, seed: int, wrong: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3) features and (N,) labels: each row carries its class's signature (plus noise), and a
    `wrong` share of rows is labelled with another class, so clean accuracy is below 1 and the
    attacks' subsets of still-correct rows are proper subsets."""
    gen = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, K, (n,), generator=gen)
    geo = SIGNATURES[cls] + 0.1 * torch.randn(n, 3, generator=gen)
    flip = torch.rand(n, generator=gen) < wrong
    y = torch.where(flip, (cls + torch.randint(1, K, (n,), generator=gen)) % K, cls)
    return geo, y


def raw_tubelets(n: int, seed: int) -> np.ndarray:
    """(N, 4, 16, 16) celsius tubelets: a warm blob at a random place on a cool background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(4, 12, 2)
        blob = 8.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        out.append(15.0 + blob[None] + rng.normal(0, 0.3, (4, 16, 16)))
    return np.asarray(out, dtype=np.float32)


@pytest.fixture(scope="module")
def probe():
    n = 300  # more than one 256-row chunk of `predict`
    geo, y = geometry_rows(n, seed=1)
    raw = raw_tubelets(n, seed=2)
    x = normalize(resample(raw, 4, 16), ["celsius"] * n, GEO_SPEC)
    return GeometryDecides().eval(), raw, x, y, geo


def test_the_probe_detects_a_misaligned_row(probe):
    model, _, x, y, geo = probe
    pred = A.predict(model, x, geo)
    assert 0.6 < float((pred == y).float().mean()) < 0.9  # some rows wrong: subsets are proper subsets
    assert torch.equal(pred, (geo @ SIGNATURES.T).argmax(1))  # the geometry alone decides
    # one row off (features of the neighbouring row) flips most predictions
    assert float((A.predict(model, x, geo.roll(1, dims=0)) != pred).float().mean()) > 0.5
    # chunked prediction takes each chunk's own rows of `geo`
    assert torch.equal(A.predict(model, x, geo, batch=7), pred)


class RowTagged(GeometryDecides):
    """GeometryDecides that also checks, in every forward, that each input row came with its own
    geometry row: row i carries its id in one pixel (100 * i, far beyond any attack budget here)
    and in a 4th geometry column. Counts the rows fed another row's features."""

    def __init__(self):
        super().__init__()
        self.calls, self.misaligned = 0, 0

    def forward(self, x: torch.Tensor, geo: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.misaligned += int((torch.round(x[:, 0, 0, 0, 0].detach() / 100.0) != geo[:, 3]).sum())
        return super().forward(x, geo[:, :3])


def tagged(x: torch.Tensor, geo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(len(x), dtype=torch.float32)
    x = x.clone()
    x[:, 0, 0, 0, 0] = 100.0 * ids
    return x, torch.cat([geo, ids[:, None]], dim=1)


@pytest.mark.parametrize("threat,name", [(t, n) for t, d in A.REGISTRY.items() for n in d])
def test_every_attack_keeps_each_rows_geometry(threat, name, probe):
    _, _, x, y, geo = probe
    model = RowTagged().eval()
    x, geo = tagged(x[:64], geo[:64])
    y = y[:64]
    big = 1.0 if threat != "l2" else 20.0  # a budget that would flip any pixel classifier
    steps = {} if name in ("fgsm", "random_noise") else {"steps": 6}
    atk = A.build_attack(threat, name, model, big, seed=0, **steps)
    clean = A.predict(model, x, geo)
    assert 0 < int((clean != y).sum()) < 32  # some rows wrong: the attacks work on proper subsets
    if name == "cw_l2":
        masks = atk.robust_mask(x, y, [0.5, big], geo)
        for m in masks.values():
            assert torch.equal(m, clean == y)
    else:
        adv = atk(x, y, geo)
        if name != "random_noise":  # (random noise returns x where no draw flipped the row)
            assert not torch.equal(adv, x)  # the pixels did move
        assert torch.equal(A.predict(model, adv, geo), clean)
        assert torch.equal(A.robust_correct(atk, x, y, geo), clean == y)
    assert model.calls > 3 and model.misaligned == 0


def test_pgd_without_early_stop_and_with_restarts_keeps_each_rows_geometry(probe):
    _, _, x, y, geo = probe
    model = RowTagged().eval()
    x, geo = tagged(x[:48], geo[:48])
    y = y[:48]
    for kw in ({"early_stop": False}, {"restarts": 3}, {"maximize_loss": True}):
        adv = A.PGD(model, 1.0, "linf", steps=5, seed=0, **kw)(x, y, geo)
        assert torch.equal(A.predict(model, adv, geo), A.predict(model, x, geo)), kw
    assert model.misaligned == 0


def test_a_misaligned_attack_is_caught_by_the_row_tags(probe):
    """The probe of the two tests above: an attack that feeds a subset the first rows' features."""

    class Misaligned(A.PGD):
        def logits(self, x, rows=None):
            return self.model(x, self.geo[: len(x)])

    _, _, x, y, geo = probe
    model = RowTagged().eval()
    x, geo = tagged(x[:48], geo[:48])
    Misaligned(model, 1.0, "linf", steps=3, seed=0)(x, y[:48], geo)
    assert model.misaligned > 0


def test_robust_accuracy_equals_clean_accuracy_under_every_figure_when_only_geometry_decides(probe):
    model, raw, _, y, geo = probe
    p = section({"gate": gate_params(attack_subset=80)}, "gate", GateParams)
    n = len(y)
    cams = [f"cam{i % 3}" for i in range(n)]
    m = evaluate(model, GEO_SPEC, raw, ["celsius"] * n, cams, y.numpy(), p, 5, geo=geo)
    pred = (geo @ SIGNATURES.T).argmax(1)  # what the geometry says, row by row
    ok = pred == y
    assert m["clean_accuracy"] == pytest.approx(float(ok.float().mean()))
    for c, fig in m["per_camera"].items():
        rows = [i for i in range(n) if cams[i] == c]
        assert fig["accuracy"] == pytest.approx(float(ok[rows].float().mean()))
    acc = lambda idx: float(ok[torch.as_tensor(idx)].float().mean())  # noqa: E731
    ia, ic, ip = subset(n, p.attack_subset, 5), subset(n, p.corruptions.subset, 6), subset(n, p.perspective.subset, 7)
    for threat, tm in m["robust_accuracy"].items():
        for name, curve in tm.items():
            if not isinstance(curve, dict) or name in NOT_CURVES:
                continue
            want = acc(ia[: p.cw.subset]) if name == "cw_l2" else acc(ia)
            assert all(v == pytest.approx(want) for v in curve.values()), (threat, name, curve)
        assert tm["more_steps"]["accuracy"] == [pytest.approx(acc(ia))] * 2
    assert m["corruption_clean_error"] == pytest.approx(1 - acc(ic))
    for name, errs in m["corruption_errors"].items():
        assert errs == [pytest.approx(1 - acc(ic))] * 5, name
    for r in m["perspective"]["sweep"]:
        assert r["accuracy"] == pytest.approx(acc(ip)) and r["flip_rate"] == 0.0, r
    wc = m["perspective"]["worst_case"]
    assert wc["flip_rate"] == 0.0 and wc["accuracy"] == pytest.approx(acc(ip[: p.perspective.worst_case.subset]))
    for r in m["radiometric"]["sweep"]:
        assert r["accuracy"] == pytest.approx(acc(ip)) and r["flip_rate"] == 0.0, r
    assert torch.equal(m["_artefacts"]["geo"], geo[torch.as_tensor(ia)])
    grads = next(s for s in m["sanity"] if s["name"] == "gradients_finite_nonzero")
    assert grads["passed"], grads  # the pixels still have a (tiny) gradient: the attacks did step
    for threat, tm in m["robust_accuracy"].items():
        # every row the attacks leave correct keeps its class under any other row's pixels too: no
        # known adversarial example, so the large-eps check does not count it as masked gradients
        reach = tm["large_eps_reach"]
        assert reach["rows"] and reach["no_known_adversarial"] == reach["rows"] and reach["kept"] == []
        check = next(s for s in m["sanity"] if s["name"] == f"zero_at_large_eps[{threat}]")
        assert check["passed"] and f"{len(reach['rows'])} with no known adversarial" in check["detail"], check


def test_a_geometry_classifier_goes_through_the_whole_evaluation_with_finite_figures(probe):
    from thermops.robustness.report import attributions

    _, raw, _, y, geo = probe
    torch.manual_seed(0)
    model = TubeletClassifier(CFG, K, geo_dim=3).eval()
    raw, y, geo = raw[:60], y[:60], geo[:60]
    p = section({"gate": gate_params(attack_subset=24)}, "gate", GateParams)
    m = evaluate(model, GEO_SPEC, raw, ["celsius"] * 60, ["cam0"] * 60, y.numpy(), p, 3, geo=geo)

    def finite(v) -> bool:
        if isinstance(v, dict):
            return all(finite(u) for u in v.values())
        if isinstance(v, list):
            return all(finite(u) for u in v)
        return not isinstance(v, float) or math.isfinite(v)

    for key in ("clean_accuracy", "per_camera", "robust_accuracy", "corruption_errors", "radiometric", "perspective"):
        assert finite(m[key]), key
    assert m["sanity"] and all(
        math.isfinite(float(s["value"])) for s in m["sanity"] if not isinstance(s["value"], dict)
    )
    assert len(m["perspective"]["sweep"]) == 4 * 3 * 2 and math.isfinite(m["stability_slope"])
    art = m["_artefacts"]
    maps = attributions(model, art["x"][:2], art["y"][:2], [2, 8, 8], art["geo"][:2])
    for name, a in maps.items():
        assert a.shape == (2, 4, 16, 16) and torch.isfinite(a).all() and a.abs().sum() > 0, name


def test_geometry_features_must_match_the_spec_and_the_rows(probe):
    model, raw, x, y, geo = probe
    p = section({"gate": gate_params()}, "gate", GateParams)
    with pytest.raises(ValueError, match="no geometry features"):
        evaluate(model, GEO_SPEC, raw[:8], ["celsius"] * 8, ["c"] * 8, y[:8].numpy(), p, 0)
    with pytest.raises(ValueError, match=r"expected \(8, 3\)"):
        evaluate(model, GEO_SPEC, raw[:8], ["celsius"] * 8, ["c"] * 8, y[:8].numpy(), p, 0, geo=geo[:7])
    with pytest.raises(ValueError, match="input.geometry \\[\\] but geometry features"):
        evaluate(model, SPEC, raw[:8], ["celsius"] * 8, ["c"] * 8, y[:8].numpy(), p, 0, geo=geo[:8])
    with pytest.raises(ValueError, match="geometry features of shape"):
        A.PGD(model, 0.1)(x[:8], y[:8], geo[:9])
    with pytest.raises(ValueError, match="geometry features of shape"):
        A.predict(model, x[:8], geo[:8, 0])
