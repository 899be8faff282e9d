"""Validation of a prepared dataset with Great Expectations 1.x, before any training.

The suites are built in code from params (`validate` section, `classes`, the
tubelet shape of `prepare`) and from the calibration files, and run in an
ephemeral GX context over two tables:

- `tubelets`: `manifest.csv` plus per-tubelet statistics computed here from
  `tubelets.npy` (`t_frames`, `t_height`, `t_width`, `t_min`, `t_max`, `t_mean`,
  `t_nonfinite`, `t_hash`) and `track_splits` (the splits a row's track occurs in);
- `class_balance`: one row per thermops class with its count and fraction.

The result is GX Data Docs HTML, a JSON/Markdown summary naming each failed
expectation, its column and example values, and a small DVC metric.
Great Expectations and pandas are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
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
            run_id=RunIdentifier(run_name="thermops-validate"),
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
    _offline_fallback(docs_dir, out)
    return out


# Data Docs take their styles, icons and the index table from CDNs; a pipeline
# machine is often offline. These additions show pass/fail and the page list
# without them (and change nothing visible when the CDNs load, except the icons).
_FALLBACK_STYLE = """<style>/* thermops offline fallback */
.fa-check-circle::before{content:"\\2714";color:#1a7f37;font-family:sans-serif;font-style:normal}
.fa-times::before{content:"\\2718";color:#cf222e;font-family:sans-serif;font-style:normal}
body{font-family:sans-serif} table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:2px 6px}
</style>"""


def _offline_fallback(docs_dir: Path, results: list[dict]) -> None:
    """Add a static style and, on the index page, a plain list of the result pages."""
    import html

    pages = sorted(p for p in docs_dir.rglob("*.html") if "static" not in p.relative_to(docs_dir).parts)
    status = {}
    for r in results:
        status[r["suite"]] = status.get(r["suite"], True) and r["success"]
    links = []
    for p in pages:
        rel = p.relative_to(docs_dir).as_posix()
        if rel == "index.html":
            continue
        kind = "validation result" if rel.startswith("validations/") else "expectation suite"
        suite = rel.split("/")[1].removesuffix(".html")
        state = "" if kind == "expectation suite" else (" PASSED" if status.get(suite) else " FAILED")
        links.append(f'<li><a href="{html.escape(rel)}">{kind}: {html.escape(suite)}</a>{state}</li>')
    for p in pages:
        text = p.read_text()
        text = text.replace("</head>", _FALLBACK_STYLE + "</head>", 1)
        if p.name == "index.html" and p.parent == docs_dir:
            block = '<div id="thermops-pages"><h3>Pages (static list)</h3><ul>' + "".join(links) + "</ul></div>"
            text = text.replace("</body>", block + "</body>", 1)
        p.write_text(text)


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
                 f"over {summary['tubelets']} tubelets. Data Docs: `index.html` in this folder.")
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
