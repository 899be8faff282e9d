"""Render frames of the embedded world (every camera, its 8-bit outputs, boxes) beside real LWIR frames.

    .venv/bin/python scripts/render_world.py --params params.yaml \
        --calibration-dir data/calibration --real ../shared/data/real --out docs/img/world_vs_real.png

Synthesizes in memory (nothing under data/ is written): per camera the first
training clips, each shown as written (8-bit clips through the AGC the world
drew for them: linear, plateau, gamma, clipped, maybe black-hot; 14-bit counts
through the camera's own AGC from its calibration). The real frames are 8-bit
AGC output already; thermal-dogs-people through its Spectra palette inversion.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from thermops.camera.calibration import load_calibration
from thermops.camera.sensor import agc_linear, agc_plateau
from thermops.config import load_params, section
from thermops.world.synth import SynthParams, single_split, synthesize_camera

COLOURS = {"person": "#ff3b30", "vehicle": "#34c759", "animal": "#ffcc00", "nuisance": "#0a84ff"}


def _real_frames(real: Path) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    from thermops.data.importers.images import read_image

    out = []
    tno = sorted((real / "tno-fel-sequences").glob("*/*.bmp"))
    if tno:
        f = tno[len(tno) // 2]
        out.append((f"real: TNO {f.parent.name} (night, fixed camera)", np.asarray(Image.open(f).convert("L"))))
    hit_n = sorted((real / "hit-uav" / "images").glob("1_*.jpg"))
    if hit_n:
        out.append(("real: HIT-UAV (night, UAV)", np.asarray(Image.open(hit_n[len(hit_n) // 2]).convert("L"))))
    dogs = sorted((real / "thermal-dogs-people" / "train" / "images").glob("*.jpg"))
    if dogs:
        out.append(("real: thermal-dogs-people (Spectra -> grey)", read_image(dogs[len(dogs) // 3], "spectra")[0]))
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
    ap.add_argument("--clips", type=int, default=2, help="training clips shown per camera")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = section(params, "synth", SynthParams)
    cfg = single_split(cfg, args.clips, cfg.frames["train"])
    panels = []
    for cam in params["cameras"]:
        cal = load_calibration(args.calibration_dir / f"{cam}.yaml")
        for r in synthesize_camera(cfg, cal, int(params["seed"])):
            fi = r.row["n_frames"] // 2
            raw = r.frames[fi].astype(np.float64)
            if r.row["units"] == "display8":
                img, shown = r.frames[fi], r.row["agc"]
            elif cal.agc.mode in ("plateau", "histeq"):
                img, shown = agc_plateau(raw, cal.agc.plateau), "counts, shown by plateau AGC"
            else:
                img, shown = agc_linear(raw, cal.agc.clip_percent), "counts, shown by linear AGC"
            boxes = [a for a in r.annotations if a["frame"] == fi]
            title = f"{cam} {r.row['time_of_day_h']:.1f} h {r.row['weather']}: {shown}"
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
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
