"""Step `baseline`: the production model, fetched from the store, as the gate's baseline.

    python -m components.baseline --params params.yaml --registry deploy/production.json \
        --out models/baseline

Reads the production registry (git-tracked, written only by `python -m pipeline.production`)
and materializes the version it names from the store (params `production.store`), verified
against the stored manifest: model.pt, card.json, calibration/ and entry.json, plus
`production.json` naming the version. With nothing promoted yet, `--out` holds only
`production.json` saying so, and the gate runs without a baseline and says that.

Under `dvc repro` and `dvc exp run` the registry is this stage's dependency, so a new
production model re-runs the gate, and no stage writes it, so no run replaces production.
A recorded version the store cannot give is an error (exit 1), never a silent "no baseline".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components._cli import parser, run_cli
from thermops.config import load_params, section
from thermops.io import atomic_dir, write_json
from thermops.model.releases import ProductionParams, read_registry
from thermops.model.store import ModelStore, StoreError

# What the gate reads from a production version (the bento archive stays in the store).
FILES = ("model.pt", "card.json", "calibration", "entry.json")
NONE_NOTE = (
    "no production model: nothing has been promoted (deploy/production.json); the gate runs without a "
    "baseline. Promote a gated model with `python -m pipeline.production promote --note ...`."
)


def run(params: ProductionParams, registry_path: Path, out: Path, base: Path = Path(".")) -> dict[str, Any]:
    """Materialize the production version (or the record that there is none) at `out`.

    Args:
        params: the `production` section (the store URL).
        registry_path: deploy/production.json.
        out: the baseline folder, replaced atomically.
        base: folder a relative store path resolves against (the repository root under dvc).

    Returns:
        what `out/production.json` says: {"version", "tag", "digest", ...} or {"version": None, "note"}.
    """
    reg = read_registry(registry_path)
    rel = reg.current_release()
    if rel is None:
        record: dict[str, Any] = {"version": None, "note": NONE_NOTE}
        with atomic_dir(out) as tmp:
            write_json(tmp / "production.json", record)
        return record
    store = ModelStore(params.store, base=base)
    try:
        store.get_folder(rel.digest, out, only=FILES)
    except StoreError as err:
        raise StoreError(
            f"production version {rel.version} ({rel.tag}, {rel.digest}) recorded in {registry_path} "
            f"cannot be fetched: {err}. Give this machine read access to {params.store} "
            f"(production.store) or point production.store at the team's store"
        ) from None
    record = {
        "version": rel.version,
        "tag": rel.tag,
        "bento_tag": rel.bento_tag,
        "digest": rel.digest,
        "promoted_at": reg.promoted_at(rel.version),
    }
    write_json(out / "production.json", record)
    return record


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; the store comes from params.yaml (`production.store`)."""
    a = parser(__doc__, ("--registry", "deploy/production.json"), ("--out", "models/baseline")).parse_args(argv)

    def go() -> str:
        p = section(load_params(a.params), "production", ProductionParams)
        rec = run(p, a.registry, a.out)
        if rec["version"] is None:
            return "baseline: " + NONE_NOTE
        return f"baseline: production version {rec['version']} ({rec['tag']}) from {p.store}"

    run_cli(go)


if __name__ == "__main__":
    main()
