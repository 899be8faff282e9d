"""Views people can read, online or not: `dvc plots show` with the project's offline template, and
the HTML views the Kubeflow tasks write (report folders with their images inlined, the finetune
view with its curves and confusion matrix). Pages are opened in headless Chromium with the
network off (tests/browser_helpers.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser_helpers import inspect_page, needs_chromium

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, color: tuple[int, int, int]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0.5, 0.2], color=[c / 255 for c in color])
    fig.savefig(path, dpi=50)
    plt.close(fig)
    return path


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> Path:
    """A DVC repository with the project's plots template and a curve + confusion plot, `dvc plots show`n."""
    repo = tmp_path_factory.mktemp("plots") / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    config = (ROOT / ".dvc" / "config").read_text()
    template = re.search(r"html_template = (\S+)", config).group(1)
    assert (ROOT / ".dvc" / template).resolve() == (ROOT / "vendor" / "web" / "dvc-plots.html").resolve()
    subprocess.run(
        [sys.executable, "-m", "dvc", "config", "plots.html_template", str(ROOT / ".dvc" / template)],
        cwd=repo,
        check=True,
    )
    (repo / "curve.csv").write_text("epoch,val_macro_f1\n1,0.41\n2,0.55\n3,0.62\n")
    rows = ["actual,predicted"] + ["person,person"] * 3 + ["person,animal", "animal,animal", "animal,animal"]
    (repo / "confusion.csv").write_text("\n".join(rows) + "\n")
    (repo / "dvc.yaml").write_text(
        "plots:\n  - curve.csv:\n      x: epoch\n      y: val_macro_f1\n"
        "  - confusion.csv:\n      template: confusion\n      x: actual\n      y: predicted\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", "plots"], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return repo


def test_dvc_plots_use_the_offline_template(plots_repo):
    page = (plots_repo / "plots" / "index.html").read_text()
    assert "cdn.jsdelivr.net" not in page and not re.search(r"<script[^>]+src=", page)
    assert "vega-embed" in page and page.count("vegaEmbed(") == 2


@needs_chromium
def test_dvc_plots_render_with_the_network_off(plots_repo):
    seen = inspect_page(plots_repo / "plots" / "index.html", settle_ms=4000)
    assert {"vega", "vegaLite", "vegaEmbed"} <= set(seen["globals"])
    assert seen["vega_views"] == 2, seen


# ------------------------------------------------------------------------------ KFP task views


def test_a_report_folder_view_inlines_its_images_and_shows_the_confusion_matrix(tmp_path):
    from pipeline.task import _confusion_view, _report_html

    report = tmp_path / "reports" / "finetune"
    report.mkdir(parents=True)
    curves = _png(report / "curves.png", (200, 30, 30))
    _png(report / "confusion.png", (30, 30, 200))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "confusion.csv").write_text("actual,predicted\nperson,person\nperson,animal\n")
    spec = {"outputs": [{"type": "ClassificationMetrics", "path": "metrics/confusion.csv"}]}
    extra = _confusion_view(tmp_path, spec, {"classes": ["person", "vehicle", "animal", "nuisance"]})
    page = _report_html(report, extra)
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    import base64

    assert base64.b64decode(srcs[1].split(",", 1)[1]) == curves.read_bytes()  # sorted: confusion, curves
    # the matrix in classes order, all four classes, counts where they belong
    assert "<tr><th>person</th><td>1</td><td>0</td><td>1</td><td>0</td></tr>" in page
    assert page.count("<tr><th>") == 5  # the header row and one row per class


def test_a_report_with_its_own_index_is_that_page_with_images_inlined(tmp_path):
    from pipeline.task import _report_html

    _png(tmp_path / "plot.png", (0, 120, 0))
    (tmp_path / "index.html").write_text("<html><body><h1>r</h1><img src='plot.png'><img src='data:x'></body></html>")
    page = _report_html(tmp_path)
    assert "src='data:image/png;base64," in page and "src='data:x'" in page and "plot.png'" not in page


@needs_chromium
def test_the_finetune_view_renders_alone(tmp_path):
    from pipeline.task import _confusion_table, _report_html

    report = tmp_path / "finetune"
    report.mkdir()
    _png(report / "curves.png", (10, 10, 10))
    page = _report_html(report, _confusion_table(["a", "b"], [[3, 1], [0, 4]]))
    alone = tmp_path / "elsewhere" / "view.html"
    alone.parent.mkdir()
    alone.write_text(page)
    shutil.rmtree(report)  # nothing beside the page
    seen = inspect_page(alone)
    assert len(seen["images"]) == 1 and seen["images"][0]["ok"]


def test_metrics_logged_to_kfp_are_the_decision_figures(tmp_path):
    """The Metrics artifact logs the numbers of the metrics file, nothing else (no timings)."""
    from pipeline.task import _export

    class Art:
        def __init__(self, path: Path):
            self.path = str(path)
            self.metadata: dict = {}
            self.logged: dict = {}

        def log_metric(self, k, v):
            self.logged[k] = v

    src = tmp_path / "gate.json"
    figures = {"passed": True, "failed_checks": 0, "clean_accuracy": 0.7, "robust": {"linf@0.01": 0.4}, "baseline": 2}
    src.write_text(json.dumps(figures))
    art = Art(tmp_path / "out" / "gate.json")
    _export(art, {"role": "data", "type": "Metrics"}, src)
    assert art.logged == {
        "passed": 1.0,
        "failed_checks": 0.0,
        "clean_accuracy": 0.7,
        "robust.linf@0.01": 0.4,
        "baseline": 2.0,
    }
