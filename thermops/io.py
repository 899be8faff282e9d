"""Small I/O helpers: atomic outputs, deterministic JSON and CSV, content hashes.

Every step writes its outputs through `atomic_dir` / `atomic_file`, so a step
that fails leaves the previous outputs (or nothing) in place, never a half-write.
Only the standard library and NumPy are imported, so the training path stays
importable on a bare GPU node.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as fh:
            yield fh
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, NaN as null) ending with a newline."""
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_file(path) as fh:
        fh.write(dumps_json(obj))
    return Path(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write rows with a fixed column order; floats with 6 significant digits."""

    def fmt(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return "" if not math.isfinite(v) else f"{v:.6g}"
        if isinstance(v, (list, tuple, dict)):
            return json.dumps(_jsonable(v), separators=(",", ":"))
        if hasattr(v, "item"):
            return fmt(v.item())
        return str(v)

    with atomic_file(path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            missing = [c for c in columns if c not in row]
            if missing:
                raise KeyError(f"row lacks columns {missing}")
            w.writerow([fmt(row[c]) for c in columns])
    return Path(path)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def hash_files(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """SHA-256 over file names (relative to `root`) and contents, in sorted order."""
    h = hashlib.sha256()
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    for f in sorted(files):
        name = str(f.relative_to(root)) if root else f.name
        h.update(name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


TIMINGS_DIR = Path(".thermops/timings")


def write_timings(step: str, timings: Mapping[str, float], folder: str | Path | None = None) -> Path:
    """Record a step's wall-clock timings where no tracked file sees them.

    Timings change on every run, so they never go into DVC metrics, dvc.lock-hashed outs or
    git-tracked files (which would make `git status` dirty after `dvc repro`): they go to
    `<folder>/<step>.json`, by default `.thermops/timings/` of the working directory
    (git-ignored; `THERMOPS_TIMINGS_DIR` moves it). The Kubeflow task runtime copies them
    into the task's artifact metadata.
    """
    folder = Path(folder or os.environ.get("THERMOPS_TIMINGS_DIR") or TIMINGS_DIR)
    return write_json(folder / f"{step}.json", {k: round(float(v), 3) for k, v in timings.items()})
