"""Step `validate`: Great Expectations suites over the prepared data; a failure stops the pipeline.

    python -m components.validate --params params.yaml --data data/prepared \
        --calibration data/calibration --out reports/validation --metrics metrics/validate.json

Writes into `--out`: `index.html` (every expectation's result, self-contained: the
Kubeflow view), `datadocs/` (the Great Expectations Data Docs site, rendering offline),
`summary.json` and `summary.md`; and the DVC metric `--metrics`. Every output is a
function of the data, params and code (no run time, no random ids). Exits 1 naming the
failed checks when any expectation fails, so `dvc repro` stops before training.
"""

from __future__ import annotations

from pathlib import Path

from components._cli import parser, run_cli
from thermops.camera.calibration import load_calibrations
from thermops.config import classes_of, get, load_params, section
from thermops.data.prepared import load_prepared
from thermops.data.validation import (
    BALANCE_SUITE,
    SUITE,
    ValidateParams,
    ValidationFailed,
    balance_expectations,
    balance_table,
    results_html,
    run_suites,
    summarize,
    summary_markdown,
    tubelet_expectations,
    tubelet_table,
)
from thermops.io import atomic_dir, write_json


def run(
    p: ValidateParams,
    classes: list[str],
    frames: int,
    size: int,
    data_dir: Path,
    calibration_dir: Path,
    out_dir: Path,
    metrics_path: Path,
) -> dict:
    """Validate a prepared dataset; write Data Docs, summaries and the metric.

    Args:
        p: the `validate` params (bounds).
        classes: the thermops classes (`classes` in params).
        frames, size: the tubelet shape (T, H = W) asked of prepare (`prepare.frames`, `prepare.size`).
        data_dir: the prepared dataset (`tubelets.npy` (N, T, H, W), `manifest.csv`).
        calibration_dir: `data/calibration`.
        out_dir: report folder, replaced atomically (index.html, datadocs/, summary.json, summary.md).
        metrics_path: the DVC metric JSON.

    Returns:
        the summary. The outputs are written whether or not the data passes; the
        caller decides (the CLI exits 1 on failure).
    """
    data = load_prepared(data_dir)
    cals = load_calibrations(calibration_dir)
    table = tubelet_table(data, data_dir / "manifest.csv")
    cameras = sorted(table["camera_id"].dropna().astype(str).unique()) if "camera_id" in table else []
    labels = [str(x) for x in table["label"]] if "label" in table else []
    tables = {
        SUITE: (table, tubelet_expectations(p, classes, frames, size, cals, cameras)),
        BALANCE_SUITE: (balance_table(labels, classes), balance_expectations(p, classes)),
    }
    with atomic_dir(out_dir) as tmp:
        results = run_suites(tables, tmp / "datadocs")
        summary = summarize(results, len(table), p.examples)
        (tmp / "index.html").write_text(results_html(summary, results))
        write_json(tmp / "summary.json", summary)
        (tmp / "summary.md").write_text(summary_markdown(summary))
    write_json(
        metrics_path,
        {
            "success": int(summary["success"]),
            "expectations": summary["expectations"],
            "failed": len(summary["failed"]),
            "tubelets": summary["tubelets"],
        },
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    """CLI: paths only; bounds come from params.yaml. Exits 1 naming the failed checks."""
    args = parser(
        __doc__,
        ("--data", "data/prepared"),
        ("--calibration", "data/calibration"),
        ("--out", "reports/validation"),
        ("--metrics", "metrics/validate.json"),
    ).parse_args(argv)

    def go() -> str:
        params = load_params(args.params)
        summary = run(
            section(params, "validate", ValidateParams),
            classes_of(params),
            get(params, "prepare.frames", int),
            get(params, "prepare.size", int),
            args.data,
            args.calibration,
            args.out,
            args.metrics,
        )
        if not summary["success"]:
            raise ValidationFailed.from_summary(summary, args.out / "summary.md")
        return (
            f"validate: passed {summary['passed']}/{summary['expectations']} expectations on "
            f"{summary['tubelets']} tubelets; report {args.out / 'index.html'}"
        )

    run_cli(go)


if __name__ == "__main__":
    main()
