"""The tubelet encoder and classifier: shapes per named size, card round trip, pretrained-encoder loading."""

from __future__ import annotations

import pytest
import torch
from params_helpers import from_params

from thermops.learn.ssl import SimCLR, SimCLRConfig, nt_xent
from thermops.model.card import load_model_dir, make_card, save_model_dir
from thermops.model.network import SIZES, ModelConfig, TubeletClassifier
from thermops.model.preprocess import InputSpec


@pytest.mark.parametrize("size", sorted(SIZES))
def test_shapes_per_named_size(size):
    cfg = from_params(ModelConfig, "model", size=size, embed_dim=32)
    m = TubeletClassifier(cfg, 4).eval()
    x = torch.randn(2, 1, 8, 32, 32)
    with torch.no_grad():
        assert m(x).shape == (2, 4)
        assert m.embed(x).shape == (2, 32)
        f = m.encoder.features(x)
    assert f.shape[:2] == (2, SIZES[size][-1]) and f.ndim == 5


def test_unknown_size_is_rejected():
    with pytest.raises(ValueError, match="model.size"):
        TubeletClassifier(from_params(ModelConfig, "model", size="huge"), 4)


def test_pretrained_encoder_loads_into_classifier_without_missing_keys():
    cfg = from_params(ModelConfig, "model")
    ssl = SimCLR(TubeletClassifier(cfg, 4).encoder, from_params(SimCLRConfig, "pretrain.simclr"))
    clf = TubeletClassifier(cfg, 4)
    missing, unexpected = clf.encoder.load_state_dict(ssl.encoder.state_dict(), strict=False)
    assert missing == [] and unexpected == []
    for k, v in ssl.encoder.state_dict().items():
        assert torch.equal(clf.encoder.state_dict()[k], v)


def test_card_round_trip_keeps_predictions(tmp_path):
    cfg = from_params(ModelConfig, "model", size="tiny")
    m = TubeletClassifier(cfg, 3).eval()
    card = make_card(
        classes=["a", "b", "c"],
        model_cfg=cfg,
        input_spec=from_params(InputSpec, "input"),
        calibrations={"cam": "v1"},
        data={"prepared_hash": "x"},
    )
    save_model_dir(tmp_path / "m", m, card)
    m2, card2 = load_model_dir(tmp_path / "m")
    x = torch.randn(3, 1, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert card2["model"]["widths"] == list(SIZES["tiny"])


def test_nt_xent_prefers_matching_views():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    aligned = nt_xent(z, z, 0.2)
    shuffled = nt_xent(z, z[torch.randperm(16)], 0.2)
    assert aligned < shuffled
