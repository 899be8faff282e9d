"""Step `synthesize`: the embedded thermal world for ONE camera, as a raw dataset folder.

    python -m components.synthesize --params params.yaml \
        --calibration data/calibration/<camera_id>.yaml --out data/raw/synthetic/<camera_id>

dvc.yaml runs it once per camera (`foreach: ${cameras}`), so editing one
camera's calibration re-runs only that camera.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from components._cli import parser, run_cli
from thermops.camera.calibration import Calibration, CalibrationError, load_calibration
from thermops.config import ParamsError, classes_of, load_params, section, seed_of
from thermops.data.raw import write_raw
from thermops.io import atomic_dir
from thermops.world.synth import LABELS, SynthParams, camera_seed, synthesize_camera


def run(cfg: SynthParams, calibration: Calibration, out_dir: Path, seed: int, classes: list[str]) -> dict:
    """Synthesize one camera's clips and write them atomically to `out_dir`.

    Args:
        cfg: the `synth` params section.
        calibration: the camera's validated calibration (geometry must be known, radiometric).
        out_dir: raw dataset folder to (re)place, e.g. `data/raw/synthetic/<camera_id>`.
        seed: the params `seed`; the camera's own seed is derived from it and the camera id.
        classes: the model classes; they must include every label the world produces.

    Returns:
        A small summary: camera, clips, frames, tracks per label, annotation rows, bytes, seconds.
    """
    missing = [c for c in LABELS if c not in classes]
    if missing:
        raise ParamsError(f"classes lacks {missing}, which the embedded world produces")
    if not calibration.geometry.known:
        raise CalibrationError(
            f"camera {calibration.camera_id}: geometry.known is false; the embedded world needs geometry"
        )
    if not calibration.radiometry.radiometric:
        raise CalibrationError(
            f"camera {calibration.camera_id}: radiometry.mode is display8; the embedded world needs a radiometric "
            "camera (its 8-bit outputs come from synth.outputs)"
        )
    t0 = time.perf_counter()
    results = synthesize_camera(cfg, calibration, seed)
    clips = [r.row for r in results]
    anns = [a for r in results for a in r.annotations]
    frames = {r.row["clip_id"]: r.frames for r in results}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_raw(tmp, clips, anns, frames)
    tracks = {(a["track_id"], a["label"]) for a in anns}
    kinds = Counter(a["source_label"] for a in {a["track_id"]: a for a in anns}.values())
    split_of = {c["clip_id"]: c["split"] for c in clips}
    return {
        "camera_id": calibration.camera_id,
        "calibration_version": calibration.version,
        "camera_seed": camera_seed(seed, calibration.camera_id),
        "clips": len(clips),
        "clips_per_split": dict(sorted(Counter(c["split"] for c in clips).items())),
        "outputs": dict(sorted(Counter(c["agc"] or c["units"] for c in clips).items())),
        "tracks_per_split": dict(sorted(Counter(split_of[t.rsplit("-t", 1)[0]] for t, _ in tracks).items())),
        "frames": sum(int(c["n_frames"]) for c in clips),
        "annotations": len(anns),
        "tracks": dict(sorted(Counter(label for _, label in tracks).items())),
        "kinds": dict(sorted(kinds.items())),
        "bytes": sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file()),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; the knobs come from params.yaml."""
    ap = parser(__doc__, ("--calibration", "data/calibration/<camera_id>.yaml"), ("--out", "raw dataset folder"))
    args = ap.parse_args(argv)

    def go() -> str:
        params = load_params(args.params)
        cfg = section(params, "synth", SynthParams)
        s = run(cfg, load_calibration(args.calibration), args.out, seed_of(params), classes_of(params))
        return (
            f"synthesize {s['camera_id']}: {s['clips']} clips {s['clips_per_split']}, {s['frames']} frames, "
            f"tracks {s['tracks']} {s['tracks_per_split']}, outputs {s['outputs']}, "
            f"{s['bytes'] / 1e6:.1f} MB in {s['seconds']} s -> {args.out}"
        )

    run_cli(go)


if __name__ == "__main__":
    main()
