"""Step `ingest`: import the real sets named in `data.sources` into `data/raw/imported/<source>/`.

Every `data.sources` entry other than `synthetic` must have an `ingest.sources`
entry (format, paths, class map, camera). With the default sources
(`[synthetic]`) nothing is read and `data/raw/imported/` holds only an empty
`index.json`, so the default pipeline never touches the real data.
"""

from __future__ import annotations

from pathlib import Path

from components._cli import parser, run_cli
from thermops.config import ParamsError, load_params, section
from thermops.data.importers import IngestParams, import_source
from thermops.io import atomic_dir, write_json

SYNTHETIC = "synthetic"


def run(params_path: Path, out: Path, calibration_dir: Path) -> dict:
    """Import every non-synthetic source of `data.sources` into `out/<source>/`, atomically.

    Args:
        params_path: params.yaml (reads `data.sources`, `ingest`, `classes`).
        out: the imported-data folder (replaced as a whole only on success).
        calibration_dir: folder of `<camera_id>.yaml`; every imported camera needs one.

    Returns:
        the index written to `out/index.json`: per source, its import summary.
    """
    params = load_params(params_path)
    sources = params.get("data", {}).get("sources", [SYNTHETIC])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ParamsError(f"data.sources: expected a list of names, got {sources!r}")
    wanted = [s for s in sources if s != SYNTHETIC]
    cfg = section(params, "ingest", IngestParams)
    classes = list(params.get("classes", []))
    unknown = [s for s in wanted if s not in cfg.sources]
    if unknown:
        raise ParamsError(f"data.sources: {unknown} have no entry in ingest.sources (known: {sorted(cfg.sources)})")
    index: dict = {"sources": {}}
    with atomic_dir(out) as tmp:
        for name in wanted:
            index["sources"][name] = import_source(name, cfg.sources[name], cfg, classes, calibration_dir, tmp / name)
        write_json(tmp / "index.json", index)
    return index


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; the sources and their settings come from params.yaml."""
    args = parser(__doc__, ("--calibration", "data/calibration"), ("--out", "data/raw/imported")).parse_args(argv)

    def go() -> str:
        index = run(args.params, args.out, args.calibration)
        lines = [
            f"ingest: {name}: {s['clips']} clips, {s['frames']} frames, {s['boxes']} boxes {s['boxes_per_class']}"
            for name, s in index["sources"].items()
        ]
        return "\n".join(lines) or "ingest: no real sources selected (data.sources has only synthetic)"

    run_cli(go)


if __name__ == "__main__":
    main()
