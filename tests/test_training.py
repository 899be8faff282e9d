"""Training engine: resume equals uninterrupted, DDP on 2 gloo ranks, non-finite loss, PGD, metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from params_helpers import from_params

from tests.training_helpers import CLASSES, make_prepared
from thermops.learn.adversarial import AdversarialConfig, pgd
from thermops.learn.augment import AugmentConfig, augment
from thermops.learn.datasets import load_splits, stratified_fraction
from thermops.learn.engine import OptimConfig, classification_loss, epoch_batches, fit, load_checkpoint
from thermops.learn.metrics import ConfusionMatrix, classification_metrics
from thermops.model.network import ModelConfig, TubeletClassifier
from thermops.model.preprocess import InputSpec

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

AUGMENT = from_params(AugmentConfig, "pretrain.augment")


def _optim(**changes) -> OptimConfig:
    """Fine-tuning optim params from params.yaml; no warmup unless asked."""
    return from_params(OptimConfig, "finetune.optim", **{"warmup_epochs": 0, **changes})


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("blobs") / "prepared", n_per_class=10, seed=1)


@pytest.fixture(scope="module")
def splits(blobs):
    return load_splits(blobs, CLASSES, from_params(InputSpec, "input"))


def _model(seed: int) -> TubeletClassifier:
    torch.manual_seed(seed)
    return TubeletClassifier(from_params(ModelConfig, "model", size="tiny"), len(CLASSES))


def test_resumed_run_ends_with_the_same_weights(splits, tmp_path):
    cfg = _optim(epochs=3, batch_size=8, lr=3e-3, warmup_epochs=1)
    loss = classification_loss(AUGMENT, label_smoothing=0.05)

    def select(m):
        return float(m.head.weight.detach().sum())  # any deterministic function of the weights selects an epoch

    full = _model(0)
    r_full = fit(full, loss, splits.train, cfg, seed=3, device=CPU, ckpt_dir=tmp_path / "a", select=select)
    part = _model(0)
    r_part = fit(
        part, loss, splits.train, cfg, seed=3, device=CPU, ckpt_dir=tmp_path / "b", select=select, stop_after=1
    )
    ck = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ck["epoch"] == 1 and set(ck) >= {"model", "optimizer", "scheduler", "epoch", "config"}
    assert len(r_part.history) == 1
    resumed = _model(123)  # a different init: everything must come from the checkpoint
    r_res = fit(resumed, loss, splits.train, cfg, seed=3, device=CPU, ckpt_dir=tmp_path / "b", select=select)
    assert r_res.resumed_from == 1 and r_res.best_epoch == r_full.best_epoch
    assert [h["loss"] for h in r_res.history] == [h["loss"] for h in r_full.history]
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a checkpoint of another config is not resumed
    other = _model(0)
    r_other = fit(
        other,
        loss,
        splits.train,
        _optim(epochs=3, batch_size=8, lr=1e-3),
        seed=3,
        device=CPU,
        ckpt_dir=tmp_path / "b",
    )
    assert r_other.resumed_from == 0


def test_ddp_two_gloo_ranks_stay_synchronized(blobs, splits, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "tests" / "training_helpers.py"),
        str(blobs),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    for k in r0["state"]:  # gradients averaged and buffers broadcast: identical weights on both ranks
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["history"] == r1["history"] and all(torch.isfinite(torch.tensor(h["loss"])) for h in r0["history"])
    # the two ranks' batches are disjoint halves of exactly the single-process global batches
    n = len(splits.train)
    for e in range(2):
        single = epoch_batches(n, 8, 5, e)
        assert len(single) == len(r0["batches"][e]) == len(r1["batches"][e])
        for s, b0, b1 in zip(single, r0["batches"][e], r1["batches"][e]):
            assert not set(b0) & set(b1)
            assert sorted(b0 + b1) == sorted(s.tolist())
    # and the DDP model was actually trained (differs from its init)
    init = _model(0).state_dict()
    assert not torch.equal(init["head.weight"], r0["state"]["head.weight"])


def test_non_finite_loss_raises(splits):
    def bad(model, batch, gen):
        return model(batch[0]).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="non-finite loss"):
        fit(_model(0), bad, splits.train, _optim(epochs=1, batch_size=8, lr=1e-3), seed=0, device=CPU)


def test_pgd_stays_in_the_ball_and_raises_the_loss(splits):
    model = _model(0).eval()
    x, y = splits.test.inputs, splits.test.labels
    cfg = AdversarialConfig(enabled=True, epsilon=0.3, steps=5, step_size=0.1, clean_weight=0.5)
    x_adv = pgd(model, x, y, cfg, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(model(x_adv), y) > ce(model(x), y)
    # adversarial training runs through the engine and keeps the loss finite
    res = fit(
        _model(0),
        classification_loss(None, 0.0, cfg),
        splits.train,
        _optim(epochs=1, batch_size=8, lr=1e-3),
        seed=0,
        device=CPU,
    )
    assert torch.isfinite(torch.tensor(res.history[0]["loss"]))


def test_augment_is_reproducible_and_keeps_shape(splits):
    x = splits.train.inputs[:6]
    a = augment(x, AUGMENT, torch.Generator().manual_seed(7))
    b = augment(x, AUGMENT, torch.Generator().manual_seed(7))
    c = augment(x, AUGMENT, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()


def test_metrics_and_one_confusion_matrix_for_dvc_and_kfp(tmp_path):
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    preds = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    m, cm = classification_metrics(preds, target, CLASSES)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["per_class"]["person"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["vehicle"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["nuisance"]["specificity"] == pytest.approx(6 / 7)
    assert cm.matrix == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]
    rows = cm.dvc_rows()
    assert len(rows) == 8 and rows.count({"actual": "animal", "predicted": "nuisance"}) == 1
    from kfp.dsl import ClassificationMetrics

    art = ClassificationMetrics(name="m", uri=str(tmp_path / "m"))
    cm.log_to_kfp(art)
    kfp_cm = art.metadata["confusionMatrix"]
    assert [c["displayName"] for c in kfp_cm["annotationSpecs"]] == CLASSES
    assert [r["row"] for r in kfp_cm["rows"]] == cm.matrix
    with pytest.raises(ValueError):
        ConfusionMatrix(["a", "b"], [[1, 2]])


def test_stratified_fraction_keeps_every_class(splits):
    idx = stratified_fraction(splits.train.labels, 0.1, seed=0)
    assert set(splits.train.labels[idx].tolist()) == set(range(len(CLASSES)))
    assert list(idx) == list(stratified_fraction(splits.train.labels, 0.1, seed=0))


def test_bn_eval_freezes_running_statistics_and_encoder_lr_scale_splits_groups(splits):
    from thermops.learn.engine import make_optimizer

    m = _model(0)
    before = {k: v.clone() for k, v in m.state_dict().items() if "running_mean" in k}
    fit(
        m,
        classification_loss(None),
        splits.train,
        _optim(epochs=1, batch_size=8, lr=1e-3, bn_eval=True),
        seed=0,
        device=CPU,
    )
    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not torch.equal(_model(0).head.weight, m.head.weight)  # still trained
    opt = make_optimizer(_model(0), _optim(epochs=1, batch_size=8, lr=1e-3, encoder_lr_scale=0.1))
    assert sorted({round(g["lr"], 6) for g in opt.param_groups}) == [1e-4, 1e-3]
