"""The gate report: one self-contained HTML page (images inlined) plus the PNGs, and captum maps.

`index.html` carries its figures as `data:` URIs and loads nothing else, so it shows
everything when opened alone: as a Kubeflow HTML artifact, from an e-mail, offline at a
site. The PNGs are written beside it for `dvc plots` and other tools.

Figures: accuracy vs eps per threat model (every attack, the worst case and the
random-noise baseline), corruption error vs severity, perspective stability
(r vs ||grad tau|| with the fitted slope, accuracy and flip rate vs corner
displacement, radiometric drift), adversarial frames beside clean ones, and
saliency / Grad-CAM / occlusion maps (captum) on clean and attacked tubelets.
All frames shown are the middle frame of the tubelet. A classifier that takes geometry
features gets each shown row's own features (`geo`), unchanged, in every forward the maps
make: the maps attribute the decision to pixels, with the window's geometry held fixed.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thermops.robustness.decision import PER_CAMERA

NOT_CURVES = ("more_steps", "subset_n", "large_eps_reach")  # entries of robust_accuracy[threat] that are not {eps: acc}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_robust_accuracy(metrics: dict, path: Path, celsius_scale_k: float) -> None:
    """Accuracy vs eps, one panel per threat model."""
    plt = _plt()
    ra = metrics["robust_accuracy"]
    fig, axes = plt.subplots(1, len(ra), figsize=(5.5 * len(ra), 4), squeeze=False)
    for ax, (threat, tm) in zip(axes[0], ra.items()):
        for name, curve in tm.items():
            if not isinstance(curve, dict) or name in NOT_CURVES:
                continue
            eps = sorted(float(e) for e in curve)
            vals = [curve[e] if e in curve else curve[str(e)] for e in eps]
            style = {"worst": dict(color="k", lw=2.5), "random_noise": dict(ls="--", color="grey")}.get(name, {})
            n_sub = tm.get("subset_n", {}).get(name)
            ax.plot(eps, vals, marker="o", label=name + (f" (n={n_sub})" if n_sub else ""), **style)
        ax.axhline(metrics["clean_accuracy"], color="green", ls=":", label="clean")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        unit = (
            f"model units; 1 unit = {celsius_scale_k} K per pixel"
            if threat == "linf"
            else f"model units, L2 per tubelet; x {celsius_scale_k} K"
        )
        ax.set_xlabel(f"eps ({unit})")
        ax.set_ylabel("robust accuracy")
        ax.set_title(f"{threat} (n={tm['n']})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_corruptions(metrics: dict, path: Path) -> None:
    """Error vs severity for every corruption."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, errs in metrics["corruption_errors"].items():
        ax.plot(range(1, 6), errs, marker="o", label=f"{name} (CE {metrics['corruption_ce'][name]:.2f})")
    ax.axhline(metrics["corruption_clean_error"], color="k", ls=":", label="clean error")
    ax.set_xlabel("severity")
    ax.set_ylabel("top-1 error")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"thermal corruptions (n={metrics['corruption_n']}), mean CE {metrics['mean_ce']:.3f}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_stability(metrics: dict, path: Path) -> None:
    """r vs ||grad tau|| with the fitted slope; accuracy/flip vs corner px; radiometric drift."""
    plt = _plt()
    rows = metrics["perspective"]["sweep"]
    kinds = sorted({r["kind"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    for k in kinds:
        rr = [r for r in rows if r["kind"] == k]
        ax.scatter([r["grad_tau"] for r in rr], [r["r"] for r in rr], label=k)
    gmax = max((r["grad_tau"] for r in rows), default=1.0)
    slope = metrics["stability_slope"]
    ax.plot([0, gmax], [0, slope * gmax], "k--", label=f"slope {slope:.3f}")
    ax.set_xlabel("||grad tau||_inf")
    ax.set_ylabel("r = ||phi(L x) - phi(x)|| / ||phi(x)||")
    ax.set_title("representation stability")
    ax.legend(fontsize=7)
    ax = axes[1]
    for i, k in enumerate(kinds):
        rr = sorted((r for r in rows if r["kind"] == k), key=lambda r: r["px"])
        ax.plot([r["px"] for r in rr], [r["accuracy"] for r in rr], marker="o", color=f"C{i}", label=f"{k} acc")
        ax.plot(
            [r["px"] for r in rr], [r["flip_rate"] for r in rr], ls="--", marker="x", color=f"C{i}", label=f"{k} flip"
        )
    ax.set_xlabel("corner displacement (model-input px, signed)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"homography sweep (n={metrics['perspective']['n']})")
    ax.legend(fontsize=6, ncol=2)
    ax = axes[2]
    radio = metrics["radiometric"]["sweep"]
    for i, k in enumerate(("gain", "offset")):
        rr = sorted((r for r in radio if r["kind"] == k), key=lambda r: r["value"])
        ax.plot([r["value"] for r in rr], [r["accuracy"] for r in rr], marker="o", color=f"C{i}", label=f"{k} acc")
        ax.plot(
            [r["value"] for r in rr],
            [r["flip_rate"] for r in rr],
            ls="--",
            marker="x",
            color=f"C{i}",
            label=f"{k} flip",
        )
    ax.set_xlabel("gain change (relative) / offset gradient (K corner to corner)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("radiometric drift")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_adversarial(
    x: torch.Tensor,
    adv: torch.Tensor,
    y: torch.Tensor,
    pred_adv: torch.Tensor,
    classes: list[str],
    path: Path,
    celsius_scale_k: float,
    title: str,
) -> None:
    """Clean | adversarial | difference (kelvin for celsius tubelets), middle frame, one row per example."""
    plt = _plt()
    n = len(x)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    t = x.shape[2] // 2
    for i in range(n):
        c, a = x[i, 0, t].numpy(), adv[i, 0, t].numpy()
        vmin, vmax = float(c.min()), float(c.max())
        axes[i, 0].imshow(c, cmap="inferno", vmin=vmin, vmax=vmax)
        axes[i, 0].set_title(f"clean, label {classes[int(y[i])]}", fontsize=8)
        axes[i, 1].imshow(a, cmap="inferno", vmin=vmin, vmax=vmax)
        axes[i, 1].set_title(f"adversarial, predicted {classes[int(pred_adv[i])]}", fontsize=8)
        d = (a - c) * celsius_scale_k
        m = max(abs(float(d.min())), abs(float(d.max())), 1e-6)
        im = axes[i, 2].imshow(d, cmap="coolwarm", vmin=-m, vmax=m)
        axes[i, 2].set_title("difference (K)", fontsize=8)
        fig.colorbar(im, ax=axes[i, 2], fraction=0.046)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def attributions(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, window: list[int], geo: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Saliency, Grad-CAM (last encoder stage, upsampled) and occlusion maps, each (N, T, H, W).

    `geo`: the rows' (N, G) geometry features for a classifier that takes them, passed to every
    forward as captum's `additional_forward_args` (captum repeats them with the occlusion batches,
    row for row); attributions are over the pixels only.
    """
    from captum.attr import LayerAttribution, LayerGradCam, Occlusion, Saliency

    model.eval()
    x = x.detach().clone()
    kw = {} if geo is None else {"additional_forward_args": (geo.detach(),)}
    sal = Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=True, **kw)[:, 0]
    layer = model.encoder.stages[-1]
    cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True, **kw)
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="trilinear")[:, 0]
    win = (1, *[min(w, s) for w, s in zip(window, x.shape[2:])])
    occ = Occlusion(model).attribute(
        x, target=target, sliding_window_shapes=win, strides=win, baselines=0.0, perturbations_per_eval=64, **kw
    )[:, 0]
    return {"saliency": sal.detach(), "grad_cam": cam.detach(), "occlusion": occ.detach()}


def plot_attributions(
    model: nn.Module,
    x: torch.Tensor,
    adv: torch.Tensor,
    y: torch.Tensor,
    path: Path,
    window: list[int],
    geo: torch.Tensor | None = None,
) -> None:
    """Rows: examples, clean then attacked; columns: input, saliency, Grad-CAM, occlusion (target = true class).
    `geo`: the examples' geometry features (clean and attacked share them), or None."""
    plt = _plt()
    maps_c = attributions(model, x, y, window, geo)
    maps_a = attributions(model, adv, y, window, geo)
    n = len(x)
    t = x.shape[2] // 2
    fig, axes = plt.subplots(2 * n, 4, figsize=(10, 5 * n), squeeze=False)
    for i in range(n):
        for j, (tag, xx, maps) in enumerate((("clean", x, maps_c), ("attacked", adv, maps_a))):
            row = axes[2 * i + j]
            row[0].imshow(xx[i, 0, t].numpy(), cmap="inferno")
            row[0].set_title(f"{tag} #{i}", fontsize=8)
            for k, name in enumerate(("saliency", "grad_cam", "occlusion")):
                row[k + 1].imshow(maps[name][i, t].numpy(), cmap="viridis")
                row[k + 1].set_title(name, fontsize=8)
            for ax in row:
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)

    def td(v: Any) -> str:
        return "<td class='fail'>FAIL</td>" if v == "FAIL" else f"<td>{cell(v)}</td>"

    body = "".join("<tr>" + "".join(td(v) for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _who(title: str, info: dict | None) -> str:
    """One line naming a model: production version and tag, git revision, data hash, figure source."""
    if not info:
        return html.escape(f"{title}: unknown")
    if "version" in info and info.get("version") is None:
        return html.escape(f"{title}: none. {info.get('note', '')}".strip())
    data = info.get("data") or {}
    parts = [f"{title}:"]
    if info.get("version") is not None:
        parts.append(f"production version {info['version']} ({info.get('tag')}),")
    parts.append(f"git {info.get('git_revision')}")
    if isinstance(data, dict) and data.get("prepared_hash"):
        parts.append(f", data {str(data['prepared_hash'])[:12]}")
    if info.get("metrics_source"):
        parts.append(f", {info['metrics_source']}")
    return html.escape(" ".join(parts).replace(" ,", ","))


def data_uri(path: Path) -> str:
    """A file as a `data:` URI (PNG, SVG, JPEG, GIF), so a page needs nothing beside it."""
    import base64
    import mimetypes

    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def per_camera_rows(gate: dict) -> list[list[Any]]:
    """Rows of the per-camera table: camera, n, candidate, production (n), limit, result."""
    by_cam = {c["camera"]: c for c in gate["checks"] if c.get("camera") is not None}
    no_base = gate.get("baseline", {}).get("version") is None
    note = next((c for c in gate["checks"] if c["name"] == PER_CAMERA), None)
    rows = []
    for cam, fig in sorted(gate.get("per_camera", {}).items()):
        c = by_cam.get(cam)
        if c is None:
            result = "no production model" if no_base else ("not compared" if note else "-")
            rows.append([cam, fig["n"], fig["accuracy"], "-", "-", result])
            continue
        prod = "-" if c.get("blessed_value") is None else f"{c['blessed_value']:.3f} (n {c['blessed_n']})"
        if c.get("skipped"):
            result = "skipped: " + c["text"].split("not compared, ", 1)[-1]
        else:
            result = "pass" if c["passed"] else "FAIL"
        rows.append([cam, fig["n"], fig["accuracy"], prod, "-" if c["limit"] is None else c["limit"], result])
    return rows


def write_html(out: Path, gate: dict, images: list[tuple[str, str]]) -> None:
    """index.html: decision, reasons, every check, tables of figures, the PNGs inlined (self-contained)."""
    status = "PASSED" if gate["passed"] else "FAILED"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>thermops gate report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px}.ok{color:#080}.fail{color:#b00}</style></head><body>",
        f"<h1>Gate: <span class='{'ok' if gate['passed'] else 'fail'}'>{status}</span></h1>",
        "<p>" + _who("Model", gate.get("model")) + "<br>" + _who("Baseline", gate.get("baseline")) + "</p>",
        f"<p>Units: {html.escape(gate['units_note'])}</p>",
    ]
    if gate["reasons"]:
        parts.append(
            "<h2>Reasons</h2><ul>"
            + "".join(f"<li class='fail'>{html.escape(r)}</li>" for r in gate["reasons"])
            + "</ul>"
        )
    note = next((c for c in gate["checks"] if c["name"] == PER_CAMERA), None)
    parts.append(
        "<h2>Clean accuracy per camera</h2><p>"
        + html.escape(
            "No camera may lose more than the overall check allows (accuracy_tol + z standard errors, "
            "on each camera's own n) against the production model; cameras with too few test tubelets "
            "are skipped. " + (note["text"] if note else "")
        ).strip()
        + "</p>"
        + _table(per_camera_rows(gate), ["camera", "n", "candidate", "production", "limit", "result"])
    )
    parts.append(
        "<h2>Every check</h2>"
        + _table(
            [
                [
                    ("skip" if c.get("skipped") else "ok" if c["passed"] else "FAIL"),
                    c["name"],
                    c["kind"],
                    c["value"],
                    c["limit"],
                    c["text"],
                ]
                for c in gate["checks"]
            ],
            ["", "check", "kind", "value", "limit", "detail"],
        )
    )
    ra_rows = []
    for threat, tm in gate["robust_accuracy"].items():
        for name, curve in tm.items():
            if isinstance(curve, dict) and name not in NOT_CURVES:
                ra_rows.append(
                    [threat, name]
                    + [f"{float(e):g}: {v:.3f}" for e, v in sorted(curve.items(), key=lambda kv: float(kv[0]))]
                )
    parts.append(
        f"<h2>Robust accuracy (clean {gate['clean_accuracy']:.3f})</h2>"
        + _table(ra_rows, ["threat", "attack", "eps: accuracy ..."])
    )
    parts.append(
        "<h2>Corruptions</h2><p>"
        + html.escape(gate["mean_ce_note"])
        + "</p>"
        + _table(
            [[c, gate["corruption_ce"][c]] + list(errs) for c, errs in gate["corruption_errors"].items()],
            ["corruption", "CE", "err s1", "s2", "s3", "s4", "s5"],
        )
    )
    env = gate["envelope"]
    parts.append(
        "<h2>Validated envelope</h2>"
        + _table(
            [[f"{part}.{k}", v] for part in ("geometric", "radiometric") for k, v in env[part].items()],
            ["key", "value"],
        )
    )
    wc = gate["perspective"]["worst_case"]
    parts.append(
        f"<p>Worst-case homography (budget {wc['budget_px']} px per corner coordinate, {wc['steps']} steps, n={wc['n']}): "
        f"accuracy {wc['accuracy']:.3f} (clean {wc['clean_accuracy']:.3f}), flip rate {wc['flip_rate']:.3f}.</p>"
    )
    for title, name in images:
        parts.append(
            f"<h2>{html.escape(title)}</h2><img src='{data_uri(out / name)}' alt='{html.escape(name)}' "
            "style='max-width:100%'>"
        )
    parts.append("</body></html>")
    (out / "index.html").write_text("\n".join(parts))
