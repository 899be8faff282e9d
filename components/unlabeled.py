"""Step `unlabeled`: unlabeled tubelets for self-supervised pretraining, from footage nobody labels.

Renders `unlabeled.clips_per_camera` clips of every camera of the embedded world
(`thermops.world.synth.synthesize_camera` with the `synth` knobs, this section's clip
count, objects per clip and frames per clip, and the params seed plus `seed_offset`: other
scenes, hours, weather and objects than the labelled clips) and cuts their tubelets
exactly as `prepare` does (`thermops.data.extract.extract_clip` with the `prepare`
params and this section's `stride`: same window, same units, same T x S x S). Then
every label is dropped: the manifest has no `label` or `kind` column and `split` is
`unlabeled`. The boxes stand for what a motion detector or tracker gives without any
annotation. Behind a switch (`real_sources`, empty by default) the imported real sets
in data/raw/imported are cut the same way, labels dropped; a source that is also a
labelled source (`data.sources`) is refused, since its test split would leak into
pretraining.

    python -m components.unlabeled --params params.yaml --calibration data/calibration \
        --raw data/raw --out data/unlabeled

Writes OUT/tubelets.npy (float32 (N, T, S, S)), OUT/manifest.csv (UNLABELED_COLUMNS)
and OUT/summary.json (counts per camera and source).

`--cache` (checkpoints/unlabeled, a persistent, uncached DVC out) keeps each camera's cut
tubelets under a key of everything they are a function of: the camera's calibration (its
values), the world, prepare and unlabeled knobs, the classes, the seed and the project code
this process imported. A recalibration of one camera re-renders that camera only; the
others come from the cache, byte-identical to a fresh render (a test says so). Entries of
keys no longer in use are deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components._cli import parser, run_cli
from thermops.camera.calibration import load_calibrations
from thermops.config import ParamsError, classes_of, get, load_params, section, seed_of
from thermops.data.extract import PrepareError, PrepareParams, extract_clip
from thermops.data.prepared import MANIFEST_COLUMNS
from thermops.data.raw import Clip, RawDataError, load_frames, read_annotations, read_clips
from thermops.io import atomic_dir, atomic_file, dumps_json, hash_files, write_csv, write_json
from thermops.model.card import CODE_ROOT, loaded_code
from thermops.world.synth import LABELS, SynthParams, single_split, synthesize_camera

# The prepared manifest without what a label would tell: `label`, and `kind` (object / background).
UNLABELED_COLUMNS = [c for c in MANIFEST_COLUMNS if c not in ("label", "kind")]
UNLABELED_SPLIT = "unlabeled"


@dataclass(frozen=True)
class UnlabeledParams:
    """params `unlabeled`."""

    clips_per_camera: int  # embedded-world clips per camera (0: none)
    frames_per_clip: int
    objects_per_clip: int
    nuisance_per_clip: int
    seed_offset: int  # added to the params seed: clips disjoint from the labelled ones
    stride: int  # frames between consecutive tubelets of one track
    real_sources: list[str]  # imported real sets (data/raw/imported/<source>) cut unlabeled; [] by default

    def __post_init__(self):
        if self.clips_per_camera < 0 or self.frames_per_clip < 1 or self.stride < 1:
            raise ValueError("unlabeled: clips_per_camera >= 0, frames_per_clip >= 1 and stride >= 1 are required")
        if self.seed_offset == 0:
            raise ValueError("unlabeled.seed_offset must not be 0: the clips would repeat the labelled ones")


def _unlabel(rows: list[dict]) -> list[dict]:
    return [{**{k: r[k] for k in UNLABELED_COLUMNS if k in r}, "split": UNLABELED_SPLIT} for r in rows]


def _key_inputs(world: SynthParams, p: PrepareParams, cfg: UnlabeledParams, classes, seed: int) -> dict:
    """What every camera's unlabeled tubelets depend on besides its calibration (the code hashed once)."""
    return {
        "world": dataclasses.asdict(world),
        "prepare": dataclasses.asdict(p),
        "unlabeled": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "real_sources"},
        "classes": list(classes),
        "seed": seed,
        "code": hash_files([CODE_ROOT / f for f in loaded_code(CODE_ROOT)], root=CODE_ROOT),
    }


def _entry(cam: str, cal, shared: dict) -> str:
    """The cache file name of one camera's tubelets: its id and the hash of all they depend on."""
    inputs = {**shared, "calibration": cal.model_dump(mode="json")}
    return f"{cam}-{hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:32]}.npz"


def _cached(cache: Path | None, name: str) -> tuple[list[dict], list[np.ndarray]] | None:
    if cache is None or not (cache / name).is_file():
        return None
    with np.load(cache / name, allow_pickle=False) as z:
        return json.loads(str(z["rows"])), list(z["tubelets"])


def _store(cache: Path, name: str, rows: list[dict], arrays: list[np.ndarray]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_file(cache / name, "wb") as fh:
        np.savez(fh, tubelets=np.stack(arrays).astype(np.float32), rows=np.array(dumps_json(rows)))


def run(
    cfg: UnlabeledParams,
    synth: SynthParams,
    prep: PrepareParams,
    cameras: list[str],
    labelled_sources: list[str],
    classes: list[str],
    seed: int,
    calibration_dir: Path,
    raw_root: Path,
    out_dir: Path,
    cache: Path | None = None,
) -> dict:
    """Render and cut the unlabeled tubelets and write them to `out_dir`; returns the summary.

    `cache`: the per-camera cache folder (None: render every camera)."""
    leak = sorted(set(cfg.real_sources) & set(labelled_sources))
    if leak:
        raise ParamsError(
            f"unlabeled.real_sources {leak} are also labelled sources (data.sources): their test split would "
            "leak into pretraining"
        )
    missing = [c for c in LABELS if c not in classes]
    if missing:
        raise ParamsError(f"classes lacks {missing}, which the embedded world produces")
    calibrations = load_calibrations(calibration_dir)
    p = dataclasses.replace(prep, stride=cfg.stride)
    world = dataclasses.replace(
        single_split(synth, cfg.clips_per_camera, cfg.frames_per_clip),
        objects_per_clip=cfg.objects_per_clip,
        nuisance_per_clip=cfg.nuisance_per_clip,
    )
    rows: list[dict] = []
    arrays: list[np.ndarray] = []
    keys: set[str] = set()
    from_cache: list[str] = []
    shared = _key_inputs(world, p, cfg, classes, seed) if cache is not None else {}
    for cam in cameras if cfg.clips_per_camera else []:
        cal = calibrations.get(cam)
        if cal is None:
            raise PrepareError(f"{calibration_dir}: no calibration for camera {cam!r}")
        name = _entry(cam, cal, shared)
        keys.add(name)
        hit = _cached(cache, name)
        if hit is not None:
            rows.extend(hit[0])
            arrays.extend(hit[1])
            from_cache.append(cam)
            continue
        cam_rows: list[dict] = []
        cam_arrays: list[np.ndarray] = []
        for res in synthesize_camera(world, cal, seed + cfg.seed_offset):
            clip = Clip(**{f.name: res.row[f.name] for f in dataclasses.fields(Clip)})
            clip = dataclasses.replace(clip, clip_id=f"u{cfg.seed_offset}-{clip.clip_id}")
            anns = [{**a, "clip_id": clip.clip_id} for a in res.annotations]
            r, a = extract_clip("synthetic-unlabeled", clip, res.frames, anns, cal, p, classes, seed)
            cam_rows.extend(_unlabel(r))
            cam_arrays.extend(a)
        if cache is not None and cam_rows:
            _store(cache, name, cam_rows, cam_arrays)
        rows.extend(cam_rows)
        arrays.extend(cam_arrays)
    if cache is not None and cache.is_dir():
        for stale in cache.glob("*.npz"):
            if stale.name not in keys:
                stale.unlink()
    for source in cfg.real_sources:
        folder = Path(raw_root) / "imported" / source
        try:
            clips = read_clips(folder)
            by_clip: dict[str, list[dict]] = defaultdict(list)
            for a in read_annotations(folder):
                by_clip[a["clip_id"]].append({**a, "label": classes[0]})  # labels are dropped below
            for clip in clips:
                cal = calibrations.get(clip.camera_id)
                if cal is None:
                    raise PrepareError(f"{folder}: no calibration for camera {clip.camera_id!r}")
                r, a = extract_clip(
                    source, clip, load_frames(folder, clip), by_clip[clip.clip_id], cal, p, classes, seed
                )
                rows.extend(_unlabel(r))
                arrays.extend(a)
        except RawDataError as err:
            raise PrepareError(f"unlabeled.real_sources {source!r}: {err} (run the ingest stage with it)") from None
    if not rows:
        raise PrepareError("unlabeled: no tubelets (clips_per_camera is 0 and no real_sources)")
    order = sorted(range(len(rows)), key=lambda i: rows[i]["tubelet_id"])
    rows = [rows[i] for i in order]
    tubelets = np.stack([arrays[i] for i in order]).astype(np.float32)
    summary = {
        "n_tubelets": len(rows),
        "shape": list(tubelets.shape[1:]),
        "by_camera": dict(sorted(Counter(r["camera_id"] for r in rows).items())),
        "by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
        "n_tracks": len({r["track_id"] for r in rows}),
        "units": sorted({r["units"] for r in rows}),
    }
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "tubelets.npy", tubelets, allow_pickle=False)
        write_csv(tmp / "manifest.csv", rows, UNLABELED_COLUMNS)
        summary["data_hash"] = hash_files([tmp / "tubelets.npy", tmp / "manifest.csv"])
        write_json(tmp / "summary.json", summary)
    return {**summary, "cameras_from_cache": from_cache}  # not in summary.json: the output is the same either way


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; the knobs come from params.yaml."""
    args = parser(
        __doc__,
        ("--calibration", "data/calibration"),
        ("--raw", "data/raw"),
        ("--out", "data/unlabeled"),
        ("--cache", "checkpoints/unlabeled (per-camera tubelets kept between runs)"),
    ).parse_args(argv)

    def go() -> str:
        params = load_params(args.params)
        s = run(
            section(params, "unlabeled", UnlabeledParams),
            section(params, "synth", SynthParams),
            section(params, "prepare", PrepareParams),
            list(get(params, "cameras", list)),
            list(get(params, "data.sources", list)),
            classes_of(params),
            seed_of(params),
            args.calibration,
            args.raw,
            args.out,
            args.cache,
        )
        cached = f"; from the cache: {', '.join(s['cameras_from_cache'])}" if s["cameras_from_cache"] else ""
        return f"unlabeled: {s['n_tubelets']} tubelets {s['by_camera']} into {args.out}{cached}"

    run_cli(go)


if __name__ == "__main__":
    main()
