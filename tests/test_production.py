"""The production model: content-addressed store (folder and S3-API stand-in), registry, CLI, baseline step.

The S3 tests run against moto's server mode on 127.0.0.1 (`store_helpers.S3StandIn`), a
stand-in for object storage reached over real HTTP with boto3, never a mock in-process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from store_helpers import S3StandIn, fake_candidate, s3_env, toy_repo

from pipeline import production as P
from thermops.model.releases import RegistryError, empty_registry, parse_registry, read_registry
from thermops.model.store import ModelStore, StoreError, folder_digest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3StandIn(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


# ------------------------------------------------------------------------------ store


def test_a_folder_round_trips_under_its_digest(tmp_path):
    src = fake_candidate(tmp_path / "c")
    store = ModelStore(str(tmp_path / "store"))
    digest = store.put_folder(src)
    assert digest == folder_digest(src) and digest.startswith("sha256:")
    assert store.put_folder(src) == digest  # idempotent: same content, same key
    out = store.get_folder(digest, tmp_path / "out")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()
    )
    assert (out / "model.pt").read_bytes() == (src / "model.pt").read_bytes()
    part = store.get_folder(digest, tmp_path / "part", only=("model.pt", "calibration"))
    assert sorted(p.name for p in part.rglob("*") if p.is_file()) == ["cam-a.yaml", "model.pt"]
    # a changed byte is a new version; the old one is untouched
    (src / "model.pt").write_bytes(b"other weights")
    assert store.put_folder(src) != digest and store.digests() == sorted([digest, folder_digest(src)])


def test_a_corrupt_store_is_refused_and_nothing_is_half_written(tmp_path):
    store_dir = tmp_path / "store"
    store = ModelStore(str(store_dir))
    digest = store.put_folder(fake_candidate(tmp_path / "c"))
    obj = next(store_dir.glob("objects/*/files/model.pt"))
    obj.write_bytes(b"tampered")
    dest = tmp_path / "out"
    with pytest.raises(StoreError, match="model.pt .* does not match its manifest"):
        store.get_folder(digest, dest)
    assert not dest.exists()
    manifest = next(store_dir.glob("objects/*/manifest.json"))
    man = json.loads(manifest.read_text())
    man["files"]["../escape"] = man["files"].pop("model.pt")
    manifest.write_text(json.dumps(man))
    with pytest.raises(StoreError, match="does not hash to it"):
        store.get_folder(digest, dest)


def test_bad_digests_and_urls_are_refused(tmp_path):
    store = ModelStore(str(tmp_path))
    for bad in ("", "sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64):
        with pytest.raises(StoreError, match="is not 'sha256:'"):
            store.has(bad)
    with pytest.raises(StoreError, match="no version"):
        store.get_folder("sha256:" + "0" * 64, tmp_path / "x")
    with pytest.raises(StoreError, match="must not carry credentials"):
        ModelStore("s3://AKIA:secret@bucket/prefix")
    with pytest.raises(StoreError, match="unsupported store"):
        ModelStore("ftp://host/x")
    with pytest.raises(StoreError, match="production.store is empty"):
        ModelStore("")


def test_the_s3_store_round_trips_through_the_stand_in(tmp_path, s3):
    bucket = s3.bucket("thermops-models")
    src = fake_candidate(tmp_path / "c")
    with s3_env(s3):
        store = ModelStore(f"s3://{bucket}/team/prod")
        assert store.is_remote and not store.has(folder_digest(src))
        digest = store.put_folder(src)
        assert store.has(digest) and store.digests() == [digest]
        out = store.get_folder(digest, tmp_path / "out")
        assert (out / "card.json").read_text() == (src / "card.json").read_text()
        assert json.loads(store.read_file(digest, "entry.json"))["model_tag"] == "thermops-test:0000000000000001"
    hexd = digest.split(":")[1]
    keys = s3.keys(bucket)
    assert f"team/prod/objects/{hexd}/manifest.json" in keys
    assert f"team/prod/objects/{hexd}/files/bento/thermops-test-1.bento" in keys


def test_an_unreachable_s3_store_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(StoreError, match=r"s3://bucket/p/objects/.*manifest.json"):
        ModelStore("s3://bucket/p").has("sha256:" + "1" * 64)


# ------------------------------------------------------------------------------ registry


def _release(store: ModelStore, folder: Path):
    return P.release_of(store, store.put_folder(folder))


def test_promotions_and_rollbacks_are_recorded_in_order(tmp_path):
    store = ModelStore(str(tmp_path / "store"))
    r1 = _release(store, fake_candidate(tmp_path / "a", "thermops-test:aaaaaaaaaaaaaaaa"))
    r2 = _release(store, fake_candidate(tmp_path / "b", "thermops-test:bbbbbbbbbbbbbbbb"))
    reg = empty_registry()
    with pytest.raises(RegistryError, match="nothing is in production"):
        reg.rollback(None, "x")
    assert reg.promote(r1, "first", at="t1").version == 1
    with pytest.raises(RegistryError, match="only production version"):
        reg.rollback(None, "x")
    assert reg.promote(r2, "better", at="t2").version == 2
    with pytest.raises(RegistryError, match="already production"):
        reg.promote(r2, "again")
    assert reg.rollback(None, "regression seen", at="t3").version == 1 and reg.current == 1
    assert reg.promote(r2, "fixed upstream", at="t4").version == 2  # known content keeps its version
    assert len(reg.versions) == 2
    with pytest.raises(RegistryError, match="no production version 7"):
        reg.rollback(7, "x")
    again = parse_registry(json.loads(json.dumps(reg.to_dict())))
    assert again.to_dict() == reg.to_dict()
    assert [(e.action, e.version, e.from_version) for e in again.events] == [
        ("promote", 1, None),
        ("promote", 2, 1),
        ("rollback", 1, 2),
        ("promote", 2, 1),
    ]
    assert again.promoted_at(2) == "t4" and again.previous() == 1


def test_a_malformed_registry_is_refused(tmp_path):
    with pytest.raises(RegistryError, match="no production registry"):
        read_registry(tmp_path / "missing.json")
    (tmp_path / "r.json").write_text("{not json")
    with pytest.raises(RegistryError, match="not JSON"):
        read_registry(tmp_path / "r.json")
    good = {"format": "thermops-production/1", "current": 3, "versions": [], "events": []}
    with pytest.raises(RegistryError, match="current version 3 is not recorded"):
        parse_registry(good)
    with pytest.raises(RegistryError, match="not a thermops-production/1 registry"):
        parse_registry({**good, "format": "other"})


def test_a_candidate_the_gate_refused_cannot_be_promoted(tmp_path):
    store = ModelStore(str(tmp_path / "store"))
    digest = store.put_folder(fake_candidate(tmp_path / "c", passed=False))
    with pytest.raises(RegistryError, match="does not say the gate passed"):
        P.release_of(store, digest)


# ------------------------------------------------------------------------------ current / history / CLI


def _cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "pipeline.production", "--root", str(root), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_current_and_history_follow_promotion_and_rollback_through_the_cli(tmp_path):
    repo = toy_repo(tmp_path / "repo", str(tmp_path / "store"))
    store = ModelStore(str(tmp_path / "store"))
    assert P.current(repo) is None and P.history(repo) == []
    d1 = store.put_folder(fake_candidate(tmp_path / "a", "thermops-test:aaaaaaaaaaaaaaaa"))
    d2 = store.put_folder(fake_candidate(tmp_path / "b", "thermops-test:bbbbbbbbbbbbbbbb"))
    for digest, note in ((d1, "first"), (d2, "second")):
        proc = _cli(repo, "promote", "--digest", digest, "--note", note)
        assert proc.returncode == 0, proc.stderr
    prod = P.current(repo)
    assert (prod.version, prod.tag, prod.digest) == (2, "thermops-test:bbbbbbbbbbbbbbbb", d2)
    assert prod.card["calibrations"] == {"cam-a": "v1"} and "envelope" in prod.card
    assert (prod.path / "model.pt").read_bytes() == b"weights of thermops-test:bbbbbbbbbbbbbbbb"
    assert (prod.path / "calibration" / "cam-a.yaml").is_file() and not (prod.path / "bento").exists()
    assert prod.promoted_at.endswith("+00:00")
    proc = _cli(repo, "rollback", "--note", "v2 misses people at dusk")
    assert proc.returncode == 0 and "version 1 again" in proc.stdout, proc.stderr
    assert P.current(repo).version == 1
    hist = P.history(repo)
    assert [(h["action"], h["version"], h["current"]) for h in hist] == [
        ("promote", 1, False),
        ("promote", 2, False),
        ("rollback", 1, True),
    ]
    assert hist[-1]["note"] == "v2 misses people at dusk" and hist[-1]["from_version"] == 2
    listing = _cli(repo, "list")
    assert listing.returncode == 0 and listing.stdout.count("\n") == 4
    assert listing.stdout.splitlines()[-1].startswith("*   1  rollback")


def test_cli_errors_are_one_line(tmp_path):
    repo = toy_repo(tmp_path / "repo", str(tmp_path / "store"))
    for args, needle in (
        (("rollback", "--note", "x"), "nothing is in production"),
        (("promote", "--note", "x", "--digest", "sha256:" + "0" * 64), "no version sha256:"),
        (("promote", "--note", " ", "--digest", "sha256:" + "0" * 64), "needs a note"),
        (("promote", "--note", "x"), "no packaged candidate"),
    ):
        proc = _cli(repo, *args)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, proc.stderr)


def test_a_promotion_can_be_committed(tmp_path):
    repo = toy_repo(tmp_path / "repo", str(tmp_path / "store"))
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], check=True
    )
    digest = ModelStore(str(tmp_path / "store")).put_folder(fake_candidate(tmp_path / "a"))
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    proc = _cli(repo, "promote", "--digest", digest, "--note", "first model", "--commit", env=env)
    assert proc.returncode == 0, proc.stderr
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s", "-1"], capture_output=True, text=True).stdout
    assert log.startswith("production: promote version 1 (thermops-test:0000000000000001): first model")
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True).stdout
    assert status == ""


# ------------------------------------------------------------------------------ baseline step


def _baseline(repo: Path, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    cmd = [sys.executable, "-m", "components.baseline", "--params", str(repo / "params.yaml")]
    cmd += ["--registry", str(repo / "deploy" / "production.json"), "--out", str(out)]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_the_baseline_step_says_when_there_is_no_production_model(tmp_path):
    repo = toy_repo(tmp_path / "repo", "store")
    proc = _baseline(repo, tmp_path / "baseline")
    assert proc.returncode == 0, proc.stderr
    assert "no production model" in proc.stdout
    rec = json.loads((tmp_path / "baseline" / "production.json").read_text())
    assert rec["version"] is None and "promote" in rec["note"]
    assert sorted(p.name for p in (tmp_path / "baseline").iterdir()) == ["production.json"]


def test_the_baseline_step_fetches_production_and_fails_clearly_without_its_store(tmp_path, s3):
    bucket = s3.bucket("baseline-test")
    repo = toy_repo(tmp_path / "repo", f"s3://{bucket}/prod")
    with s3_env(s3):
        digest = ModelStore(f"s3://{bucket}/prod").put_folder(fake_candidate(tmp_path / "a"))
        assert P.promote(repo, "first", digest=digest).version == 1
    proc = _baseline(repo, tmp_path / "baseline", env=s3.env())
    assert proc.returncode == 0, proc.stderr
    got = sorted(p.relative_to(tmp_path / "baseline").as_posix() for p in (tmp_path / "baseline").rglob("*"))
    assert got == ["calibration", "calibration/cam-a.yaml", "card.json", "entry.json", "model.pt", "production.json"]
    assert json.loads((tmp_path / "baseline" / "production.json").read_text())["digest"] == digest
    # the same registry where the store does not answer: one error line naming version and store
    shutil.rmtree(tmp_path / "baseline")
    proc = _baseline(repo, tmp_path / "baseline", env={**s3.env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert (
        line.startswith("error: production version 1 (thermops-test:0000000000000001") and "cannot be fetched" in line
    )
    assert not (tmp_path / "baseline").exists()
