"""How much a classifier with geometry features leans on each feature, on synthetic and real rows.

    python scripts/experiments/geometry_ablation.py --model models/finetuned \
        --data data/prepared --heldout data/heldout/prepared

For a model trained with `input.geometry`, scores the synthetic test split and every held-out
source (`source` of the held-out manifest) with each row's own features, then with edits:
`unknown` (metric_scale 0, known 0: a camera without geometry, as every real set is) and
`pixel_scale_median` (pixel_scale set to the median of the train rows, so that the window's
size in camera pixels says nothing). Prints person-vs-rest AUROC and balanced accuracy and the
4-class accuracy of each, and the train rows' pixel_scale per class beside each source's
persons'. A feature whose edit leaves a source's figures where they were is not what that
source's figures depend on. Nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1].parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from thermops.data.prepared import load_prepared  # noqa: E402
from thermops.evaluation.scores import score  # noqa: E402
from thermops.learn.datasets import model_inputs, row_geometry  # noqa: E402
from thermops.learn.engine import predict  # noqa: E402
from thermops.model.card import input_spec_from_card, load_model_dir  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/finetuned"))
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--heldout", type=Path, default=Path("data/heldout/prepared"))
    ap.add_argument("--positive", default="person")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, card = load_model_dir(args.model)
    spec = input_spec_from_card(card)
    if not spec.geometry:
        raise SystemExit(f"{args.model}: the classifier takes no geometry features (input.geometry is empty)")
    classes = list(card["classes"])
    pos_i = classes.index(args.positive)
    syn = load_prepared(args.data)
    train = syn.indices("train")
    train_geo = row_geometry(syn, train, spec)
    train_y = np.array([syn.rows[i]["label"] for i in train])

    def edited(geo: torch.Tensor, edit: str) -> torch.Tensor:
        geo = geo.clone()
        if edit == "unknown":
            for f in ("metric_scale", "known"):
                if f in spec.geometry:
                    geo[:, spec.geometry.index(f)] = 0.0
        if edit == "pixel_scale_median" and "pixel_scale" in spec.geometry:
            i = spec.geometry.index("pixel_scale")
            geo[:, i] = float(train_geo[:, i].median())
        return geo

    def figures(x: torch.Tensor, geo: torch.Tensor, target: np.ndarray) -> str:
        logits = predict(model, x, torch.device("cpu"), geo=geo)
        s = score(torch.softmax(logits.float(), 1).numpy(), target, classes, args.positive)
        b = s[f"{args.positive}_vs_rest"]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        return f"AUROC {fmt(b['auroc'])}, balanced accuracy {fmt(b['balanced_accuracy'])}, accuracy {s['accuracy']:.3f}"

    if "pixel_scale" in spec.geometry:
        i = spec.geometry.index("pixel_scale")
        print("train rows' pixel_scale (log camera px per input px), 10 / 50 / 90%:")
        for c in classes:
            print(f"  {c}: {np.round(np.percentile(train_geo[train_y == c, i].numpy(), [10, 50, 90]), 2).tolist()}")
    sets = [("synthetic test", syn, syn.indices("test"))]
    if args.heldout.is_dir():
        real = load_prepared(args.heldout)
        for s in sorted({r["source"] for r in real.rows}):
            sets.append((s, real, np.array([i for i, r in enumerate(real.rows) if r["source"] == s])))
    for name, data, idx in sets:
        x, geo = model_inputs(data, idx, spec), row_geometry(data, idx, spec)
        target = data.labels(classes)[idx]
        line = f"{name} (n {len(idx)})"
        persons = target == pos_i
        if "pixel_scale" in spec.geometry and persons.any():
            g = geo[:, spec.geometry.index("pixel_scale")].numpy()[persons]
            line += f", {args.positive} pixel_scale 10/50/90%: {np.round(np.percentile(g, [10, 50, 90]), 2).tolist()}"
        print(line)
        for edit in ("own", "unknown", "pixel_scale_median"):
            print(f"  {edit:>18}: {figures(x, edited(geo, edit), target)}")


if __name__ == "__main__":
    main()
