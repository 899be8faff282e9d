"""params presets (params-gpu.yaml): every key exists in params.yaml, the merged sections parse, and the
`dvc exp run -S` arguments round-trip to the preset's values."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("preset", ROOT / "scripts" / "preset.py")
preset = importlib.util.module_from_spec(_spec)
sys.modules["preset"] = preset
_spec.loader.exec_module(preset)
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_gpu_preset_names_existing_keys_and_parses():
    gpu = yaml.safe_load((ROOT / "params-gpu.yaml").read_text())
    from thermops.config import merge_params

    merged = merge_params(BASE, gpu)
    preset.check_sections(merged)
    assert merged["model"]["size"] != BASE["model"]["size"]
    assert sum(merged["synth"]["clips"].values()) > sum(BASE["synth"]["clips"].values())
    args = preset.dvc_args(gpu, BASE)
    pairs = dict(a.split("=", 1) for a in args[1::2])
    assert all(flag == "-S" for flag in args[0::2])
    for key, text in pairs.items():  # every -S value reads back as the preset's value
        node = gpu
        for part in key.split("."):
            node = node[part]
        assert yaml.safe_load(text) == node, key


def test_unknown_key_is_an_error(tmp_path, capsys):
    with pytest.raises(KeyError, match="synth.clipz"):
        preset.dvc_args({"synth": {"clipz": 3}}, BASE)
    bad = tmp_path / "p.yaml"
    bad.write_text("model: {sise: small}\n")
    with pytest.raises(SystemExit) as exc:
        preset.main([str(bad), "--params", str(ROOT / "params.yaml")])
    assert exc.value.code == 1 and "model.sise: not a key of params.yaml" in capsys.readouterr().err


def test_lists_and_mappings_become_flow_yaml(capsys):
    args = preset.dvc_args({"data": {"sources": ["synthetic", "hit-uav"]}, "synth": {"clips": {"train": 2}}}, BASE)
    assert args == ["-S", "data.sources=[synthetic, hit-uav]", "-S", "synth.clips.train=2"]
    preset.main([str(ROOT / "params-gpu.yaml"), "--params", str(ROOT / "params.yaml")])
    line = capsys.readouterr().out.strip()
    assert shlex.split(line)[:2] == ["-S", "synth.clips.train=48"]


def test_experiment_script_reads_dotted_overrides():
    spec = importlib.util.spec_from_file_location("real_experiment", ROOT / "scripts" / "real_experiment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    over = mod._overrides(["data.sources=[synthetic, hit-uav]", "finetune.optim.epochs=20", "prepare.box_fraction=0.5"])
    assert over == {
        "data": {"sources": ["synthetic", "hit-uav"]},
        "finetune": {"optim": {"epochs": 20}},
        "prepare": {"box_fraction": 0.5},
    }
    with pytest.raises(SystemExit, match="not key=value"):
        mod._overrides(["epochs"])


def test_experiment_script_calls_the_steps_with_their_current_signatures(tmp_path, monkeypatch):
    """The script calls the step functions directly: every call must bind to the step's signature
    (the issue-18 merge added `split` and `unlabeled`, which left the script failing at pretrain)."""
    import inspect

    from components import evaluate, finetune, pretrain

    spec = importlib.util.spec_from_file_location("real_experiment", ROOT / "scripts" / "real_experiment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = {}

    def checked(name, real, result):
        def stub(*args, **kwargs):
            calls[name] = inspect.signature(real).bind(*args, **kwargs).arguments  # TypeError if it does not bind
            return result

        return stub

    monkeypatch.setattr(pretrain, "run", checked("pretrain", pretrain.run, {}))
    monkeypatch.setattr(finetune, "run", checked("finetune", finetune.run, {"val_macro_f1": 0.5}))
    monkeypatch.setattr(evaluate, "run", checked("evaluate", evaluate.run, {"sources": {}}))
    monkeypatch.chdir(tmp_path)  # the script chdirs to the checkout; monkeypatch restores the cwd
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    (unlabeled / "manifest.csv").write_text("")
    work = tmp_path / "exp" / "E"
    args = ["--work", str(work), "--prepared", str(tmp_path / "p"), "--heldout", str(tmp_path / "h")]
    mod.main([*args, "--unlabeled", str(unlabeled), "data.sources=[synthetic, hit-uav]"])
    assert set(calls) == {"pretrain", "finetune", "evaluate"}
    assert calls["pretrain"]["unlabeled"] == unlabeled.resolve()
    assert calls["pretrain"]["split"].mode == BASE["split"]["mode"]
    assert calls["finetune"]["params_used"]["model"] == BASE["model"]  # the card records what trained
    assert calls["finetune"]["compare"] is False
    assert "overrides" in (work.parent / "RESULTS.txt").read_text()
    with pytest.raises(SystemExit, match="no unlabeled tubelets"):  # pretrain.unlabeled is true by default
        mod.main([*args, "--unlabeled", str(tmp_path / "none")])
