"""The production registry: which stored model version is in production, and how it got there.

The registry is one small JSON file, `deploy/production.json`, tracked by git and written
only by the promotion CLI (`python -m pipeline.production`): a promotion or a rollback is
an explicit act, recorded with its time and note, and committed like code. The model
files live in a content-addressed store (`thermops.model.store`, params `production.store`)
under the digest the registry names, so a clone that has the registry and can read the
store has exactly the same production model.

    {
      "format": "thermops-production/1",
      "current": 2,                       # the version in production, or null (none yet)
      "versions": [                       # one per promotion of new content, never edited
        {"version": 1, "digest": "sha256:...", "tag": "thermops-classifier:<v>",
         "bento_tag": "thermops:<v>", "calibrations": {...}, "lineage": {...}, "gate": {...}}
      ],
      "events": [                         # every promotion and rollback, oldest first
        {"action": "promote", "version": 1, "at": "2026-11-29T10:00:00+00:00", "note": "..."},
        {"action": "rollback", "version": 1, "from_version": 2, "at": "...", "note": "..."}
      ]
    }

No pipeline stage writes this file: under `dvc repro`, `dvc exp run` and Kubeflow it is an
input (the `baseline` stage reads it), so an experiment cannot replace production.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thermops.io import atomic_file
from thermops.model.store import check_digest

REGISTRY_FORMAT = "thermops-production/1"
MAX_REGISTRY_BYTES = 8 << 20
ACTIONS = ("promote", "rollback")


class RegistryError(ValueError):
    """The registry file is missing, malformed, or asked for something it cannot do."""


@dataclass(frozen=True)
class ProductionParams:
    """The `production` section of params.yaml.

    Attributes:
        store: where model versions live: a folder (relative to the repository root) or
            `s3://bucket/prefix` on any S3-API server (credentials from the environment).
    """

    store: str


@dataclass(frozen=True)
class Release:
    """One promoted model version (immutable once recorded)."""

    version: int
    digest: str  # key in the store
    tag: str  # BentoML model tag
    bento_tag: str  # BentoML bento tag (the archive is in the stored folder)
    calibrations: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """A promotion or rollback: `version` became production at `at`."""

    action: str
    version: int
    at: str
    note: str = ""
    from_version: int | None = None


@dataclass
class Registry:
    """The parsed registry file."""

    versions: dict[int, Release]
    events: list[Event]
    current: int | None

    def release(self, version: int) -> Release:
        if version not in self.versions:
            known = ", ".join(map(str, sorted(self.versions))) or "none"
            raise RegistryError(f"no production version {version} (recorded versions: {known})")
        return self.versions[version]

    def current_release(self) -> Release | None:
        return None if self.current is None else self.release(self.current)

    def promoted_at(self, version: int) -> str | None:
        """When `version` last became production."""
        return next((e.at for e in reversed(self.events) if e.version == version), None)

    def by_digest(self, digest: str) -> Release | None:
        return next((r for r in self.versions.values() if r.digest == digest), None)

    def previous(self) -> int | None:
        """The version that was production before the current one (what a plain rollback restores)."""
        seen = [e.version for e in self.events]
        for v in reversed(seen[:-1]):
            if v != self.current:
                return v
        return None

    def promote(self, release: Release | dict[str, Any], note: str, at: str | None = None) -> Release:
        """Record a promotion: a new version for new content, or the existing one for content seen before."""
        if isinstance(release, dict):
            release = Release(**{**release, "version": 0})
        known = self.by_digest(release.digest)
        if known is None:
            version = max(self.versions, default=0) + 1
            known = Release(**{**asdict(release), "version": version})
            self.versions[version] = known
        if known.version == self.current:
            raise RegistryError(f"{known.tag} ({known.digest[:19]}) is already production (version {known.version})")
        self.events.append(Event("promote", known.version, at or now(), note, self.current))
        self.current = known.version
        return known

    def rollback(self, to: int | None, note: str, at: str | None = None) -> Release:
        """Make an earlier version production again (default: the one before the current)."""
        if self.current is None:
            raise RegistryError("nothing is in production; there is nothing to roll back")
        target = self.previous() if to is None else to
        if target is None:
            raise RegistryError(f"version {self.current} is the only production version so far; no rollback target")
        rel = self.release(target)
        if target == self.current:
            raise RegistryError(f"version {target} is already production")
        self.events.append(Event("rollback", target, at or now(), note, self.current))
        self.current = target
        return rel

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REGISTRY_FORMAT,
            "current": self.current,
            "versions": [asdict(self.versions[v]) for v in sorted(self.versions)],
            "events": [asdict(e) for e in self.events],
        }


def now() -> str:
    """UTC time of a registry event (recorded only by an explicit promotion or rollback)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def empty_registry() -> Registry:
    return Registry({}, [], None)


def parse_registry(data: Any, origin: str = "deploy/production.json") -> Registry:
    """Validate and parse the registry mapping."""
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise RegistryError(f"{origin}: not a {REGISTRY_FORMAT} registry")
    try:
        versions = {}
        for raw in data.get("versions") or []:
            rel = Release(**raw)
            check_digest(rel.digest)
            if not isinstance(rel.version, int) or rel.version < 1 or rel.version in versions:
                raise RegistryError(f"{origin}: bad or repeated version {rel.version!r}")
            versions[rel.version] = rel
        events = [Event(**e) for e in data.get("events") or []]
    except TypeError as err:
        raise RegistryError(f"{origin}: malformed entry ({err})") from None
    current = data.get("current")
    for e in events:
        if e.action not in ACTIONS or e.version not in versions:
            raise RegistryError(f"{origin}: event {e.action} names unknown version {e.version}")
    if current is not None and current not in versions:
        raise RegistryError(f"{origin}: current version {current} is not recorded")
    if current is not None and (not events or events[-1].version != current):
        raise RegistryError(f"{origin}: current version {current} is not the last event's")
    return Registry(versions, events, current)


def read_registry(path: str | Path) -> Registry:
    """The registry at `path`; RegistryError when missing or malformed (never a silent empty one)."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(
            f"{path}: no production registry; create an empty one with `python -m pipeline.production init`"
        )
    if path.stat().st_size > MAX_REGISTRY_BYTES:
        raise RegistryError(f"{path}: {path.stat().st_size} bytes, more than a registry may have")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise RegistryError(f"{path}: not JSON ({err})") from None
    return parse_registry(data, str(path))


def write_registry(path: str | Path, registry: Registry) -> Path:
    """Write the registry atomically (stable key order, one entry per line block)."""
    with atomic_file(path) as fh:
        fh.write(json.dumps(registry.to_dict(), indent=2, sort_keys=True) + "\n")
    return Path(path)
