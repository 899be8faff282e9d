"""`prepare` step: raw clips of every selected source -> tubelets + manifest + splits.

    python -m components.prepare --params params.yaml --raw data/raw \
        --calibration data/calibration --out data/prepared
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from components._cli import parser, run_cli
from thermops.camera.calibration import load_calibrations
from thermops.config import classes_of, get, load_params, section, seed_of
from thermops.data.extract import PrepareParams, extract_all, raw_folders
from thermops.data.prepared import MANIFEST_COLUMNS
from thermops.io import atomic_dir, hash_files, write_csv, write_json


def run(
    p: PrepareParams,
    sources: list[str],
    classes: list[str],
    seed: int,
    raw_root: Path,
    calibration_dir: Path,
    out_dir: Path,
) -> dict:
    """Cut tubelets from the raw data and write the prepared dataset.

    Args:
        p: the `prepare` params.
        sources: `data.sources` (`synthetic` and/or imported source names).
        classes: the model classes; every label must be one of them.
        seed: the global seed (splits and background windows).
        raw_root: folder holding `synthetic/<camera>/` and `imported/<source>/`.
        calibration_dir: `data/calibration`.
        out_dir: the prepared dataset folder (replaced atomically).

    Returns:
        The summary written to `summary.json`.
    """
    calibrations = load_calibrations(calibration_dir)
    rows, tubelets = extract_all(raw_folders(raw_root, sources), calibrations, p, classes, seed)
    summary = {
        "n_tubelets": len(rows),
        "shape": list(tubelets.shape[1:]),
        "by_split": dict(sorted(Counter(r["split"] for r in rows).items())),
        "by_label": {
            s: dict(sorted(Counter(r["label"] for r in rows if r["split"] == s).items()))
            for s in ("train", "val", "test")
        },
        "by_camera": dict(sorted(Counter(r["camera_id"] for r in rows).items())),
        "by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
        "n_tracks": len({r["track_id"] for r in rows}),
        "units": sorted({r["units"] for r in rows}),
        "calibrations": dict(sorted({r["camera_id"]: r["calibration_version"] for r in rows}.items())),
    }
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "tubelets.npy", tubelets, allow_pickle=False)
        write_csv(tmp / "manifest.csv", rows, MANIFEST_COLUMNS)
        summary["data_hash"] = hash_files([tmp / "tubelets.npy", tmp / "manifest.csv"])
        write_json(tmp / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; the knobs come from params.yaml."""
    args = parser(
        __doc__, ("--raw", "data/raw"), ("--calibration", "data/calibration"), ("--out", "data/prepared")
    ).parse_args(argv)

    def go() -> str:
        params = load_params(args.params)
        s = run(
            section(params, "prepare", PrepareParams),
            list(get(params, "data.sources", list)),
            classes_of(params),
            seed_of(params),
            args.raw,
            args.calibration,
            args.out,
        )
        return f"prepared {s['n_tubelets']} tubelets {s['by_split']} from {s['by_source']} into {args.out}"

    run_cli(go)


if __name__ == "__main__":
    main()
