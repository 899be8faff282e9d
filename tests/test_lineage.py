"""Model-card lineage that means something: the code's commit (dirty only when the code is), the
hashes DVC itself records for the inputs, and no wall-clock: a card is byte-stable across runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from thermops.model.card import code_lineage, dvc_md5, lineage, make_card, without_timings

ROOT = Path(__file__).resolve().parents[1]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def test_dvc_md5_is_the_hash_dvc_records(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data" / "sub").mkdir(parents=True)
    (repo / "data" / "b.txt").write_text("beta\r\n")  # DVC 3 hashes raw bytes, CRLF included
    (repo / "data" / "sub" / "a.bin").write_bytes(bytes(range(256)) * 40)
    (repo / "one.csv").write_text("x,y\n1,2\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data", "one.csv"], cwd=repo, check=True)
    for target in ("data", "one.csv"):
        recorded = yaml.safe_load((repo / f"{target}.dvc").read_text())["outs"][0]["md5"]
        assert dvc_md5(repo / target) == recorded, target
    with pytest.raises(FileNotFoundError):
        dvc_md5(repo / "missing")


def test_the_code_commit_moves_with_the_code_only_and_dirty_means_the_code(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "step.py").write_text("X = 1\n")
    (repo / "dvc.lock").write_text("v1\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "code")
    code_commit = _git(repo, "rev-parse", "HEAD").strip()
    paths = ["pkg/step.py"]
    assert code_lineage(paths, repo) == {"commit": code_commit, "dirty": False}
    (repo / "dvc.lock").write_text("v2: rewritten by dvc repro\n")  # what a run changes
    (repo / "metrics.json").write_text("{}")
    assert code_lineage(paths, repo)["dirty"] is False
    _git(repo, "commit", "-qam", "dvc.lock")  # committing run outputs does not move the code's commit
    assert code_lineage(paths, repo)["commit"] == code_commit
    (repo / "pkg" / "step.py").write_text("X = 2\n")
    assert code_lineage(paths, repo) == {"commit": code_commit, "dirty": True}
    _git(repo, "commit", "-qam", "new code")
    new = code_lineage(paths, repo)
    assert new["commit"] != code_commit and new["dirty"] is False
    (repo / "pkg" / "new.py").write_text("")  # an untracked module is a change of the code
    assert code_lineage(["pkg"], repo)["dirty"] is True


def test_outside_git_the_image_names_the_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("THERMOPS_CODE_COMMIT", "0123456789ab")
    assert code_lineage(["x.py"], tmp_path) == {"commit": "0123456789ab", "dirty": None}
    monkeypatch.delenv("THERMOPS_CODE_COMMIT")
    assert code_lineage(["x.py"], tmp_path)["commit"] == "unknown"


def test_the_default_code_is_what_this_process_imported():
    from thermops.model.card import loaded_code

    files = loaded_code(ROOT)
    assert "thermops/model/card.py" in files and "thermops/io.py" in files
    assert not any(f.startswith((".venv", "tests/")) and "site-packages" in f for f in files)
    last = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--", *files], capture_output=True, text=True
    ).stdout.strip()
    assert code_lineage()["commit"] == last  # from anywhere: the repository of the code, not the cwd


def test_a_card_is_byte_stable_and_holds_no_timing(tmp_path):
    from tests.params_helpers import from_params
    from tests.serving_helpers import CLASSES, SPEC
    from thermops.io import dumps_json
    from thermops.model.network import ModelConfig

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.npy").write_bytes(b"\x00" * 64)
    metrics = {"accuracy": 0.8, "seconds": 12.3, "comparison_seconds": 4.0, "per_class": {"a": {"f1": 1.0}}}
    kw = dict(
        classes=CLASSES,
        model_cfg=from_params(ModelConfig, "model"),
        input_spec=SPEC,
        calibrations={"cam": "v1"},
        data={"n": 3},
        metrics=metrics,
        params={"finetune": {"epochs": 1}},
        inputs={"data/prepared": tmp_path / "data"},
    )
    first, second = dumps_json(make_card(**kw)), dumps_json(make_card(**{**kw, "metrics": {**metrics, "seconds": 99}}))
    assert first == second
    card = make_card(**kw)
    assert card["metrics"] == {"accuracy": 0.8, "per_class": {"a": {"f1": 1.0}}}
    assert card["lineage"]["inputs"] == {"data/prepared": dvc_md5(tmp_path / "data")}
    assert card["lineage"]["params"] == lineage(None, {"finetune": {"epochs": 1}})["params"]
    assert "-dirty" not in card["git_revision"] or card["lineage"]["code"]["dirty"]
    assert without_timings({"timing_s": {"a": 1}, "n_s": 2, "loss": 0.1}) == {"loss": 0.1}
