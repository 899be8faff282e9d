"""Step `heldout`: import and cut the real held-out sources named in `real_eval` into `data/heldout`.

    python -m components.heldout --params params.yaml --calibration data/calibration --out data/heldout

Held-out cameras (`real_eval.heldout`) are cut whole; by-image sources
(`real_eval.by_image`) only their test images (the split of a still image is
known from the image list alone, so the other images are never cut). The
prepare knobs are those of `prepare`, with `real_eval.stride` and
`real_eval.background_per_clip` (more windows, more negatives). A source whose
folder is absent is reported `missing` (or is an error with `real_eval.require`),
so the default run works without ../shared/data/real. The real data are not DVC
deps: after a real set changes, run `dvc repro -f heldout` (its input hashes are
in status.json). Every license/README file the source names in `copy` is kept
beside the tubelets cut from it, under licenses/<source>/.

Output: prepared/ (the prepared-data contract), status.json (per source:
scored scope or missing, counts, input hash), licenses/.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from components._cli import parser, run_cli
from thermops.camera.calibration import load_calibrations
from thermops.config import ParamsError, classes_of, load_params, section, seed_of
from thermops.data.extract import PrepareParams, extract_all
from thermops.data.importers import IngestParams, import_source
from thermops.data.importers.base import ImportDataError
from thermops.data.prepared import MANIFEST_COLUMNS
from thermops.evaluation.heldout import RealEvalParams
from thermops.io import atomic_dir, hash_files, write_csv, write_json


def run(
    cfg: RealEvalParams,
    ingest: IngestParams,
    prep: PrepareParams,
    classes: list[str],
    seed: int,
    calibration_dir: Path,
    out_dir: Path,
) -> dict:
    """Import and cut the held-out sources; write `out_dir` atomically.

    Args:
        cfg: the `real_eval` params (which sources, how to cut them, `require`).
        ingest: the `ingest` params (every source's format, paths and class map).
        prep: the `prepare` params (window, size, splits); stride and background count
            are replaced by `cfg`'s.
        classes: the model classes.
        seed: the global seed (the same image splits as `prepare`).
        calibration_dir: `data/calibration`.
        out_dir: `data/heldout` (replaced as a whole on success).

    Returns:
        The status written to status.json: per source, `status` (`scored` or `missing`),
        `scope` and counts.
    """
    unknown = [s for s in cfg.sources if s not in ingest.sources]
    if unknown:
        raise ParamsError(f"real_eval: {unknown} have no entry in ingest.sources (known: {sorted(ingest.sources)})")
    p = dataclasses.replace(prep, stride=cfg.stride, background_per_clip=cfg.background_per_clip)
    calibrations = load_calibrations(calibration_dir)
    status: dict[str, dict] = {}
    rows: list[dict] = []
    arrays: list[np.ndarray] = []
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(prefix="thermops-heldout-") as scratch:
        for name in cfg.sources:
            spec = ingest.sources[name]
            if not Path(spec.root).is_dir():
                if cfg.require:
                    raise ImportDataError(f"real_eval: source {name}: folder {spec.root} not found (real_eval.require)")
                status[name] = {"status": "missing", "reason": f"folder {spec.root} not found"}
                print(f"heldout: {name}: folder {spec.root} not found: not scored", file=sys.stderr)
                continue
            raw = Path(scratch) / name
            imported = import_source(name, spec, ingest, classes, calibration_dir, raw)
            by_image = name in cfg.by_image
            r, a = extract_all([(name, raw)], calibrations, p, classes, seed, frozenset({"test"}) if by_image else None)
            rows.extend(r)
            arrays.extend(a)
            licenses = tmp / "licenses" / name
            licenses.mkdir(parents=True)
            for rel in spec.copy:
                shutil.copy2(raw / Path(rel).name, licenses / Path(rel).name)
            status[name] = {
                "status": "scored",
                "scope": "test images" if by_image else "all (camera never trained on)",
                "clips": len({x["clip_id"] for x in r}),
                "tubelets": len(r),
                "by_label": dict(sorted(Counter(x["label"] for x in r).items())),
                "input_sha256": imported["input_sha256"],
            }
        prepared = tmp / "prepared"
        prepared.mkdir()
        shape = (0, p.frames, p.size, p.size)
        tubelets = np.stack(arrays).astype(np.float32) if arrays else np.zeros(shape, dtype=np.float32)
        np.save(prepared / "tubelets.npy", tubelets, allow_pickle=False)
        write_csv(prepared / "manifest.csv", rows, MANIFEST_COLUMNS)
        summary = {
            "n_tubelets": len(rows),
            "shape": list(tubelets.shape[1:]),
            "by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
            "data_hash": hash_files([prepared / "tubelets.npy", prepared / "manifest.csv"]),
        }
        write_json(prepared / "summary.json", summary)
        write_json(tmp / "status.json", {"sources": status})
    return {"sources": status, **summary}


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; the sources and their settings come from params.yaml."""
    args = parser(__doc__, ("--calibration", "data/calibration"), ("--out", "data/heldout")).parse_args(argv)

    def go() -> str:
        params = load_params(args.params)
        s = run(
            section(params, "real_eval", RealEvalParams),
            section(params, "ingest", IngestParams),
            section(params, "prepare", PrepareParams),
            classes_of(params),
            seed_of(params),
            args.calibration,
            args.out,
        )
        lines = [
            f"heldout: {name}: "
            + (
                f"{v['tubelets']} tubelets {v['by_label']} ({v['scope']})"
                if v["status"] == "scored"
                else f"missing ({v['reason']})"
            )
            for name, v in s["sources"].items()
        ]
        return "\n".join(lines) or "heldout: no real sources named in real_eval"

    run_cli(go)


if __name__ == "__main__":
    main()
