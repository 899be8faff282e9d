"""Render frames of the embedded world (every camera, day and night, with boxes) beside real LWIR frames.

    .venv/bin/python scripts/render_world.py --params params.yaml \
        --calibration-dir data/calibration --real ../shared/data/real --out docs/img/world_vs_real.png

Synthesizes in memory (nothing under data/ is written). Synthetic counts are
shown through each camera's AGC as its calibration states it (plateau
equalization or linear with clipped tails), as the camera's display would; the
real frames are 8-bit AGC output already.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from thermops.camera.calibration import load_calibration
from thermops.camera.sensor import agc_linear, agc_plateau
from thermops.config import load_params, section
from thermops.world.synth import SynthParams, synthesize_camera

COLOURS = {"person": "#ff3b30", "vehicle": "#34c759", "animal": "#ffcc00", "nuisance": "#0a84ff"}


def _pick(results, day: bool):
    """The clip closest to mid-day (or to midnight) for a camera."""

    def key(r):
        h = float(r.row["time_of_day_h"])
        return abs(h - 13.0) if day else min(abs(h - 0.0), abs(h - 24.0), abs(h - 2.0))

    return min(results, key=key)


def _real_frames(real: Path) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    out = []
    tno = sorted((real / "tno-fel-sequences").glob("*/*.bmp"))
    if tno:
        out.append(
            (
                f"real: TNO {tno[len(tno) // 2].parent.name} (night, fixed camera)",
                np.asarray(Image.open(tno[len(tno) // 2]).convert("L")),
            )
        )
    hit = sorted((real / "hit-uav" / "images").glob("0_*.jpg"))
    if hit:
        out.append(("real: HIT-UAV (day, UAV)", np.asarray(Image.open(hit[len(hit) // 3]).convert("L"))))
    hit_n = sorted((real / "hit-uav" / "images").glob("1_*.jpg"))
    if hit_n:
        out.append(("real: HIT-UAV (night, UAV)", np.asarray(Image.open(hit_n[len(hit_n) // 2]).convert("L"))))
    return out


def main(argv: list[str] | None = None) -> None:
    """Render the comparison figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--calibration-dir", type=Path, default=Path("data/calibration"))
    ap.add_argument("--real", type=Path, default=Path("../shared/data/real"))
    ap.add_argument("--out", type=Path, default=Path("docs/img/world_vs_real.png"))
    ap.add_argument("--frame", type=int, default=None, help="frame index (default: middle)")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = section(params, "synth", SynthParams)
    panels = []
    for cam in cfg.cameras:
        cal = load_calibration(args.calibration_dir / f"{cam}.yaml")
        results = synthesize_camera(cfg, cal, int(params["seed"]))
        for day in (True, False):
            r = _pick(results, day)
            fi = args.frame if args.frame is not None else r.row["n_frames"] // 2
            raw = r.frames[fi].astype(np.float64)
            # Show each camera as its own display would (its calibration's AGC mode).
            if r.row["units"] == "display8":
                img = r.frames[fi]
            elif cal.agc.mode in ("plateau", "histeq"):
                img = agc_plateau(raw, cal.agc.plateau)
            else:
                img = agc_linear(raw, cal.agc.clip_percent)
            boxes = [a for a in r.annotations if a["frame"] == fi]
            title = (
                f"{cam} {cal.geometry.image_width}x{cal.geometry.image_height}, "
                f"{r.row['time_of_day_h']:.1f} h {r.row['weather']}, {r.row['ambient_c']:.0f} C"
            )
            panels.append((title, img, boxes))
    for title, img in _real_frames(args.real):
        panels.append((title, img, []))
    ncol = 3
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 4.3 * nrow))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img, boxes) in zip(axes.ravel(), panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        for a in boxes:
            c = COLOURS.get(a["label"], "white")
            ax.add_patch(
                patches.Rectangle(
                    (a["x0"] - 0.5, a["y0"] - 0.5),
                    a["x1"] - a["x0"],
                    a["y1"] - a["y0"],
                    fill=False,
                    edgecolor=c,
                    linewidth=0.8,
                )
            )
            ax.text(
                a["x0"], a["y0"] - 1, f"{a['source_label']} {a['distance_m']:.0f}m", color=c, fontsize=5, va="bottom"
            )
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
