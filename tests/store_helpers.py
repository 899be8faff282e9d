"""Helpers for the production-model tests: a local S3-API stand-in, toy candidates, toy repositories.

`S3StandIn` runs moto's server mode (`python -m moto.server`) as a subprocess on 127.0.0.1 and
a free port: a **stand-in** for an object store (AWS S3, MinIO, Ceph...) that speaks the S3
API over real HTTP; it is not S3. The store code reaches it through boto3 with
`AWS_ENDPOINT_URL`, exactly as it would reach MinIO in a cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from process_helpers import stop_group

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "AKIATHERMOPSFAKE0001"
FAKE_SECRET = "thermops-fake-secret-not-a-real-one"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3StandIn:
    """moto's S3-API server on 127.0.0.1 (a stand-in for object storage), with fake credentials."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited {self.proc.returncode}: {Path(log).read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            time.sleep(0.2)
        raise RuntimeError("moto server did not start in 60 s")

    def env(self) -> dict[str, str]:
        """What a process needs to reach the stand-in (as a pod gets it from a secret)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": FAKE_KEY,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        e = self.env()
        return boto3.client(
            "s3",
            endpoint_url=e["AWS_ENDPOINT_URL"],
            aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()


@contextlib.contextmanager
def s3_env(standin: S3StandIn) -> Iterator[None]:
    """Set the stand-in's endpoint and fake credentials in this process's environment."""
    old = {k: os.environ.get(k) for k in standin.env()}
    os.environ.update(standin.env())
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fake_candidate(folder: Path, tag: str = "thermops-test:0000000000000001", passed: bool = True) -> Path:
    """A candidate folder shaped like `pipeline.production.assemble_candidate`'s (small, fake weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"weights of " + tag.encode())
    card = {
        "format": "thermops-model/1",
        "classes": ["person", "vehicle", "animal", "nuisance"],
        "calibrations": {"cam-a": "v1"},
        "input": {"frames": 8, "size": 32},
        "envelope": {"geometric": {"max_corner_px": 1.0}},
        "lineage": {"code": {"commit": "0" * 40, "dirty": False}},
        "gate": {"passed": passed, "decision": "pass" if passed else "fail", "clean_accuracy": 0.7, "mean_ce": 1.0},
    }
    (folder / "card.json").write_text(json.dumps(card, sort_keys=True))
    (folder / "calibration").mkdir(exist_ok=True)
    (folder / "calibration" / "cam-a.yaml").write_text("camera_id: cam-a\nversion: v1\n")
    (folder / "bento").mkdir(exist_ok=True)
    (folder / "bento" / "thermops-test-1.bento").write_bytes(b"not a real bento")
    (folder / "entry.json").write_text(
        json.dumps(
            {
                "format": "thermops-candidate/1",
                "model_tag": tag,
                "bento_tag": "thermops-test:" + tag.split(":")[1],
                "bento_archive": "bento/thermops-test-1.bento",
                "labels": {},
                "metadata": {},
            }
        )
    )
    return folder


def toy_repo(root: Path, store: str) -> Path:
    """A folder with the params.yaml and empty registry the production module reads."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"production": {"store": store}}))
    (root / "deploy").mkdir(exist_ok=True)
    (root / "deploy" / "production.json").write_text(
        json.dumps({"format": "thermops-production/1", "current": None, "versions": [], "events": []})
    )
    return root
