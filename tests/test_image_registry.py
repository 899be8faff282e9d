"""Images reach a real OCI registry and come back by digest: the serving-image script the Kubeflow
builder task runs, and the push of the component image (`make image-push`).

The registry is Debian's `docker-registry` (the CNCF Distribution registry) on 127.0.0.1 and a
free port, plain HTTP (`REGISTRY_TLS_VERIFY=false`, for this loopback test only); images are
built and pushed with buildah (vfs, chroot isolation) and pulled back with skopeo. The test
bento's Dockerfile starts `FROM scratch` so that the whole script (unpack the archive, build the
bento's own Dockerfile, push by content tag, report the digest) runs in seconds; building the
real bento's Dockerfile (Python and torch inside) is `scripts/image/bento_image.sh`, minutes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("buildah", "skopeo", "docker-registry")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root and buildah, skopeo, docker-registry (apt-get install buildah skopeo docker-registry)",
)
FAKE_PASSWORD = "registry-fake-password-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """docker-registry on 127.0.0.1:<free port>; yields host:port."""
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    (root / "config.yml").write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    log = open(root / "registry.log", "wb")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "registry.log").read_text()[-2000:]) from None
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "STORAGE_DRIVER": "vfs", "REGISTRY_TLS_VERIFY": "false", **extra}


def _fake_bento(path: Path, name: str = "thermops-test", version: str = "0123456789abcdef") -> bytes:
    """A bento archive whose Dockerfile needs no base image (FROM scratch): bento.yaml + Dockerfile."""
    bento_yaml = f"name: {name}\nversion: {version}\nservice: service:ThermopsClassifier\n".encode()
    dockerfile = b"FROM scratch\nCOPY bento.yaml /home/bentoml/bento/bento.yaml\n"
    with tarfile.open(path, "w:gz") as tf:
        for arc, data in (("bento.yaml", bento_yaml), ("env/docker/Dockerfile", dockerfile)):
            info = tarfile.TarInfo(arc)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return bento_yaml


def _pull_file(ref: str, inner: str, dest: Path) -> bytes:
    """Copy `ref` out of the registry (skopeo) and return one file from its layers."""
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{dest}"],
        check=True,
        capture_output=True,
    )
    manifest = json.loads((dest / "manifest.json").read_text())
    for layer in manifest["layers"]:
        blob = dest / layer["digest"].split(":", 1)[1]
        with tarfile.open(blob) as tf:
            for member in tf.getmembers():
                if member.name.lstrip("./") == inner:
                    return tf.extractfile(member).read()
    raise AssertionError(f"{inner} not in {ref}")


def test_the_serving_image_reaches_the_registry_by_content_tag_and_comes_back_by_digest(registry, tmp_path):
    bento_yaml = _fake_bento(tmp_path / "bento.bento")
    out, report = tmp_path / "image.txt", tmp_path / "report" / "image.md"
    proc = subprocess.run(
        ["sh", str(ROOT / "scripts/image/serving_image.sh"), str(tmp_path / "bento.bento"), f"{registry}/thermops"]
        + [str(out), str(report)],
        env=_env(REGISTRY_USERNAME="ci", REGISTRY_PASSWORD=FAKE_PASSWORD),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert FAKE_PASSWORD not in proc.stdout + proc.stderr
    ref = out.read_text()
    subprocess.run(["buildah", "--storage-driver", "vfs", "rmi", ref.split("@")[0] + ":0123456789abcdef"], check=False)
    repo, digest = ref.split("@")
    assert repo == f"{registry}/thermops/thermops-test" and digest.startswith("sha256:") and len(digest) == 71
    assert ref in report.read_text()
    # the content tag names the same image the digest does
    inspect = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{repo}:0123456789abcdef"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(inspect.stdout)["Digest"] == digest
    # pulled back by digest, the image holds the bento it was built from, byte for byte
    assert _pull_file(ref, "home/bentoml/bento/bento.yaml", tmp_path / "pulled") == bento_yaml
    pulled_manifest = (tmp_path / "pulled" / "manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(pulled_manifest).hexdigest() == digest


def test_a_bad_archive_is_refused_before_anything_is_built(tmp_path):
    (tmp_path / "empty.bento").write_bytes(b"")
    with tarfile.open(tmp_path / "nobento.bento", "w") as tf:
        info = tarfile.TarInfo("README")
        tf.addfile(info, io.BytesIO(b""))
    for archive, needle in (("missing.bento", "no bento archive"), ("nobento.bento", "holds no bento.yaml")):
        proc = subprocess.run(
            ["sh", str(ROOT / "scripts/image/serving_image.sh"), str(tmp_path / archive), "r/x", str(tmp_path / "o")],
            env=_env(),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1 and needle in proc.stderr, proc.stderr


def test_image_push_prints_the_pinned_reference_kubeflow_needs(registry, tmp_path):
    from pipeline.pipeline import check_pinned

    bh = ["buildah", "--storage-driver", "vfs"]
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "hello.txt").write_text("thermops component image stand-in\n")
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    local = "localhost/thermops-push-test:0123456789ab"
    subprocess.run(
        [*bh, "bud", "--isolation", "chroot", "-t", local, str(tmp_path / "ctx")], check=True, capture_output=True
    )
    try:
        proc = subprocess.run(
            [str(ROOT / "scripts/image/push.sh"), local, f"{registry}/thermops:0123456789ab"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        subprocess.run([*bh, "rmi", local], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    ref = proc.stdout.strip()
    assert ref.startswith(f"{registry}/thermops@sha256:") and check_pinned(ref) == ref
    assert _pull_file(ref, "hello.txt", tmp_path / "pulled") == b"thermops component image stand-in\n"
