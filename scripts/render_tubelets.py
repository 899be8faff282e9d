"""Render prepared tubelets side by side, one row per (source, label) group: synthetic beside real.

    .venv/bin/python scripts/render_tubelets.py --prepared data/prepared --prepared data/heldout/prepared \
        --out docs/img/tubelets_sim_vs_real.png

Each cell is the middle frame of a tubelet (its own 1-99.5 % grey range), titled
with its kind (`source_label`), its apparent size and its units/AGC. Synthetic
rows are split by output: 14-bit (celsius) and 8-bit display, so the display8
tubelets can be compared with the real ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from thermops.data.prepared import load_prepared


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", type=Path, action="append", required=True, help="prepared folder (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-row", type=int, default=12)
    ap.add_argument("--labels", default="person,vehicle,animal,nuisance")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    groups: dict[str, list[tuple]] = {}
    for folder in args.prepared:
        data = load_prepared(folder)
        for i, r in enumerate(data.rows):
            if r["label"] not in args.labels.split(","):
                continue
            kind = r["source"]
            if kind == "synthetic":
                kind += " 8-bit" if r["units"] == "display8" else " 14-bit"
            groups.setdefault(f"{kind}: {r['label']}", []).append((data, i))
    order = sorted(groups, key=lambda g: (args.labels.split(",").index(g.rsplit(": ", 1)[1]), g))
    rng = np.random.default_rng(args.seed)
    n = args.per_row
    fig, axes = plt.subplots(len(order), n, figsize=(n * 0.95, len(order) * 1.45), squeeze=False)
    fig.subplots_adjust(hspace=0.75, wspace=0.1, top=0.97)
    for gi, g in enumerate(order):
        items = groups[g]
        pick = rng.choice(len(items), size=min(n, len(items)), replace=False)
        for j in range(n):
            ax = axes[gi, j]
            ax.axis("off")
            if j < len(pick):
                data, i = items[pick[j]]
                frame = np.asarray(data.tubelets[i][data.tubelets.shape[1] // 2], dtype=np.float64)
                lo, hi = np.percentile(frame, [1, 99.5])
                ax.imshow(frame, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
                r = data.rows[i]
                size = f"{float(r['box_px']):.0f}px" if r["box_px"] else ""
                ax.set_title(f"{r['source_label'][:12]} {size}\n{r['agc'] or r['units']}"[:40], fontsize=4.5)
        axes[gi, 0].text(-4, 16, g, fontsize=6, ha="right", va="center")
    fig.suptitle("tubelets (middle frame): synthetic beside real", fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
