"""scripts/experiments/perspective.py's tail averaging: the weights it scores are the mean of the
epochs it was given, and BatchNorm recomputed on a split holds that split's statistics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from thermops.learn.datasets import TubeletDataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "experiments" / "perspective.py"


@pytest.fixture(scope="module")
def perspective():
    spec = importlib.util.spec_from_file_location("perspective_experiment", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        self.bn = torch.nn.BatchNorm3d(2)

    def forward(self, x):
        return self.bn(self.conv(x)).mean(dim=(2, 3, 4))


def test_tail_average_is_the_mean_of_the_epochs_given(perspective):
    torch.manual_seed(0)
    m = Tiny()
    avg = perspective.TailAverage()
    seen = []
    for step in range(3):
        with torch.no_grad():
            m.conv.weight.add_(float(step + 1))
            m.bn.running_mean.add_(0.5)
        m.bn.num_batches_tracked += 7
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        avg.add(m)
    assert avg.n == 3
    for k in ("conv.weight", "conv.bias", "bn.weight", "bn.running_mean", "bn.running_var"):
        want = torch.stack([s[k] for s in seen]).mean(dim=0)
        torch.testing.assert_close(avg.state[k], want)
    # integer buffers keep the last epoch's value, not a mean
    assert avg.state["bn.num_batches_tracked"].item() == seen[-1]["bn.num_batches_tracked"].item() == 21
    # the average is a copy: later training does not move it
    before = avg.state["conv.weight"].clone()
    with torch.no_grad():
        m.conv.weight.add_(100.0)
    torch.testing.assert_close(avg.state["conv.weight"], before)


def test_recompute_bn_holds_the_split_statistics_and_restores_mode(perspective):
    torch.manual_seed(1)
    m = Tiny()
    with torch.no_grad():
        m.conv.weight.fill_(1.0)
        m.conv.bias.zero_()
    m.eval()
    x = torch.randn(12, 1, 2, 3, 3) * 3.0 + 5.0
    data = TubeletDataset(x, torch.zeros(12, dtype=torch.long))
    perspective.recompute_bn(m, data, torch.device("cpu"), batch_size=4)
    # conv is the identity on each of its two channels: the statistics are those of x itself
    torch.testing.assert_close(m.bn.running_mean, torch.full((2,), x.mean().item()), rtol=1e-4, atol=1e-4)
    batch_vars = torch.stack([x[s : s + 4].var(unbiased=True) for s in range(0, 12, 4)])
    torch.testing.assert_close(m.bn.running_var, batch_vars.mean().expand(2), rtol=1e-4, atol=1e-4)
    assert not m.training
    assert m.bn.momentum == 0.1


def test_average_needs_epoch_record(perspective, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        perspective.main(
            [
                "--params", "params.yaml", "--raw", str(tmp_path), "--calibration", str(tmp_path),
                "--work", str(tmp_path), "--out", str(tmp_path / "o.json"), "--average", "8",
            ]
        )  # fmt: skip
    assert e.value.code == 2
    assert "--average needs --epoch-record" in capsys.readouterr().err
