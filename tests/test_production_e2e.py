"""The production loop end to end on the real stages (tiny params), two clones and one object store.

Clone A runs `dvc repro` (nothing promoted: the gate says so), promotes its candidate (the model
and the bento go to the store, an S3-API stand-in: moto's server on 127.0.0.1), and commits the
registry. An experiment in A passes the gate and changes nothing in production. Clone B, a
`git clone` of A that pulls A's DVC outputs, re-runs baseline, gate and package (and pretrain and
finetune, whose checkpoints are `persist`, uncached outs): its gate compares with A's production
model. B imports the production bento from the store into an empty BentoML store and serves it:
/metadata equals what A's own packaged bento serves. B commits its results; clone C, fresh (no
cache, no pull), runs everything and finds every output byte-identical to what B committed
(`git status` clean but for timing fields that pretrain and finetune still write into their
metrics). Cards are not dirty.

Slow by nature (four pipeline runs on tiny params, an experiment, two `bentoml serve`): about
10-15 minutes on 2 shared cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from pipeline_helpers import LOOSE_GATE as LOOSE_GATE_BASE
from pipeline_helpers import TINY_OVERRIDES, copy_repo
from serving_helpers import Server
from store_helpers import S3StandIn

from thermops.config import merge_params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(3000)
LOOSE_GATE = merge_params(LOOSE_GATE_BASE, {"package": {"model_name": "thermops-e2e", "bento_name": "thermops-e2e"}})


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    s3 = S3StandIn(tmp / "moto.log")
    bucket = s3.bucket("thermops-e2e")
    params = merge_params(merge_params(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_OVERRIDES), LOOSE_GATE)
    params["cameras"] = params["cameras"][:1]
    params["production"]["store"] = f"s3://{bucket}/production"
    base_env = {
        **os.environ,
        **s3.env(),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
    }
    a = copy_repo(ROOT, tmp / "A", params)
    env_a = {**base_env, "BENTOML_HOME": str(tmp / "bentoml-A")}
    first = _run([sys.executable, "-m", "dvc", "repro"], a, env_a)
    _git(a, "add", "dvc.lock", "metrics", ".gitignore", "models/.gitignore", "reports/.gitignore")
    _git(a, "commit", "-qm", "dvc.lock of the first run")
    _run([sys.executable, "-m", "dvc", "push", "-q"], a, env_a)
    promote = _run(
        [
            sys.executable,
            "-m",
            "pipeline.production",
            "--root",
            str(a),
            "promote",
            "--note",
            "first e2e model",
            "--commit",
        ],
        a,
        env_a,
    )
    yield {
        "tmp": tmp,
        "s3": s3,
        "bucket": bucket,
        "a": a,
        "env": base_env,
        "env_a": env_a,
        "first": first,
        "promote": promote,
    }
    s3.stop()


def test_a_first_run_gates_without_a_baseline_and_says_so(world):
    out = world["first"].stdout
    assert "no production model: nothing has been promoted" in out
    gate = json.loads((world["a"] / "reports" / "gate" / "gate.json").read_text())
    assert gate["baseline"]["version"] is None and "no regression check" in gate["mean_ce_note"]


def test_promotion_puts_the_model_and_the_bento_in_the_s3_store(world):
    from pipeline.production import current, history

    assert "production is now version 1" in world["promote"].stdout
    os.environ.update(world["s3"].env())
    prod = current(world["a"])
    assert prod.version == 1 and prod.tag.startswith("thermops-e2e:") and prod.bento_tag.startswith("thermops-e2e:")
    bento = json.loads((world["a"] / "models" / "bento.json").read_text())
    assert (prod.tag, prod.bento_tag) == (bento["model_tag"], bento["bento_tag"])
    assert set(prod.card["calibrations"]) == {"gate_wide"}
    keys = world["s3"].keys(world["bucket"])
    hexd = prod.digest.split(":")[1]
    for name in (
        "manifest.json",
        "files/model.pt",
        "files/card.json",
        "files/entry.json",
        "files/calibration/gate_wide.yaml",
    ):
        assert f"production/objects/{hexd}/{name}" in keys, name
    assert any(k.startswith(f"production/objects/{hexd}/files/bento/") and k.endswith(".bento") for k in keys)
    assert [h["action"] for h in history(world["a"])] == ["promote"]
    assert _git(world["a"], "status", "--porcelain") == ""  # promoted and committed


def test_cards_from_the_run_are_not_dirty(world):
    a = world["a"]
    head = _git(a, "rev-list", "--max-parents=0", "HEAD").strip()  # the copy's only code commit
    for card_path in ("models/finetuned/card.json", "models/gated/card.json"):
        card = json.loads((a / card_path).read_text())
        assert card["git_revision"] == head and card["lineage"]["code"] == {"commit": head, "dirty": False}, card_path
    gated = json.loads((a / "models/gated/card.json").read_text())
    lock = yaml.safe_load((a / "dvc.lock").read_text())["stages"]
    dep = {d["path"]: d["md5"] for d in lock["gate"]["deps"]}
    assert gated["gate"]["lineage"]["inputs"]["data/prepared"] == dep["data/prepared"]  # DVC's own hash
    assert gated["gate"]["lineage"]["inputs"]["models/finetuned"] == dep["models/finetuned"]


@pytest.fixture(scope="module")
def experiment(world):
    a = world["a"]
    registry = (a / "deploy" / "production.json").read_bytes()
    proc = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "gate.attack_subset=6"], a, world["env_a"])
    return proc, registry


def test_an_experiment_does_not_change_production(world, experiment):
    from pipeline.production import current, history

    proc, registry_before = experiment
    a = world["a"]
    assert "Running stage 'gate'" in proc.stdout and "gate passed" in proc.stdout
    assert (a / "deploy" / "production.json").read_bytes() == registry_before
    assert _git(a, "diff", "HEAD", "--", "deploy/production.json") == ""
    os.environ.update(world["s3"].env())
    assert current(a).version == 1 and len(history(a)) == 1
    gate = json.loads((a / "reports" / "gate" / "gate.json").read_text())
    assert gate["baseline"]["version"] == 1  # the experiment was gated against production, too


@pytest.fixture(scope="module")
def clone_b(world, experiment):
    tmp, a = world["tmp"], world["a"]
    b = tmp / "B"
    subprocess.run(["git", "clone", "-q", str(a), str(b)], check=True)
    env_b = {**world["env"], "BENTOML_HOME": str(tmp / "bentoml-B")}
    _run(
        [sys.executable, "-m", "dvc", "remote", "modify", "--local", "local", "url", str(a / ".dvc-storage")], b, env_b
    )
    _run([sys.executable, "-m", "dvc", "pull", "-q"], b, env_b)
    proc = _run([sys.executable, "-m", "dvc", "repro"], b, env_b)
    return b, env_b, proc


def test_a_second_clone_gates_against_the_first_clones_production_model(world, clone_b):
    from pipeline.production import current

    b, _, proc = clone_b
    ran = {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage '")}
    # data came from A's remote; pretrain and finetune re-run because their checkpoints are not cached
    assert {"baseline", "gate", "package"} <= ran and not ran & {"prepare", "validate", "ingest"}, ran
    lock_a = yaml.safe_load(_git(world["a"], "show", "HEAD:dvc.lock"))["stages"]
    lock_b = yaml.safe_load((b / "dvc.lock").read_text())["stages"]

    def md5(lock: dict, stage: str, out: str) -> str:
        return {o["path"]: o["md5"] for o in lock[stage]["outs"]}[out]

    for stage, out in (("finetune", "models/finetuned"), ("pretrain", "models/pretrained")):
        assert md5(lock_a, stage, out) == md5(lock_b, stage, out), f"{out} differs between the clones' runs"
    os.environ.update(world["s3"].env())
    prod = current(world["a"])
    gate = json.loads((b / "reports" / "gate" / "gate.json").read_text())
    assert gate["baseline"]["version"] == 1 and gate["baseline"]["tag"] == prod.tag
    assert gate["baseline"]["digest"] == prod.digest
    assert any(c["kind"] == "regression" for c in gate["checks"])  # the regression check ran
    assert json.loads((b / "metrics" / "gate.json").read_text())["baseline"] == 1
    assert (b / "models" / "baseline" / "model.pt").read_bytes() == (prod.path / "model.pt").read_bytes()
    assert f"production version 1 ({prod.tag})" in (b / "reports" / "gate" / "index.html").read_text()


def _metadata(target: str, home: Path, cwd: Path, log: Path) -> dict:
    server = Server(target, home, cwd, log)
    try:
        server.wait_ready(timeout=240)
        return requests.post(server.url + "/metadata", json={}, timeout=30).json()
    finally:
        server.stop()


def test_the_second_clone_serves_the_same_model_with_the_same_metadata(world, clone_b):
    b, env_b, _ = clone_b
    tmp = world["tmp"]
    home = tmp / "bentoml-import"  # an empty store: everything comes from the object store
    env = {**env_b, "BENTOML_HOME": str(home)}
    tag = _run([sys.executable, "-m", "pipeline.production", "--root", str(b), "import"], b, env).stdout.strip()
    os.environ.update(world["s3"].env())
    from pipeline.production import current

    prod = current(world["a"])
    assert tag == prod.bento_tag
    served_b = _metadata(tag, home, tmp, tmp / "serve-b.log")
    served_a = _metadata(prod.bento_tag, tmp / "bentoml-A", tmp, tmp / "serve-a.log")
    assert served_b == served_a
    assert served_b["model_version"] == prod.tag and served_b["gate"]["passed"] is True
    assert "-dirty" not in json.dumps(served_b["lineage"])


def _timing_only(a: dict, b: dict) -> bool:
    """Whether two metrics mappings differ in timing fields only."""
    from thermops.model.card import without_timings

    return without_timings(a) == without_timings(b)


def test_a_fresh_clone_reproduces_the_committed_results(world, clone_b):
    """B commits its run; C, a fresh clone (no DVC cache, no pull), runs everything: nothing differs."""
    b, env_b, _ = clone_b
    _git(b, "add", "-A")
    _git(b, "commit", "-qm", "results gated against production version 1")
    c = world["tmp"] / "C"
    subprocess.run(["git", "clone", "-q", str(b), str(c)], check=True)
    env_c = {**world["env"], "BENTOML_HOME": str(world["tmp"] / "bentoml-C")}
    proc = _run([sys.executable, "-m", "dvc", "repro"], c, env_c)
    ran = {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage '")}
    assert {"prepare", "validate", "finetune", "baseline", "gate", "package"} <= ran  # really from scratch
    changed = [line[3:] for line in _git(c, "status", "--porcelain").splitlines()]
    for path in changed:
        if path == "dvc.lock":
            continue
        assert path.startswith("metrics/") and path.endswith(".json"), f"{path} changed in a fresh clone"
        before = json.loads(_git(c, "show", f"HEAD:{path}"))
        assert _timing_only(before, json.loads((c / path).read_text())), f"{path}: more than timings changed"
    if "dvc.lock" in changed:  # only the hashes of those metrics files may move
        old = yaml.safe_load(_git(c, "show", "HEAD:dvc.lock"))["stages"]
        new = yaml.safe_load((c / "dvc.lock").read_text())["stages"]
        assert old.keys() == new.keys()
        timing_files = {p for p in changed if p != "dvc.lock"}
        for stage in old:
            for kind in ("deps", "outs"):
                a = {e["path"]: e.get("md5") for e in old[stage].get(kind, []) if e["path"] not in timing_files}
                b_ = {e["path"]: e.get("md5") for e in new[stage].get(kind, []) if e["path"] not in timing_files}
                assert a == b_, f"dvc.lock {stage}.{kind} changed in a fresh clone"
    card = json.loads((c / "models" / "gated" / "card.json").read_text())
    assert card["lineage"]["code"]["dirty"] is False and not card["git_revision"].endswith("-dirty")
    status = _run([sys.executable, "-m", "dvc", "status", "--json"], c, env_c)
    assert json.loads(status.stdout) == {}
