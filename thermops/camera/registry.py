"""The camera registry: `data/calibration/<camera_id>.yaml`, one file per camera.

Adding a camera or recording a new calibration builds the new content in memory,
validates it with the calibration schema and writes it atomically
(`write_calibration`), so a bad argument or a malformed file leaves the registry as
it was. History is git's: every committed version of a camera's file is one
calibration, found again by its `version` (`calibration_history`,
`find_calibration_version`).

Versions are `<valid_from>.<n>` (e.g. `2026-11-20.1`, then `2026-11-20.2` for a
second calibration the same day); a new calibration must carry a new version and
must not be valid from before the one it replaces. A re-calibration that found
nothing moved is recorded as a confirmation (`confirm=True`): a new version, the
same values.

Every file the CLI writes is in one canonical form (`canonical_yaml`: every field,
in the schema's order, no comments), so the same content is always the same bytes.
That matters because DVC hashes bytes: a comment or a reordered key is no change to
the watcher (it compares content) but a changed dependency to `dvc repro`.
`format_calibration` rewrites a hand-edited file in the canonical form, which gives
back the exact bytes DVC recorded when only comments or key order were touched.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from thermops.camera.calibration import (
    Calibration,
    CalibrationError,
    load_calibration,
    parse_calibration,
    write_calibration,
)

DEFAULT_DIR = Path("data/calibration")
_VERSION_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.(\d+)$")


def camera_path(directory: str | Path, camera_id: str) -> Path:
    """Path of a camera's calibration file."""
    return Path(directory) / f"{camera_id}.yaml"


def next_version(current: str | None, valid_from: dt.date) -> str:
    """The version after `current` for a calibration valid from `valid_from`."""
    m = _VERSION_RE.match(current or "")
    if m and m.group(1) == valid_from.isoformat():
        return f"{valid_from.isoformat()}.{int(m.group(2)) + 1}"
    return f"{valid_from.isoformat()}.1"


def parse_assignment(text: str) -> tuple[str, Any]:
    """`geometry.pitch_deg=8.0` -> ("geometry.pitch_deg", 8.0); values are YAML scalars."""
    if "=" not in text:
        raise CalibrationError(f"--set {text!r}: expected KEY=VALUE (e.g. geometry.pitch_deg=8.0)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[a-z_0-9]+(\.[a-z_0-9]+)*", key):
        raise CalibrationError(f"--set {text!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise CalibrationError(f"--set {text!r}: value is not valid YAML: {err}") from None
    return key, value


def apply_assignments(data: dict[str, Any], assignments: list[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of a calibration mapping with dotted keys set; unknown paths are rejected."""
    out = yaml.safe_load(yaml.safe_dump(data))  # deep copy through plain types
    for key, value in assignments:
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise CalibrationError(f"--set {key}: {p!r} is not a section of a calibration")
            node = node[p]
        if parts[-1] not in node:
            raise CalibrationError(f"--set {key}: no field {parts[-1]!r} in {'.'.join(parts[:-1]) or 'the top level'}")
        node[parts[-1]] = value
    return out


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise CalibrationError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CalibrationError(f"{path}: not valid YAML: {err}") from None


def canonical_yaml(cal: Calibration) -> str:
    """The one form the CLI writes: every field in schema order, PyYAML's default style, no comments."""
    return cal.to_yaml()


def is_canonical(path: str | Path, cal: Calibration) -> bool:
    """Whether a file holds exactly the canonical bytes of its calibration."""
    return Path(path).read_text() == canonical_yaml(cal)


def format_calibration(directory: str | Path, camera_id: str) -> bool:
    """Rewrite a camera's file in the canonical form (content unchanged); True if its bytes changed."""
    path = camera_path(directory, camera_id)
    cal = load_calibration(path)
    if is_canonical(path, cal):
        return False
    write_calibration(cal, directory)
    return True


def _content(cal: Calibration) -> dict[str, Any]:
    d = cal.model_dump(mode="json")
    d.pop("version")
    d.pop("valid_from")
    return d


def add_camera(
    directory: str | Path,
    camera_id: str,
    *,
    from_file: str | Path | None = None,
    width: int | None = None,
    height: int | None = None,
    version: str | None = None,
    valid_from: dt.date | None = None,
    description: str = "",
    source: str = "real",
    agc_mode: str = "unknown",
) -> Calibration:
    """Register a new camera, from a full calibration file or as a `display8` camera.

    Without `from_file`, the camera has unknown geometry (only its image size) and
    8-bit AGC output: the honest description of a camera nobody has calibrated.
    """
    target = camera_path(directory, camera_id)
    if target.exists():
        raise CalibrationError(f"{target}: camera {camera_id!r} already registered; use `record` for a new calibration")
    valid_from = valid_from or dt.date.today()
    if from_file is not None:
        given = [f for f, v in (("--width", width), ("--height", height)) if v is not None]
        if given:
            raise CalibrationError(f"add: --from FILE and {' and '.join(given)} contradict (the file gives the size)")
        data = _read_yaml(Path(from_file))
        if not isinstance(data, dict):
            raise CalibrationError(f"{from_file}: expected a mapping at the top level")
        data = dict(data)
        if data.setdefault("camera_id", camera_id) != camera_id:
            raise CalibrationError(f"{from_file}: camera_id {data['camera_id']!r} is not {camera_id!r}")
        data.setdefault("version", version or next_version(None, valid_from))
        data.setdefault("valid_from", valid_from.isoformat())
        cal = parse_calibration(data, str(from_file))
    else:
        if width is None or height is None:
            raise CalibrationError("add: give --from FILE, or --width and --height for a camera of unknown geometry")
        cal = parse_calibration(
            {
                "camera_id": camera_id,
                "version": version or next_version(None, valid_from),
                "valid_from": valid_from.isoformat(),
                "description": description,
                "source": source,
                "geometry": {"known": False, "image_width": width, "image_height": height},
                "radiometry": {"mode": "display8", "bit_depth": 8},
                "agc": {"mode": agc_mode},
            },
            f"camera {camera_id}",
        )
    write_calibration(cal, directory)
    return cal


def record_calibration(
    directory: str | Path,
    camera_id: str,
    *,
    assignments: list[tuple[str, Any]] | None = None,
    from_file: str | Path | None = None,
    version: str | None = None,
    valid_from: dt.date | None = None,
    description: str | None = None,
    confirm: bool = False,
) -> tuple[Calibration, Calibration]:
    """Record a new calibration of a registered camera; returns (previous, new).

    The new content is the current file with `assignments` applied (or `from_file`),
    with a bumped version and a valid-from date (today unless given). Validated
    before anything is written. `confirm`: a re-calibration that found every value
    unchanged (a new version, the same values; a new `description` may say so); it
    contradicts `assignments` and `from_file`.
    """
    if confirm and (assignments or from_file is not None):
        raise CalibrationError(
            "record: --confirm records a re-calibration that changed nothing; it contradicts --set and --from"
        )
    if assignments and from_file is not None:
        raise CalibrationError("record: give --set or --from, not both (which one would win is not obvious)")
    current = load_calibration(camera_path(directory, camera_id))
    if from_file is not None:
        data = _read_yaml(Path(from_file))
        if not isinstance(data, dict):
            raise CalibrationError(f"{from_file}: expected a mapping at the top level")
        data = dict(data)
        # A copy of the current file edited by hand still carries the old version and
        # date: drop them so they are bumped below.
        if version is None and data.get("version") == current.version:
            data.pop("version")
        if valid_from is None and str(data.get("valid_from")) == current.valid_from.isoformat():
            data.pop("valid_from")
    else:
        data = current.model_dump(mode="json")
        data.pop("version")
        data.pop("valid_from")
    if assignments:
        data = apply_assignments(data, assignments)
    if data.get("camera_id", camera_id) != camera_id:
        raise CalibrationError(f"record: camera_id {data.get('camera_id')!r} is not {camera_id!r}")
    data["camera_id"] = camera_id
    if valid_from is not None:
        data["valid_from"] = valid_from.isoformat()
    data.setdefault("valid_from", dt.date.today().isoformat())
    try:
        vf = dt.date.fromisoformat(str(data["valid_from"]))
    except ValueError:
        raise CalibrationError(f"record: valid_from {data['valid_from']!r} is not a date (YYYY-MM-DD)") from None
    if vf < current.valid_from:
        raise CalibrationError(f"record: valid_from {vf} is before the current calibration's {current.valid_from}")
    if version is not None:
        data["version"] = version
    data.setdefault("version", next_version(current.version, vf))
    if description is not None:
        data["description"] = description
    new = parse_calibration(data, f"new calibration of {camera_id}")
    if new.version == current.version:
        raise CalibrationError(
            f"record: version {new.version!r} is the current one; a new calibration needs a new version"
        )
    if _content(new) == _content(current) and not confirm:
        raise CalibrationError(
            "record: nothing changed besides version and valid_from; to record a re-calibration that found "
            "nothing moved, use --confirm"
        )
    write_calibration(new, directory)
    return current, new


# -- history through git ---------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """One committed calibration of a camera."""

    commit: str
    committed: str
    calibration: Calibration | None
    error: str | None = None


def _git(args: list[str], cwd: Path) -> str:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise CalibrationError(f"git {' '.join(args)}: {res.stderr.strip() or 'failed'}")
    return res.stdout


def repo_root(path: str | Path) -> Path | None:
    """The git work tree containing `path`, or None outside git."""
    p = Path(path).resolve()
    try:
        return Path(_git(["rev-parse", "--show-toplevel"], p if p.is_dir() else p.parent).strip())
    except (CalibrationError, OSError):
        return None


def _revisions_git(root: Path, rel: str, max_count: int) -> Iterator[tuple[str, str, str]]:
    log = _git(["log", f"--max-count={max_count}", "--format=%H %cI", "--", rel], root)
    for line in log.splitlines():
        commit, committed = line.split(" ", 1)
        try:
            yield commit, committed, _git(["show", f"{commit}:{rel}"], root)
        except CalibrationError:  # deleted in this commit
            continue


def _revisions_pygit2(path: Path, max_count: int) -> Iterator[tuple[str, str, str]]:
    """The same walk through libgit2 (pygit2 comes with DVC), for images without a git binary."""
    import pygit2

    found = pygit2.discover_repository(str(path.parent))
    if found is None:
        return
    repo = pygit2.Repository(found)
    if repo.head_is_unborn:
        return
    rel = path.relative_to(Path(repo.workdir).resolve()).as_posix()
    last = None
    for commit in repo.walk(repo.head.target, pygit2.enums.SortMode.TIME):
        try:
            blob = commit.tree[rel]
        except KeyError:
            continue
        if blob.id == last:  # unchanged in this commit: not a new revision of the file
            continue
        last = blob.id
        tz = dt.timezone(dt.timedelta(minutes=commit.commit_time_offset))
        when = dt.datetime.fromtimestamp(commit.commit_time, tz)
        yield str(commit.id), when.isoformat(), blob.data.decode()
        max_count -= 1
        if max_count <= 0:
            return


def calibration_history(directory: str | Path, camera_id: str, max_count: int = 200) -> list[HistoryEntry]:
    """Committed versions of a camera's file, newest first (empty outside git)."""
    path = camera_path(directory, camera_id).resolve()
    if shutil.which("git") is None:
        revisions = _revisions_pygit2(path, max_count)
    else:
        root = repo_root(path.parent)
        if root is None:
            return []
        revisions = _revisions_git(root, path.relative_to(root).as_posix(), max_count)
    rel = f"{camera_id}.yaml"
    entries = []
    for commit, committed, text in revisions:
        try:
            cal = parse_calibration(yaml.safe_load(text), f"{rel}@{commit[:10]}")
            entries.append(HistoryEntry(commit, committed, cal))
        except (CalibrationError, yaml.YAMLError) as err:
            entries.append(HistoryEntry(commit, committed, None, str(err)))
    return entries


def find_calibration_version(directory: str | Path, camera_id: str, version: str) -> Calibration | None:
    """The committed calibration of `camera_id` with this `version` (newest such commit), or None."""
    for entry in calibration_history(directory, camera_id):
        if entry.calibration is not None and entry.calibration.version == version:
            return entry.calibration
    return None
