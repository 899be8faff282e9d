"""A content-addressed store of model folders: a local folder or an S3-API bucket.

A folder (model.pt, card.json, calibration/, a bento archive ...) is stored under
the digest of its manifest, so the same content always lands at the same key and a
stored version can never change under its name:

    <store>/objects/<hex>/files/<relative path>     the files, as they are
    <store>/objects/<hex>/manifest.json             written last: the version exists once this does

`manifest.json` = {"format", "digest": "sha256:<hex>", "files": {path: {"sha256", "size"}}} and
`<hex>` is the SHA-256 of the canonical JSON of `files`. Reading verifies the manifest's
digest against the key it came from and every file's size and SHA-256 against the
manifest, before anything is handed out; a folder is materialized atomically.

Store URLs: a path (relative paths resolve against `base`, the repository root), or
`s3://bucket/prefix` for any S3-API server. S3 credentials, region and endpoint come
from the environment as boto3 reads them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for a non-AWS server); nothing secret is ever
part of a URL. boto3 is imported only for an `s3://` store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from thermops.io import atomic_dir

STORE_FORMAT = "thermops-store/1"
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
MAX_MANIFEST_BYTES = 4 << 20  # a manifest lists files: far below this; anything larger is not one
CHUNK = 1 << 20


class StoreError(ValueError):
    """A store cannot be reached, or holds no (or a corrupt) version under a digest."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def folder_manifest(folder: str | Path) -> dict[str, dict[str, Any]]:
    """{relative posix path: {"sha256", "size"}} of every regular file under `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{folder}: not a folder")
    return {
        p.relative_to(folder).as_posix(): {"sha256": file_sha256(p), "size": p.stat().st_size} for p in _files(folder)
    }


def manifest_digest(files: dict[str, dict[str, Any]]) -> str:
    """`sha256:<hex>` of the canonical JSON of a manifest's `files` mapping."""
    text = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def folder_digest(folder: str | Path) -> str:
    """The digest a folder is stored under (changes with any file's name or bytes)."""
    return manifest_digest(folder_manifest(folder))


def check_digest(digest: str) -> str:
    """The hex part of a `sha256:<64 hex>` digest, or StoreError."""
    m = DIGEST.fullmatch(str(digest))
    if not m:
        raise StoreError(f"digest {str(digest)[:80]!r} is not 'sha256:' and 64 lowercase hex digits")
    return m.group(1)


def _safe_relpath(rel: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise StoreError(f"manifest path {rel!r} is not a plain relative path")
    return p


class _Local:
    def __init__(self, root: Path):
        self.root = root

    def get(self, key: str, limit: int | None = None) -> bytes | None:
        path = self.root / key
        if not path.is_file():
            return None
        if limit is not None and path.stat().st_size > limit:
            raise StoreError(f"{path}: {path.stat().st_size} bytes, more than the {limit} a manifest may have")
        return path.read_bytes()

    def download(self, key: str, dest: Path) -> None:
        src = self.root / key
        if not src.is_file():
            raise StoreError(f"{src}: missing from the store")
        shutil.copyfile(src, dest)

    def put(self, key: str, src: Path | None = None, data: bytes | None = None) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        if src is not None:
            shutil.copyfile(src, tmp)
        else:
            tmp.write_bytes(data or b"")
        tmp.replace(path)

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())


class _S3:
    def __init__(self, bucket: str, prefix: str):
        import boto3
        from botocore.config import Config

        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        self.client = boto3.client("s3", region_name=region, config=Config(retries={"max_attempts": 3}))
        self.bucket, self.prefix = bucket, prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _errors(self):
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def get(self, key: str, limit: int | None = None) -> bytes | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self._errors() as err:
            if _missing(err):
                return None
            raise StoreError(f"s3://{self.bucket}/{self._key(key)}: {_short(err)}") from None
        if limit is not None and head["ContentLength"] > limit:
            raise StoreError(f"s3://{self.bucket}/{self._key(key)}: {head['ContentLength']} bytes, over {limit}")
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self._errors() as err:
            raise StoreError(f"s3://{self.bucket}/{self._key(key)}: {_short(err)}") from None

    def download(self, key: str, dest: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest))
        except self._errors() as err:
            raise StoreError(f"s3://{self.bucket}/{self._key(key)}: {_short(err)}") from None

    def put(self, key: str, src: Path | None = None, data: bytes | None = None) -> None:
        try:
            if src is not None:
                self.client.upload_file(str(src), self.bucket, self._key(key))
            else:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data or b"")
        except self._errors() as err:
            raise StoreError(f"s3://{self.bucket}/{self._key(key)}: {_short(err)}") from None

    def keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                out += [o["Key"] for o in page.get("Contents", [])]
        except self._errors() as err:
            raise StoreError(f"s3://{self.bucket}/{self._key(prefix)}: {_short(err)}") from None
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in out)


def _missing(err: Exception) -> bool:
    code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _short(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"


class ModelStore:
    """Content-addressed folders at `url` (a path, or s3://bucket/prefix)."""

    def __init__(self, url: str, base: str | Path = "."):
        url = str(url).strip()
        if not url:
            raise StoreError("no store configured (params production.store is empty)")
        scheme, sep, rest = url.partition("://")
        if sep and "@" in rest.split("/", 1)[0]:
            raise StoreError("a store URL must not carry credentials; they come from the environment")
        self.url = url
        if url.startswith("s3://"):
            bucket, _, prefix = url[len("s3://") :].partition("/")
            if not bucket:
                raise StoreError(f"{url}: no bucket")
            self._backend: Any = _S3(bucket, prefix)
        elif "://" in url:
            raise StoreError(f"{url}: unsupported store (a folder path or s3://bucket/prefix)")
        else:
            path = Path(url)
            self._backend = _Local(path if path.is_absolute() else Path(base) / path)

    @property
    def is_remote(self) -> bool:
        return isinstance(self._backend, _S3)

    def __repr__(self) -> str:
        return f"ModelStore({self.url!r})"

    def manifest(self, digest: str) -> dict[str, Any] | None:
        """The verified manifest stored under `digest`, or None when the store has no such version."""
        hexd = check_digest(digest)
        raw = self._backend.get(f"objects/{hexd}/manifest.json", limit=MAX_MANIFEST_BYTES)
        if raw is None:
            return None
        try:
            man = json.loads(raw)
        except ValueError:
            raise StoreError(f"{self.url}: manifest of {digest} is not JSON") from None
        files = man.get("files") if isinstance(man, dict) else None
        if man.get("format") != STORE_FORMAT or not isinstance(files, dict):
            raise StoreError(f"{self.url}: manifest of {digest} is not a {STORE_FORMAT} manifest")
        if manifest_digest(files) != digest:
            raise StoreError(f"{self.url}: manifest under {digest} does not hash to it (corrupt store)")
        for rel, info in files.items():
            _safe_relpath(rel)
            if not isinstance(info, dict) or not DIGEST.fullmatch("sha256:" + str(info.get("sha256"))):
                raise StoreError(f"{self.url}: manifest of {digest}: bad entry for {rel!r}")
        return man

    def has(self, digest: str) -> bool:
        return self.manifest(digest) is not None

    def put_folder(self, folder: str | Path) -> str:
        """Store `folder`; returns its digest. Idempotent: a stored digest is not written again."""
        folder = Path(folder)
        files = folder_manifest(folder)
        if not files:
            raise StoreError(f"{folder}: empty folder; nothing to store")
        digest = manifest_digest(files)
        if self.has(digest):
            return digest
        hexd = check_digest(digest)
        for rel in files:
            self._backend.put(f"objects/{hexd}/files/{rel}", src=folder / rel)
        man = {"format": STORE_FORMAT, "digest": digest, "files": files}
        self._backend.put(
            f"objects/{hexd}/manifest.json", data=(json.dumps(man, indent=1, sort_keys=True) + "\n").encode()
        )
        return digest

    def get_folder(self, digest: str, dest: str | Path, only: Iterable[str] | None = None) -> Path:
        """Materialize the version `digest` at `dest` (replaced atomically), verified file by file.

        Args:
            only: keep only files equal to, or under, these relative paths (e.g. model.pt, calibration).
        """
        man = self.manifest(digest)
        if man is None:
            raise StoreError(f"{self.url}: no version {digest}")
        hexd = check_digest(digest)
        keep = [str(PurePosixPath(o)) for o in only] if only is not None else None
        with atomic_dir(dest) as tmp:
            for rel, info in sorted(man["files"].items()):
                if keep is not None and not any(rel == k or rel.startswith(k.rstrip("/") + "/") for k in keep):
                    continue
                target = tmp / _safe_relpath(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._backend.download(f"objects/{hexd}/files/{rel}", target)
                if target.stat().st_size != info["size"] or file_sha256(target) != info["sha256"]:
                    raise StoreError(f"{self.url}: {rel} of {digest} does not match its manifest (corrupt store)")
        return Path(dest)

    def read_file(self, digest: str, rel: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """One small stored file (an entry.json, a card), verified against the manifest."""
        man = self.manifest(digest)
        if man is None:
            raise StoreError(f"{self.url}: no version {digest}")
        info = man["files"].get(rel)
        if info is None:
            raise StoreError(f"{self.url}: version {digest} has no {rel}")
        if info["size"] > limit:
            raise StoreError(f"{self.url}: {rel} of {digest} is {info['size']} bytes, over {limit}")
        data = self._backend.get(f"objects/{check_digest(digest)}/files/{rel}", limit=limit)
        if data is None or hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise StoreError(f"{self.url}: {rel} of {digest} is missing or corrupt")
        return data

    def digests(self) -> list[str]:
        """Every complete version in the store (those with a manifest)."""
        keys = self._backend.keys("objects/")
        return sorted("sha256:" + k.split("/")[1] for k in keys if k.count("/") == 2 and k.endswith("/manifest.json"))
