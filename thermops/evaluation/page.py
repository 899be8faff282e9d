"""The real-imagery evaluation report: one self-contained HTML page (PNG figures inlined) plus details.json.

A KFP HTML artifact and a gate report are shown alone, so nothing is linked:
figures are base64 PNGs in the page, tables are plain HTML. Without matplotlib
the page keeps its tables and says the figures were skipped.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from thermops.evaluation.scores import roc_curve
from thermops.io import atomic_dir, write_json

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em}
th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}
.bad{color:#b00020;font-weight:bold}.ok{color:#0a7d28}
img{max-width:100%;border:1px solid #ddd;margin:0.4em 0}
"""


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return '<img alt="figure" src="data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode() + '">'


def _figures(metrics: dict, details: dict, examples: dict, classes: list[str], positive: str, n_examples: int):
    """HTML snippets of the figures: ROC curves, per-range and per-size bars, mistakes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    pos = classes.index(positive)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    for source, (_, _, probs, target) in examples.items():
        if len(target) and (target == pos).any() and (target != pos).any():
            fpr, tpr = roc_curve(probs[:, pos], target == pos)
            auc = metrics["sources"][source][f"{positive}_auroc"]
            ax.plot(fpr, tpr, label=f"{source} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false alarm rate (rest called person)")
    ax.set_ylabel(f"{positive} recall")
    ax.set_title(f"{positive} vs rest, p({positive}) as the score")
    ax.legend(fontsize=7, loc="lower right")
    out.append(_png(fig))
    plt.close(fig)

    for key, title in (("by_range_m", "ground range (m)"), ("by_size_px", "apparent size (longer box side, px)")):
        panels = []
        for source, d in details["sources"].items():
            bins = metrics["sources"].get(source, {}).get(key) if key == "by_range_m" else d.get(key)
            if bins:
                panels.append((source, bins))
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
        for ax, (source, bins) in zip(axes[0], panels):
            names = list(bins)
            x = np.arange(len(names))
            acc = [bins[n]["accuracy"] or 0 for n in names]
            rec = [
                bins[n][f"{positive}_recall"] if bins[n][f"{positive}_recall"] is not None else np.nan for n in names
            ]
            ax.bar(x - 0.2, acc, 0.4, label="4-class accuracy")
            ax.bar(x + 0.2, rec, 0.4, label=f"{positive} recall")
            for xi, n in zip(x, names):
                ax.text(xi, 1.02, f"n={bins[n]['n']}", ha="center", fontsize=6)
            ax.set_xticks(x, names, fontsize=7, rotation=30)
            ax.set_ylim(0, 1.1)
            ax.set_title(f"{source}: by {title}", fontsize=8)
        axes[0][0].legend(fontsize=6, loc="lower left")
        fig.tight_layout()
        out.append(_png(fig))
        plt.close(fig)

    if n_examples:
        rows = []
        for source, (data, idx, probs, target) in examples.items():
            pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=int)
            wrong = np.flatnonzero(pred != target)
            # The most confident mistakes first: they show what the model gets wrong, not borderline cases.
            wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:n_examples] if len(wrong) else wrong
            if len(wrong):
                rows.append((source, data, idx, probs, target, pred, wrong))
        if rows:
            fig, axes = plt.subplots(len(rows), n_examples, figsize=(1.3 * n_examples, 1.55 * len(rows)), squeeze=False)
            for r, (source, data, idx, probs, target, pred, wrong) in enumerate(rows):
                for c in range(n_examples):
                    ax = axes[r][c]
                    ax.axis("off")
                    if c < len(wrong):
                        k = wrong[c]
                        tub = np.asarray(data.tubelets[idx[k]], dtype=np.float64)
                        frame = tub[len(tub) // 2]
                        lo, hi = np.percentile(frame, [1, 99.5])
                        ax.imshow(frame, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
                        ax.set_title(
                            f"{classes[target[k]][:6]}>{classes[pred[k]][:6]} {probs[k, pred[k]]:.2f}", fontsize=6
                        )
                axes[r][0].text(-4, 16, source, fontsize=7, ha="right", va="center")
            fig.suptitle("most confident mistakes: true>predicted p (middle frame)", fontsize=8)
            out.append(_png(fig))
            plt.close(fig)
    return out


def write_report(report_dir: Path, metrics: dict, details: dict, examples: dict, classes: list[str], cfg, card) -> None:
    """Write `report_dir`/index.html (self-contained) and details.json, atomically."""
    pos = cfg.positive
    others = [c for c in classes if c != pos]  # the positive's recall has its own column
    lines = [
        "<!doctype html><html><head><meta charset='utf-8'><title>thermops real-imagery evaluation</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Real-imagery evaluation</h1>",
        f"<p>Model trained on: <b>{html.escape(', '.join(metrics['trained_on']) or 'unknown')}</b>. "
        f"Held-out cameras (never trained on): {html.escape(', '.join(cfg.heldout) or 'none')}; "
        f"scored on their test images: {html.escape(', '.join(cfg.by_image) or 'none')}. "
        f"The {pos} alarm is the argmax; AUROC ranks p({pos}). "
        "SE: binomial standard error of the balanced accuracy (tubelets of one track or image are "
        "not independent, so it is a lower bound).</p>",
        "<table><tr><th class='l'>source</th><th class='l'>scope</th><th>tubelets</th>"
        f"<th>{pos}s</th><th>{pos}-vs-rest balanced acc. &plusmn; SE</th><th>AUROC</th>"
        f"<th>{pos} recall</th><th>specificity</th><th>4-class acc.</th><th>macro-F1</th>"
        + "".join(f"<th>recall {html.escape(c)}</th>" for c in others)
        + "</tr>",
    ]
    for source, v in metrics["sources"].items():
        if v["status"] != "scored":
            reason = details["sources"].get(source, {}).get("reason", "")
            lines.append(
                f"<tr><td class='l'>{html.escape(source)}</td><td class='l' colspan='{9 + len(others)}'>"
                f"missing: {html.escape(reason)}</td></tr>"
            )
            continue
        ba = v[f"{pos}_balanced_accuracy"]
        cls = "" if ba is None else (" class='ok'" if ba >= 0.95 else " class='bad'")
        lines.append(
            f"<tr><td class='l'>{html.escape(source)}</td><td class='l'>{html.escape(v['scope'])}</td>"
            f"<td>{v['n']}</td><td>{v[f'n_{pos}']}</td>"
            f"<td{cls}>{_f(ba)}&nbsp;&plusmn;&nbsp;{_f(v[f'{pos}_balanced_accuracy_se'])}</td>"
            f"<td>{_f(v[f'{pos}_auroc'])}</td><td>{_f(v[f'{pos}_recall'])}</td>"
            f"<td>{_f(v[f'{pos}_specificity'])}</td><td>{_f(v['accuracy'])}</td><td>{_f(v['macro_f1'])}</td>"
            + "".join(f"<td>{_f(v['recall'][c])}</td>" for c in others)
            + "</tr>"
        )
    lines.append("</table>")
    syn = metrics["sources"].get("synthetic", {}).get("by_range_m")
    if syn:
        lines.append(
            "<h2>Synthetic test split by ground range</h2><table><tr><th class='l'>range (m)</th>"
            f"<th>n</th><th>4-class acc.</th><th>macro-F1</th><th>{pos} recall</th></tr>"
        )
        for b, v in syn.items():
            lines.append(
                f"<tr><td class='l'>{b}</td><td>{v['n']}</td><td>{_f(v['accuracy'])}</td>"
                f"<td>{_f(v['macro_f1'])}</td><td>{_f(v[f'{pos}_recall'])}</td></tr>"
            )
        lines.append("</table>")
    lines.append("<h2>Figures</h2>")
    try:
        lines += _figures(metrics, details, examples, classes, pos, cfg.examples)
    except ImportError:
        lines.append("<p>(matplotlib is not installed: figures skipped)</p>")
    lines.append("</body></html>")
    with atomic_dir(report_dir) as tmp:
        (tmp / "index.html").write_text("\n".join(lines))
        write_json(tmp / "details.json", details)
