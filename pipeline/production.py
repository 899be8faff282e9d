"""The production model: a versioned, recorded choice among gated, packaged models.

Passing the gate makes a *candidate* (models/gated, the bento named in models/bento.json);
promotion, an explicit and recorded act, makes a candidate *production*. Nothing in the
pipeline promotes: `dvc repro`, `dvc exp run` and Kubeflow runs only read production
(the `baseline` stage gives the gate its baseline from it).

Where it lives (docs/production.md says why):

- `deploy/production.json`, tracked by git: which version is production, every version
  promoted so far and every promotion and rollback with its time and note
  (`thermops.model.releases`). Written only by this module; commit it (`--commit`).
- the store (params `production.store`: a folder, or `s3://bucket/prefix` on any S3-API
  server): each version's folder, content-addressed (`thermops.model.store`):

      model.pt  card.json  calibration/<camera>.yaml      what the gate, the service and the
                                                          calibration watcher read
      bento/<name>-<version>.bento                        the bento with its model (`bentoml export`)
      entry.json                                          tags, BentoML labels and metadata

The Kubeflow package task exports each candidate there too (`export_candidate`), so a
candidate from a cluster run is promoted by digest.

Interface for other modules (stable):

    from pipeline.production import current, history
    prod = current(root)          # ProductionModel | None (None: nothing promoted yet)
    prod.tag                      # BentoML model tag, "thermops-classifier:<version>"
    prod.version                  # int, 1 for the first promoted model
    prod.card                     # dict: the gated card: calibrations {camera: version}, envelope,
                                  #   input, classes, gate, lineage, ...
    prod.path                     # local folder: model.pt, card.json, calibration/<camera>.yaml
                                  #   (the calibrations it was trained and gated on), entry.json
    prod.promoted_at              # ISO-8601 UTC time it (last) became production
    prod.bento_tag, prod.digest, prod.store
    history(root)                 # [{"action", "version", "at", "note", "from_version", "tag",
                                  #   "bento_tag", "digest", "current"}], oldest first

`current` reads the registry and materializes the version from the store into
`.thermops/production/` (git-ignored; verified against the stored manifest) on first use;
it raises `RegistryError` / `StoreError` (both ValueError) when the registry is malformed
or the store cannot give the recorded version.

CLI (`python -m pipeline.production --help`): init, list, show, promote, rollback, pull,
import, export. Errors print one `error: ...` line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thermops.config import load_params, section
from thermops.io import atomic_dir, read_json, write_json
from thermops.model.releases import (
    ProductionParams,
    Registry,
    RegistryError,
    Release,
    empty_registry,
    read_registry,
    write_registry,
)
from thermops.model.store import ModelStore, StoreError, check_digest

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = Path("deploy/production.json")
CACHE = Path(".thermops/production")
# What the gate, the service's camera registry and the calibration watcher read from a version.
MODEL_FILES = ("model.pt", "card.json", "calibration", "entry.json")
ENTRY_FORMAT = "thermops-candidate/1"


@dataclass(frozen=True)
class ProductionModel:
    """The model in production, materialized locally (see the module docstring)."""

    version: int
    tag: str
    bento_tag: str
    digest: str
    card: dict[str, Any]
    path: Path
    promoted_at: str
    store: str


def production_params(root: str | Path = ROOT) -> ProductionParams:
    return section(load_params(Path(root) / "params.yaml"), "production", ProductionParams)


def open_store(root: str | Path = ROOT, url: str | None = None) -> ModelStore:
    """The store named by `url` or by params `production.store` (relative to `root`)."""
    return ModelStore(url or production_params(root).store, base=root)


def registry(root: str | Path = ROOT) -> Registry:
    return read_registry(Path(root) / REGISTRY)


def _complete(path: Path) -> bool:
    return (path / "card.json").is_file() and (path / "model.pt").is_file() and (path / "entry.json").is_file()


def materialize(store: ModelStore, release: Release, dest: Path, only: tuple[str, ...] | None = MODEL_FILES) -> Path:
    """The release's files at `dest` (fetched and verified unless already there)."""
    if only == MODEL_FILES and _complete(dest):
        return dest
    return store.get_folder(release.digest, dest, only=only)


def current(root: str | Path = ROOT, *, fetch: bool = True, store: str | None = None) -> ProductionModel | None:
    """The production model, or None when nothing has been promoted.

    Args:
        root: the repository (deploy/production.json, params.yaml).
        fetch: fetch the version from the store when it is not in `.thermops/production/` yet.
        store: a store URL overriding params `production.store`.
    """
    root = Path(root)
    reg = registry(root)
    rel = reg.current_release()
    if rel is None:
        return None
    path = root / CACHE / f"v{rel.version}-{check_digest(rel.digest)[:12]}"
    st = open_store(root, store)
    if not _complete(path):
        if not fetch:
            raise StoreError(
                f"production version {rel.version} is not in {path}; run `python -m pipeline.production pull`"
            )
        materialize(st, rel, path)
    return ProductionModel(
        version=rel.version,
        tag=rel.tag,
        bento_tag=rel.bento_tag,
        digest=rel.digest,
        card=read_json(path / "card.json"),
        path=path,
        promoted_at=reg.promoted_at(rel.version) or "",
        store=st.url,
    )


def history(root: str | Path = ROOT) -> list[dict[str, Any]]:
    """Every promotion and rollback, oldest first, with the tags of the version it made production."""
    reg = registry(root)
    out = []
    for i, e in enumerate(reg.events):
        rel = reg.versions[e.version]
        out.append(
            {
                "action": e.action,
                "version": e.version,
                "at": e.at,
                "note": e.note,
                "from_version": e.from_version,
                "tag": rel.tag,
                "bento_tag": rel.bento_tag,
                "digest": rel.digest,
                "current": i == len(reg.events) - 1,
            }
        )
    return out


# ---------------------------------------------------------------------------- candidates


def _bentoml():
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    import bentoml

    return bentoml


def assemble_candidate(bento_tag: str, model_tag: str, dest: Path) -> Path:
    """Write a candidate folder from the local BentoML store: model files, calibrations, bento archive, entry."""
    bentoml = _bentoml()
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(model_tag)
        bento = bentoml.bentos.get(bento_tag)
    except NotFound as err:
        home = os.environ.get("BENTOML_HOME", str(Path.home() / "bentoml"))
        raise StoreError(f"not in the BentoML store at {home}: {err}; run the package step first") from None
    src = Path(model.path)
    with atomic_dir(dest) as tmp:
        for name in ("model.pt", "card.json"):
            shutil.copy2(src / name, tmp / name)
        if (src / "calibration").is_dir():
            shutil.copytree(src / "calibration", tmp / "calibration")
        (tmp / "bento").mkdir()
        archive = tmp / "bento" / f"{bento.tag.name}-{bento.tag.version}.bento"
        bentoml.bentos.export_bento(bento.tag, str(archive))
        write_json(
            tmp / "entry.json",
            {
                "format": ENTRY_FORMAT,
                "model_tag": str(model.tag),
                "bento_tag": str(bento.tag),
                "bento_archive": archive.relative_to(tmp).as_posix(),
                "labels": dict(model.info.labels),
                "metadata": dict(model.info.metadata),
            },
        )
    return dest


def export_candidate(
    bento_json: str | Path, store: ModelStore, archive_out: str | Path | None = None
) -> dict[str, str]:
    """Put the candidate named in models/bento.json (from the local BentoML store) into `store`.

    Returns {"digest", "model_tag", "bento_tag", "store"}. The Kubeflow package task calls
    this, so a candidate leaves the pod; a promotion from the workspace calls it too.
    `archive_out` also receives the bento archive (the serving-image task builds from it).
    """
    info = read_json(bento_json)
    with tempfile.TemporaryDirectory(prefix="thermops-candidate-") as tmp:
        folder = assemble_candidate(info["bento_tag"], info["model_tag"], Path(tmp) / "candidate")
        digest = store.put_folder(folder)
        if archive_out is not None:
            entry = read_json(folder / "entry.json")
            Path(archive_out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / entry["bento_archive"], archive_out)
    return {"digest": digest, "model_tag": info["model_tag"], "bento_tag": info["bento_tag"], "store": store.url}


def release_of(store: ModelStore, digest: str) -> Release:
    """A Release record from a stored candidate (its entry.json and gated card)."""
    entry = json.loads(store.read_file(digest, "entry.json"))
    card = json.loads(store.read_file(digest, "card.json"))
    gate = card.get("gate") if isinstance(card.get("gate"), dict) else {}
    if entry.get("format") != ENTRY_FORMAT:
        raise StoreError(f"{store.url}: {digest} is not a thermops candidate (entry.json format)")
    if gate.get("passed") is not True:
        raise RegistryError(f"{entry.get('model_tag')} ({digest[:19]}): its card does not say the gate passed it")
    summary_keys = ("decision", "clean_accuracy", "mean_ce", "flip_rate", "stability_slope", "robust_accuracy_worst")
    return Release(
        version=0,
        digest=digest,
        tag=entry["model_tag"],
        bento_tag=entry["bento_tag"],
        calibrations=dict(card.get("calibrations", {})),
        lineage=card.get("lineage", {}),
        gate={k: gate[k] for k in summary_keys if k in gate},
    )


def promote(
    root: str | Path = ROOT,
    note: str = "",
    digest: str | None = None,
    bento_json: str | Path | None = None,
    store: str | None = None,
) -> Release:
    """Make a candidate production and record it in deploy/production.json.

    The candidate is a stored digest (e.g. exported by a Kubeflow run), or else the
    workspace's packaged model (models/bento.json and the local BentoML store), which is
    exported to the store first. Refused unless the candidate's card says the gate passed it.
    """
    root = Path(root)
    if not note.strip():
        raise RegistryError("a promotion needs a note (--note): why this model goes to production")
    reg = registry(root)
    st = open_store(root, store)
    if digest is None:
        bento_json = Path(bento_json) if bento_json else root / "models" / "bento.json"
        if not bento_json.is_file():
            raise RegistryError(f"{bento_json}: no packaged candidate; run `dvc repro` (gate and package) first")
        digest = export_candidate(bento_json, st)["digest"]
    elif not st.has(digest):
        raise StoreError(f"{st.url}: no version {digest}")
    rel = reg.promote(release_of(st, digest), note.strip())
    write_registry(root / REGISTRY, reg)
    return rel


def rollback(root: str | Path = ROOT, to: int | None = None, note: str = "", store: str | None = None) -> Release:
    """Make an earlier version production again (default: the previous one); recorded like a promotion."""
    root = Path(root)
    if not note.strip():
        raise RegistryError("a rollback needs a note (--note): why")
    reg = registry(root)
    target = reg.previous() if to is None else to
    if target is not None and target in reg.versions:
        st = open_store(root, store)
        if not st.has(reg.versions[target].digest):
            raise StoreError(f"{st.url}: version {target} ({reg.versions[target].digest}) is not in the store")
    rel = reg.rollback(to, note.strip())
    write_registry(root / REGISTRY, reg)
    return rel


def import_bento(root: str | Path = ROOT, store: str | None = None) -> str:
    """Import the production bento (with its model) into the local BentoML store; returns its tag.

    Then `bentoml serve <tag>` serves the production model with the /metadata it had when
    it was packaged, on any machine that can read the store.
    """
    bentoml = _bentoml()
    from bentoml.exceptions import NotFound

    reg = registry(root)
    rel = reg.current_release()
    if rel is None:
        raise RegistryError("nothing is in production; promote a model first")
    try:
        bentoml.bentos.get(rel.bento_tag)
        return rel.bento_tag
    except NotFound:
        pass
    st = open_store(root, store)
    with tempfile.TemporaryDirectory(prefix="thermops-import-") as tmp:
        folder = st.get_folder(rel.digest, Path(tmp) / "v", only=("bento", "entry.json"))
        entry = read_json(folder / "entry.json")
        bento = bentoml.bentos.import_bento(str(folder / entry["bento_archive"]))
    return str(bento.tag)


def init(root: str | Path = ROOT) -> Path:
    """Write an empty registry (nothing in production) unless one exists."""
    path = Path(root) / REGISTRY
    if path.exists():
        read_registry(path)  # validates
        return path
    return write_registry(path, empty_registry())


def _commit(root: Path, message: str) -> str:
    subprocess.run(["git", "-C", str(root), "add", str(REGISTRY)], check=True, capture_output=True)
    proc = subprocess.run(
        ["git", "-C", str(root), "commit", "-q", "-m", message, "--", str(REGISTRY)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RegistryError(f"git commit of {REGISTRY} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no promotions yet (nothing in production)"
    lines = [f"{'':1} {'ver':>3}  {'action':8}  {'at':25}  {'model tag':36}  note"]
    for r in rows:
        mark = "*" if r["current"] else " "
        lines.append(f"{mark} {r['version']:>3}  {r['action']:8}  {r['at']:25}  {r['tag']:36}  {r['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.production <command>`: see --help."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.production", description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="repository (deploy/production.json, params.yaml)")
    ap.add_argument("--store", default=None, help="store URL (default: params production.store)")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create an empty registry (nothing in production)")
    sub.add_parser("list", help="every promotion and rollback, oldest first; * marks production")
    sub.add_parser("show", help="the production version as JSON")
    p = sub.add_parser("promote", help="make a candidate production")
    p.add_argument("--note", required=True, help="why (recorded)")
    p.add_argument("--digest", default=None, help="a stored candidate (e.g. from a Kubeflow run)")
    p.add_argument("--bento-json", type=Path, default=None, help="default: models/bento.json (the workspace's)")
    p.add_argument("--commit", action="store_true", help="git commit deploy/production.json")
    r = sub.add_parser("rollback", help="make an earlier version production again")
    r.add_argument("--to", type=int, default=None, help="version (default: the previous production)")
    r.add_argument("--note", required=True, help="why (recorded)")
    r.add_argument("--commit", action="store_true", help="git commit deploy/production.json")
    pl = sub.add_parser("pull", help="fetch the production model files (model.pt, card.json, calibration/)")
    pl.add_argument("--out", type=Path, default=None, help="also copy them here")
    sub.add_parser("import", help="import the production bento into the local BentoML store; prints its tag")
    ex = sub.add_parser("export", help="put the workspace's packaged candidate into the store; prints its digest")
    ex.add_argument("--bento-json", type=Path, default=Path("models/bento.json"))
    ex.add_argument("--archive-out", type=Path, default=None, help="also copy the bento archive here")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.command == "init":
            print(init(root))
        elif args.command == "list":
            print(_table(history(root)))
        elif args.command == "show":
            prod = current(root, store=args.store)
            if prod is None:
                print("null")
            else:
                d = {k: getattr(prod, k) for k in ("version", "tag", "bento_tag", "digest", "promoted_at", "store")}
                d["path"] = str(prod.path)
                d["calibrations"] = prod.card.get("calibrations")
                d["lineage"] = prod.card.get("lineage")
                print(json.dumps(d, indent=2, sort_keys=True))
        elif args.command == "promote":
            rel = promote(root, args.note, args.digest, args.bento_json, args.store)
            print(f"production is now version {rel.version}: {rel.tag} (bento {rel.bento_tag}, {rel.digest})")
            if args.commit:
                print("committed", _commit(root, f"production: promote version {rel.version} ({rel.tag}): {args.note}"))
            else:
                print(f"record it: git commit -m 'promote {rel.tag}' -- {REGISTRY}")
        elif args.command == "rollback":
            rel = rollback(root, args.to, args.note, args.store)
            print(f"production is now version {rel.version} again: {rel.tag} ({rel.digest})")
            if args.commit:
                print("committed", _commit(root, f"production: roll back to version {rel.version}: {args.note}"))
            else:
                print(f"record it: git commit -m 'roll back to {rel.tag}' -- {REGISTRY}")
        elif args.command == "pull":
            prod = current(root, store=args.store)
            if prod is None:
                print("nothing in production")
                return 0
            if args.out:
                shutil.copytree(prod.path, args.out, dirs_exist_ok=True)
            print(f"version {prod.version} ({prod.tag}) in {args.out or prod.path}")
        elif args.command == "import":
            print(import_bento(root, args.store))
        elif args.command == "export":
            res = export_candidate(args.bento_json, open_store(root, args.store), args.archive_out)
            print(json.dumps(res, indent=2, sort_keys=True))
    except (ValueError, FileNotFoundError, KeyError) as err:  # RegistryError, StoreError, ParamsError
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
