"""Print the README's "Current results" table from the metrics files of the last `dvc repro`.

    python scripts/results_table.py            # markdown on stdout; paste it into README.md

Reads metrics/{validate,pretrain,gate}.json and the full records of the fine-tuning and
evaluation steps (reports/finetune/finetune.json, reports/real_eval/details.json), all
outputs of the last run, so the table describes the run dvc.lock records. A missing file
is an error that names it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    "validate": "metrics/validate.json",
    "pretrain": "metrics/pretrain.json",
    "finetune": "reports/finetune/finetune.json",
    "real_eval": "reports/real_eval/details.json",
    "gate": "metrics/gate.json",
}


def load(root: Path) -> dict[str, dict]:
    out = {}
    for name, rel in FILES.items():
        path = root / rel
        if not path.is_file():
            raise SystemExit(f"error: {path} not found; run `dvc repro` first")
        out[name] = json.loads(path.read_text())
    out["real_eval"] = out["real_eval"]["metrics"]
    return out


def table(m: dict[str, dict]) -> str:
    v, p, f, r, g = (m[k] for k in FILES)
    syn = r["sources"]["synthetic"]
    rows = [
        (
            "validation",
            f"{v['expectations'] - v['failed']}/{v['expectations']} expectations pass on {v['tubelets']:,} tubelets",
        ),
        (
            "pretraining",
            f"{p['method']}, {p['epochs']} epochs on {p['n_tubelets']:,} tubelets ({p['n_unlabeled']:,} unlabeled)",
        ),
        (
            "synthetic test split",
            f"accuracy {f['accuracy']:.3f}, macro-F1 {f['macro_f1']:.3f} on {f['n']:,} tubelets; "
            + ", ".join(f"{c} F1 {x['f1']:.2f}" for c, x in sorted(f["per_class"].items())),
        ),
        (
            "synthetic test, by range",
            ", ".join(
                f"{k} m {x['macro_f1']:.2f}"
                for k, x in sorted(syn["by_range_m"].items(), key=lambda kv: float(kv[0].split("-")[0]))
            ),
        ),
        (
            "linear probe: pretrained / random encoder",
            f"{f['linear_probe_pretrained']:.3f} / {f['linear_probe_random']:.3f}",
        ),
        (
            "10% labels"
            + (f", {f['few_label_epochs']} fine-tuning epochs" if "few_label_epochs" in f else "")
            + ", macro-F1 over 5 seeds: pretrained / scratch",
            f"{f['few_label_macro_f1_pretrained']:.3f} / {f['few_label_macro_f1_scratch']:.3f} "
            f"(gain {f['pretraining_gain_few_label']:+.3f}; ranges "
            f"{'overlap' if f['pretraining_ranges_overlap'] else 'apart'})",
        ),
    ]
    for name, s in r["sources"].items():
        if name == "synthetic" or s.get("status") != "scored":
            continue
        rows.append(
            (
                f"real: {name}, {s['scope']}",
                f"person-vs-rest balanced accuracy {s['person_balanced_accuracy']:.3f} "
                f"(SE {s['person_balanced_accuracy_se']:.3f}), AUROC {s['person_auroc']:.3f}, "
                f"{s['n']:,} tubelets ({s['n_person']} persons)",
            )
        )
    rob = ", ".join(f"{k} {x:.3f}" for k, x in sorted(g["robust"].items()))
    rows.append(
        (
            "gate",
            f"{'passed' if g['passed'] else 'refused'}; robust accuracy {rob}; flip rate {g['flip_rate']:.3f}; "
            f"stability slope {g['slope']:.2f}; baseline: "
            + (f"production version {g['baseline']}" if g["baseline"] else "none promoted"),
        )
    )
    lines = ["| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(table(load(ROOT)))


if __name__ == "__main__":
    main()
