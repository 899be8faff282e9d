"""Validation of a prepared dataset with Great Expectations 1.x, before any training.

The suites are built in code from params (`validate` section, `classes`, the
tubelet shape of `prepare`) and from the calibration files, and run in an
ephemeral GX context over two tables:

- `tubelets`: `manifest.csv` plus per-tubelet statistics computed here from
  `tubelets.npy` (`t_frames`, `t_height`, `t_width`, `t_min`, `t_max`, `t_mean`,
  `t_nonfinite`, `t_hash`) and `track_splits` (the splits a row's track occurs in);
- `class_balance`: one row per thermops class with its count and fraction.

The result is GX Data Docs HTML (deterministic, and rendering offline: its CDN assets are
vendored, see `offline_docs`), a self-contained page of every result (`results_html`), a
JSON/Markdown summary naming each failed expectation, its column and example values, and a
small DVC metric.
Great Expectations and pandas are imported inside the functions that need them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thermops.camera.calibration import Calibration
from thermops.data.prepared import KINDS, MANIFEST_COLUMNS, SPLITS, UNITS, PreparedData

STAT_COLUMNS = ["t_frames", "t_height", "t_width", "t_min", "t_max", "t_mean", "t_nonfinite", "t_hash", "track_splits"]
# Columns that must be filled in every row (distance, window and boxes may be empty
# by design: unknown geometry, background windows).
REQUIRED_COLUMNS = [
    "tubelet_id", "camera_id", "calibration_version", "source", "clip_id", "split", "label", "kind",
    "track_id", "frame_start", "frame_end", "window_px", "units", "mean", "std", "min", "max", "p01", "p99",
]
INT_COLUMNS = ["frame_start", "frame_end", "window_px"]
FLOAT_COLUMNS = ["mean", "std", "min", "max", "p01", "p99"]
SUITE = "prepared_tubelets"
BALANCE_SUITE = "class_balance"


class ValidationFailed(ValueError):
    """At least one expectation failed; the summary says which."""

    @classmethod
    def from_summary(cls, summary: dict, report: Path) -> ValidationFailed:
        """One line naming each failed check, its column and example values."""
        fails = "; ".join(
            f"{f['check']} ({f['expectation']} on {f['column'] or 'table'}"
            + (f" where {f['condition']}" if f["condition"] else "")
            + (f", e.g. {f['examples'][:3]}" if f["examples"] else "")
            + ")"
            for f in summary["failed"]
        )
        return cls(f"validation failed: {len(summary['failed'])} expectation(s): {fails}; see {report}")


@dataclass(frozen=True)
class ValidateParams:
    """The `validate` section of params.yaml.

    Attributes:
        min_tubelets: fewest tubelets a dataset may have.
        class_fraction: [min, max] share of every class among all tubelets.
        celsius_range: [min, max] plausible scene temperature in degrees Celsius
            for `celsius` tubelets (clear sky to exhaust pipes, THERMAL-FACTS.md).
        examples: example values per failed expectation in the summary.
    """

    min_tubelets: int
    class_fraction: list[float]
    celsius_range: list[float]
    examples: int


def calibration_range(cal: Calibration) -> tuple[float, float, str]:
    """(low, high, units) a camera's tubelet values can take, from its calibration.

    display8: 0..255. Radiometric: the temperatures of counts 0 and 2^bit_depth - 1
    (tubelets in `celsius`), or those counts themselves (tubelets in `counts`).
    """
    if not cal.radiometry.radiometric:
        return 0.0, 255.0, "display8"
    top = 2**cal.radiometry.bit_depth - 1
    ends = cal.radiometry.counts_to_celsius(np.array([0.0, float(top)]))
    lo, hi = float(np.nanmin(ends)), float(np.nanmax(ends))
    # Tubelets are float32: a saturated pixel (count 2^bits - 1) may round a hair past
    # the float64 end point; allow that rounding, nothing more.
    tol = 1e-5 * max(abs(lo), abs(hi), 1.0)
    return lo - tol, hi + tol, "celsius"


def tubelet_statistics(tubelets: np.ndarray, chunk: int = 512) -> dict[str, np.ndarray]:
    """Per-tubelet min, max, mean over finite values, count of NaN/inf, content hash.

    Args:
        tubelets: (N, T, H, W) array (may be memory-mapped).
    """
    n = tubelets.shape[0]
    out = {k: np.full(n, np.nan) for k in ("t_min", "t_max", "t_mean")}
    out["t_nonfinite"] = np.zeros(n, dtype=np.int64)
    hashes = []
    for s in range(0, n, chunk):
        x = np.asarray(tubelets[s : s + chunk], dtype=np.float64).reshape(min(chunk, n - s), -1)
        fin = np.isfinite(x)
        cnt = fin.sum(axis=1)
        has = cnt > 0
        out["t_nonfinite"][s : s + len(x)] = x.shape[1] - cnt
        out["t_min"][s : s + len(x)] = np.where(has, np.where(fin, x, np.inf).min(axis=1), np.nan)
        out["t_max"][s : s + len(x)] = np.where(has, np.where(fin, x, -np.inf).max(axis=1), np.nan)
        out["t_mean"][s : s + len(x)] = np.where(has, np.where(fin, x, 0).sum(axis=1) / np.maximum(cnt, 1), np.nan)
        # Hash the stored bytes, so identical tubelets collide whatever their manifest says.
        raw = np.ascontiguousarray(tubelets[s : s + chunk])
        hashes.extend(hashlib.sha256(raw[i].tobytes()).hexdigest()[:20] for i in range(len(raw)))
    out["t_hash"] = np.array(hashes, dtype=object)
    return out


def tubelet_table(data: PreparedData, manifest_path: Path):
    """The `tubelets` table: manifest.csv as pandas reads it, plus computed statistics."""
    import pandas as pd

    df = pd.read_csv(manifest_path, dtype={c: str for c in ("tubelet_id", "camera_id", "calibration_version",
                                                             "source", "clip_id", "track_id")})
    n, t, h, w = data.tubelets.shape
    df["t_frames"], df["t_height"], df["t_width"] = t, h, w
    for k, v in tubelet_statistics(data.tubelets).items():
        df[k] = v
    if "track_id" in df and "split" in df:
        splits = df.groupby("track_id", dropna=False)["split"].agg(lambda s: "+".join(sorted(set(map(str, s)))))
        df["track_splits"] = df["track_id"].map(splits)
    else:
        df["track_splits"] = None
    return df


def balance_table(labels: list[str], classes: list[str]):
    """The `class_balance` table: one row per class (absent classes with count 0)."""
    import pandas as pd

    n = max(len(labels), 1)
    counts = {c: sum(1 for x in labels if x == c) for c in classes}
    return pd.DataFrame({"label": classes, "count": [counts[c] for c in classes],
                         "fraction": [counts[c] / n for c in classes]})


def _cam(cam: str) -> dict[str, str]:
    return {"row_condition": f'camera_id=="{cam}"', "condition_parser": "pandas"}


def tubelet_expectations(p: ValidateParams, classes: list[str], frames: int, size: int,
                         cals: dict[str, Calibration], cameras: list[str]) -> list:
    """Expectations of the `tubelets` table; `meta.check` names the rule for the summary.

    Args:
        p: the validate params.
        classes: the thermops classes (the label set).
        frames, size: the tubelet shape (T, H = W) the prepare step was asked for.
        cals: calibration files by camera id.
        cameras: the cameras present in the data (per-camera expectations).
    """
    import great_expectations.expectations as gxe

    def m(check: str) -> dict:
        return {"check": check}

    ex = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=MANIFEST_COLUMNS + STAT_COLUMNS, meta=m("schema")),
        gxe.ExpectTableRowCountToBeBetween(min_value=p.min_tubelets, meta=m("enough tubelets")),
    ]
    ex += [gxe.ExpectColumnValuesToNotBeNull(column=c, meta=m("no nulls")) for c in REQUIRED_COLUMNS]
    ex += [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=["int64", "int32"], meta=m("types"))
           for c in INT_COLUMNS]
    ex += [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=["float64", "float32", "int64"], meta=m("types"))
           for c in FLOAT_COLUMNS]
    ex += [
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(classes), meta=m("label set")),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS), meta=m("split set")),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(KINDS), meta=m("kind set")),
        gxe.ExpectColumnValuesToBeInSet(column="units", value_set=list(UNITS), meta=m("units set")),
        gxe.ExpectColumnValuesToBeInSet(column="t_frames", value_set=[frames], meta=m("tubelet shape")),
        gxe.ExpectColumnValuesToBeInSet(column="t_height", value_set=[size], meta=m("tubelet shape")),
        gxe.ExpectColumnValuesToBeInSet(column="t_width", value_set=[size], meta=m("tubelet shape")),
        gxe.ExpectColumnValuesToBeBetween(column="t_nonfinite", min_value=0, max_value=0, meta=m("no NaN or inf")),
        gxe.ExpectColumnValuesToBeUnique(column="tubelet_id", meta=m("no duplicate tubelets")),
        gxe.ExpectColumnValuesToBeUnique(column="t_hash", meta=m("no duplicate tubelets")),
        gxe.ExpectColumnValuesToBeInSet(column="track_splits", value_set=list(SPLITS),
                                        meta=m("track ids disjoint between splits")),
        gxe.ExpectColumnValuesToBeInSet(column="camera_id", value_set=sorted(cals),
                                        meta=m("calibration file exists")),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="frame_end", column_B="frame_start", or_equal=True,
                                                    meta=m("frame order")),
    ]
    # Value ranges per unit: display8 is 0..255, celsius plausible scene temperatures.
    lo_c, hi_c = p.celsius_range
    for units, lo, hi in (("display8", 0.0, 255.0), ("celsius", lo_c, hi_c), ("counts", 0.0, 65535.0)):
        cond = {"row_condition": f'units=="{units}"', "condition_parser": "pandas"}
        ex += [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi, meta=m(f"{units} range"), **cond)
               for c in ("t_min", "t_max")]
    # Per camera: the calibration version of the file, units and statistics inside
    # the range the calibration allows.
    for cam in cameras:
        cal = cals.get(cam)
        if cal is None:
            continue  # already reported by "calibration file exists"
        lo, hi, units = calibration_range(cal)
        # A radiometric camera may also deliver its 8-bit AGC output (the embedded world mixes both).
        ok_units = [units] if units == "display8" else ["celsius", "counts", "display8"]
        ex += [
            gxe.ExpectColumnValuesToBeInSet(column="calibration_version", value_set=[cal.version],
                                            meta=m(f"calibration version of {cam}"), **_cam(cam)),
            gxe.ExpectColumnValuesToBeInSet(column="units", value_set=ok_units, meta=m(f"units of {cam}"), **_cam(cam)),
        ]
        if units == "display8":
            ex += [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi,
                                                     meta=m(f"{cam} statistics"), **_cam(cam))
                   for c in ("t_min", "t_max")]
            ex.append(gxe.ExpectColumnMeanToBeBetween(column="t_mean", min_value=lo, max_value=hi,
                                                      meta=m(f"{cam} statistics"), **_cam(cam)))
        else:
            cond = {"row_condition": f'camera_id=="{cam}" and units=="celsius"', "condition_parser": "pandas"}
            ex += [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi,
                                                     meta=m(f"{cam} statistics"), **cond)
                   for c in ("t_min", "t_max")]
            cond = {"row_condition": f'camera_id=="{cam}" and units=="counts"', "condition_parser": "pandas"}
            ex += [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=2**cal.radiometry.bit_depth - 1,
                                                     meta=m(f"{cam} statistics"), **cond)
                   for c in ("t_min", "t_max")]
    return ex


def balance_expectations(p: ValidateParams, classes: list[str]) -> list:
    """Expectations of the `class_balance` table."""
    import great_expectations.expectations as gxe

    lo, hi = p.class_fraction
    return [
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(classes), meta={"check": "label set"}),
        gxe.ExpectColumnValuesToBeBetween(column="fraction", min_value=lo, max_value=hi,
                                          meta={"check": "class balance"}),
    ]


def run_suites(tables: dict[str, tuple[Any, list]], docs_dir: Path) -> list[dict]:
    """Validate each table against its expectations and build Data Docs into `docs_dir`.

    Args:
        tables: suite name -> (pandas DataFrame, expectations).
        docs_dir: the Data Docs site folder (index.html, expectations/, validations/).

    Returns:
        one dict per expectation: suite, check, expectation, column, condition, success,
        unexpected_count, examples (values), example_ids (tubelet ids where known), observed.
    """
    import logging
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.add_data_docs_site(
        site_name="thermops",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    source = ctx.data_sources.add_pandas("prepared")
    out: list[dict] = []
    for name, (df, expectations) in tables.items():
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        ids = ["tubelet_id"] if "tubelet_id" in df.columns else ["label"]
        result = vd.run(
            batch_parameters={"dataframe": df},
            result_format={"result_format": "SUMMARY", "unexpected_index_column_names": ids,
                           "partial_unexpected_count": 20},
            run_id=RunIdentifier(run_name="thermops-validate", run_time=RUN_TIME),
        )
        for r in result.results:
            cfg = r.expectation_config
            kw = cfg.kwargs
            res = r.result or {}
            cond = kw.get("row_condition")
            if isinstance(cond, dict):
                cond = cond.get("pass_through_filter")
            idx = res.get("partial_unexpected_index_list") or []
            out.append({
                "suite": name, "check": (cfg.meta or {}).get("check", cfg.type), "expectation": cfg.type,
                "column": kw.get("column") or ",".join(filter(None, [kw.get("column_A"), kw.get("column_B")])) or None,
                "condition": cond, "success": bool(r.success),
                "unexpected_count": res.get("unexpected_count"),
                "examples": list(res.get("partial_unexpected_list") or [])[:20],
                "example_ids": [i.get(ids[0]) if isinstance(i, dict) else i for i in idx][:20],
                "observed": res.get("observed_value"),
                "exception": (r.exception_info or {}).get("exception_message") if r.exception_info else None,
            })
    ctx.build_data_docs(site_names=["thermops"])
    offline_docs(docs_dir)
    return out


# Data Docs are a function of the data, the suites and the code: GX's run time (in page paths
# and text) is fixed, and the per-build random ids and validation times are replaced, so the
# site is byte-identical across runs of the same inputs (DVC hashes it).
RUN_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
VENDOR = Path(__file__).resolve().parents[2] / "vendor" / "web"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_STAMP = re.compile(r"\b\d{8}T\d{6}\.\d{6}Z\b")
_ISO = re.compile(r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)")
_GX_LOGO = re.compile(r"https://great-expectations-web-assets\.s3[^\"'\s]*/logo-long\.png[^\"'\s]*")
# Loaded by the browser when the page opens (a link the reader may click is not an asset).
_ASSET = re.compile(r"<(script|img|link)\b[^>]*?\b(src|href)\s*=\s*[\"'](https?:)?//[^\"']*[\"']", re.I)


def offline_docs(docs_dir: Path, vendor: Path = VENDOR) -> list[Path]:
    """Make a Data Docs site render offline and deterministically; returns its pages.

    Every CDN asset (scripts, styles, fonts: vendor/web/MANIFEST.json maps each URL to a
    vendored file) is copied into `static/vendor/` and referenced by a relative path; GX's
    logo comes from the site's own static folder. An asset URL the manifest does not know is
    an error (a GX upgrade that needs a new asset must not silently load it from the network).
    """
    import json
    import os
    import shutil

    manifest = json.loads((vendor / "MANIFEST.json").read_text())
    target = docs_dir / "static" / "vendor"
    for rel in manifest["files"]:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vendor / rel, target / rel)
    pages = sorted(p for p in docs_dir.rglob("*.html") if "static" not in p.relative_to(docs_dir).parts)
    epoch_stamp, epoch_iso = RUN_TIME.strftime("%Y%m%dT%H%M%S.%fZ"), "1970-01-01T00:00:00Z"
    for page in pages:
        text = page.read_text()
        up = os.path.relpath(docs_dir, page.parent)
        for url, rel in sorted(manifest["urls"].items(), key=lambda kv: -len(kv[0])):
            text = re.sub(re.escape(url) + r"(?=[\"'])", f"{up}/static/vendor/{rel}", text)
        text = _GX_LOGO.sub(f"{up}/static/images/logo-long.png", text)
        # GX gets the depth of its own static folder wrong on validation pages (the favicon): fix every one
        text = re.sub(r"([\"'])(?:\.\./)*static/", lambda m: f"{m.group(1)}{up}/static/", text)
        left = _ASSET.search(text)
        if left:
            raise ValueError(f"{page}: Data Docs load {left.group(0)[:160]!r}, which vendor/web does not hold")
        ids: dict[str, str] = {}
        text = _UUID.sub(lambda m: ids.setdefault(m.group(0), f"id{len(ids):04d}"), text)
        text = _STAMP.sub(epoch_stamp, text)
        text = _ISO.sub(epoch_iso, text)
        page.write_text(text)
    return pages


def results_html(summary: dict, results: list[dict]) -> str:
    """A self-contained page of every expectation's result (the Kubeflow view of the validate step)."""
    import html

    def cell(v: Any) -> str:
        return html.escape("" if v is None else str(v))

    state = "PASSED" if summary["success"] else "FAILED"
    rows = []
    for r in sorted(results, key=lambda r: (r["success"], r["suite"], r["check"])):
        shown = r["examples"][:5] or ([] if r["observed"] is None else [r["observed"]])
        rows.append(
            f"<tr class='{'ok' if r['success'] else 'fail'}'><td>{'ok' if r['success'] else 'FAIL'}</td>"
            f"<td>{cell(r['suite'])}</td><td>{cell(r['check'])}</td><td>{cell(r['expectation'])}</td>"
            f"<td>{cell(r['column'])}</td><td>{cell(r['condition'])}</td><td>{cell(r['unexpected_count'])}</td>"
            f"<td>{cell(', '.join(map(str, shown))[:300])}</td></tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>thermops data validation</title><style>"
        "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #bbb;"
        "padding:2px 6px;font-size:13px}tr.fail td{background:#fde2e2}.PASSED{color:#080}.FAILED{color:#b00}"
        "</style></head><body>"
        f"<h1>Validation of the prepared data: <span class='{state}'>{state}</span></h1>"
        f"<p>{summary['passed']} of {summary['expectations']} expectations met over {summary['tubelets']} "
        "tubelets (Great Expectations; failed ones first). Full Data Docs: <code>datadocs/index.html</code> "
        "in this report folder.</p><table><tr><th></th><th>suite</th><th>check</th><th>expectation</th>"
        "<th>column</th><th>condition</th><th>unexpected</th><th>examples / observed</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )


def summarize(results: list[dict], n_tubelets: int, examples: int) -> dict:
    """The JSON summary: overall success, counts, and every failed expectation with examples."""
    failed = []
    for r in results:
        if r["success"]:
            continue
        f = dict(r)
        f["examples"] = r["examples"][:examples]
        f["example_ids"] = r["example_ids"][:examples]
        failed.append(f)
    return {
        "success": not failed, "tubelets": n_tubelets, "expectations": len(results),
        "passed": len(results) - len(failed), "failed": failed,
        "checks": sorted({r["check"] for r in results}),
    }


def summary_markdown(summary: dict) -> str:
    """A short Markdown report of the summary (what failed, on which column, examples)."""
    lines = ["# Validation of the prepared data", ""]
    state = "PASSED" if summary["success"] else "FAILED"
    lines.append(f"**{state}**: {summary['passed']} of {summary['expectations']} expectations met "
                 f"over {summary['tubelets']} tubelets. Results: `index.html`; Data Docs: `datadocs/index.html`.")
    if summary["failed"]:
        lines += ["", "| check | expectation | column | condition | unexpected | examples | tubelets |",
                  "|---|---|---|---|---|---|---|"]
        for f in summary["failed"]:
            ex = ", ".join(map(str, f["examples"])) or (str(f["observed"]) if f["observed"] is not None else "")
            if f.get("exception"):
                ex = f"exception: {f['exception']}"
            cells = [f["check"], f["expectation"], f["column"] or "", f["condition"] or "",
                     "" if f["unexpected_count"] is None else str(f["unexpected_count"]), ex,
                     ", ".join(map(str, f["example_ids"]))]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Checks run: " + ", ".join(summary["checks"]) + "."]
    return "\n".join(lines) + "\n"
