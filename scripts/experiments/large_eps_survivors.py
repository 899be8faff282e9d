"""Why do tubelets keep their class at the gate's large eps? A look at each survivor.

    python scripts/experiments/large_eps_survivors.py --params params.yaml \
        --model models/finetuned --data data/prepared --threat l2 --eps 30 60 120 1000

Attacks the gate's subset (`gate.attack_subset` test tubelets, the gate's seed) with the
threat model's bounded attacks at each --eps (the gate's settings), then, for every tubelet
still correct at the first eps, prints:
- its label, camera, window size and geometry features;
- the largest --eps at which it still keeps its class;
- how the model classifies every attacked tubelet's pixels given this row's geometry (a
  row no pixels move is decided by its geometry features), and the distance of the nearest
  such tubelet of another class (`thermops.robustness.sanity.nearest_known_adversarial`);
- for a classifier with geometry features: PGD at the first eps with the row's geometry set to
  unknown (`metric_scale` 0, `known` 0), whether the features hold the class.
Nothing is written; the gate's own record of the reach is `large_eps_reach` in reports/gate/gate.json.
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

from thermops.config import load_params, section, seed_of  # noqa: E402
from thermops.data.prepared import load_prepared  # noqa: E402
from thermops.learn.datasets import row_geometry  # noqa: E402
from thermops.model.card import input_spec_from_card, load_model_dir  # noqa: E402
from thermops.model.preprocess import geometry_features, normalize, resample  # noqa: E402
from thermops.robustness import attacks as A  # noqa: E402
from thermops.robustness.evaluate import _attack_kwargs, subset  # noqa: E402
from thermops.robustness.params import GateParams  # noqa: E402
from thermops.robustness.sanity import nearest_known_adversarial  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--model", type=Path, default=Path("models/finetuned"))
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--threat", choices=A.NORMS, default="l2")
    ap.add_argument("--eps", type=float, nargs="+", help="default: the threat model's large eps")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    params = load_params(args.params)
    p, seed = section(params, "gate", GateParams), seed_of(params)
    tm = p.threat_models[args.threat]
    eps_list = args.eps or [tm.large_eps]
    model, card = load_model_dir(args.model)
    model.eval()
    spec = input_spec_from_card(card)
    classes = list(card["classes"])
    data = load_prepared(args.data)
    idx = data.indices(p.split)
    ia = subset(len(idx), p.attack_subset, seed)
    rows = [data.rows[int(i)] for i in idx[ia]]
    raw = resample(np.asarray(data.tubelets[idx[ia]], dtype=np.float32), spec.frames, spec.size)
    x = normalize(raw, [r["units"] for r in rows], spec)
    y = torch.as_tensor(data.labels(classes)[idx[ia]], dtype=torch.long)
    geo = row_geometry(data, idx[ia], spec)
    attacks = [n for n in tm.attacks if n != "cw_l2"]

    def robust(eps: float, xs, ys, gs) -> torch.Tensor:
        ok = A.predict(model, xs, gs) == ys
        for name in attacks:
            adv = A.build_attack(args.threat, name, model, eps, **_attack_kwargs(name, p, seed))(xs, ys, gs)
            ok &= A.predict(model, adv, gs) == ys
        return ok

    held = {e: robust(e, x, y, geo) for e in eps_list}
    clean = A.predict(model, x, geo) == y
    first = eps_list[0]
    survivors = held[first].nonzero().flatten()
    print(
        f"{args.threat}, attacks {attacks}: clean {int(clean.sum())} of {len(x)}; still correct at "
        + ", ".join(f"eps {e:g}: {int(m.sum())}" for e, m in held.items())
    )
    flat = x.reshape(len(x), -1)
    dist = flat[:, None] - flat[None]
    pair = dist.norm(dim=2) if args.threat == "l2" else dist.abs().amax(2)
    print(f"distance between two attacked tubelets: median {float(pair[pair > 0].median()):.3g}")
    radius = nearest_known_adversarial(model, x, y, survivors, args.threat, geo)
    for k, i in enumerate(survivors.tolist()):
        r, g = rows[i], A.rows_of(geo, slice(i, i + 1))
        kept = [e for e in eps_list if bool(held[e][i])]
        swap = A.predict(model, x, None if g is None else g.expand(len(x), -1))
        print(
            f"row {i}: {classes[int(y[i])]}, camera {r['camera_id']}, window {r['window_px']} px"
            + (f" / {r.get('window_m')} m, geometry {[round(v, 3) for v in g[0].tolist()]}" if g is not None else "")
        )
        print(f"  keeps its class up to eps {max(kept):g}")
        print(
            "  other tubelets' pixels with its geometry: "
            + ", ".join(f"{c} {int((swap == j).sum())}" for j, c in enumerate(classes))
            + f"; nearest of another class at {float(radius[k]):.4g}"
        )
        if g is not None and "known" in spec.geometry:
            wm = r.get("window_m")
            unknown = torch.as_tensor([geometry_features(None, float(r["window_px"]), spec)], dtype=torch.float32)
            held_u = bool(robust(first, x[i : i + 1], y[i : i + 1], unknown)[0])
            print(f"  geometry unknown (was {wm} m): keeps its class at eps {first:g}: {held_u}")


if __name__ == "__main__":
    main()
