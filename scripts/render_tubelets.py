"""Render a grid of prepared tubelets (first and last frame) per class to a PNG.

python scripts/render_tubelets.py data/prepared docs/img/tubelets.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from thermops.data.prepared import load_prepared


def main(prepared: Path, out: Path, per_class: int = 8) -> None:
    data = load_prepared(prepared)
    labels = sorted({r["label"] for r in data.rows})
    fig, axes = plt.subplots(len(labels), per_class * 2, figsize=(per_class * 2 * 0.9, len(labels) * 1.1))
    rng = np.random.default_rng(0)
    for li, label in enumerate(labels):
        idx = [i for i, r in enumerate(data.rows) if r["label"] == label]
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False)
        for j in range(per_class):
            for k, f in enumerate((0, -1)):
                ax = axes[li, 2 * j + k]
                ax.axis("off")
                if j < len(pick):
                    tub = data.tubelets[pick[j]]
                    ax.imshow(tub[f], cmap="inferno", vmin=np.percentile(tub, 1), vmax=np.percentile(tub, 99.5))
                    if k == 0:
                        r = data.rows[pick[j]]
                        d = f"{float(r['distance_m']):.0f}m" if r["distance_m"] else ""
                        ax.set_title(f"{r['kind'][:2]} {d}", fontsize=6)
        axes[li, 0].text(-40, 16, label, fontsize=8, ha="right", va="center")
    fig.suptitle("prepared tubelets: first | last frame", fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
