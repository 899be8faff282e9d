"""Vendor the web assets that Data Docs and `dvc plots show` load from CDNs, so they render offline.

Perimeter-security sites are often offline; Great Expectations' Data Docs and DVC's plots page
load their scripts, styles and fonts from CDNs and show blank or unstyled pages without them.
This script copies the exact files from the npm packages into `vendor/web/` (with their
licences and a MANIFEST.json naming, for each CDN URL, the vendored file and its SHA-256) and
writes `vendor/web/dvc-plots.html`, a `dvc plots show` template with vega, vega-lite and
vega-embed inlined (`.dvc/config` `plots.html_template` points at it).

    mkdir /tmp/npm && cd /tmp/npm && for p in jquery@3.7.1 bootstrap@4.3.1 popper.js@1.12.9 \\
        @fortawesome/fontawesome-free@6.6.0 bootstrap-table@1.19.1 bootstrap-datepicker@1.9.0 \\
        @forevolve/bootstrap-dark@1.1.0 vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0; do npm pack "$p"; done
    python scripts/vendor_web.py /tmp/npm
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "vendor" / "web"

# npm tarball -> [(file inside the package, vendored path, [CDN URLs that Data Docs or DVC use for it])]
FILES: dict[str, list[tuple[str, str, list[str]]]] = {
    "jquery-3.7.1.tgz": [("dist/jquery.min.js", "jquery.min.js", ["https://code.jquery.com/jquery-3.7.1.min.js"])],
    "bootstrap-4.3.1.tgz": [
        (
            "dist/css/bootstrap.min.css",
            "bootstrap.min.css",
            ["https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"],
        ),
        (
            "dist/js/bootstrap.min.js",
            "bootstrap.min.js",
            ["https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js"],
        ),
    ],
    "popper.js-1.12.9.tgz": [
        (
            "dist/umd/popper.min.js",
            "popper.min.js",
            ["https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js"],
        )
    ],
    "fortawesome-fontawesome-free-6.6.0.tgz": [
        (
            "css/all.min.css",
            "fontawesome/css/all.min.css",
            ["https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css"],
        ),
        *[
            (f"webfonts/{f}.woff2", f"fontawesome/webfonts/{f}.woff2", [])
            for f in ("fa-brands-400", "fa-regular-400", "fa-solid-900", "fa-v4compatibility")
        ],
    ],
    "bootstrap-table-1.19.1.tgz": [
        (
            "dist/bootstrap-table.min.css",
            "bootstrap-table.min.css",
            ["https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css"],
        ),
        (
            "dist/bootstrap-table.min.js",
            "bootstrap-table.min.js",
            ["https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js"],
        ),
        (
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
            "bootstrap-table-filter-control.min.css",
            [
                "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css",
                "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
            ],
        ),
        (
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
            "bootstrap-table-filter-control.min.js",
            [
                "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js"
            ],
        ),
    ],
    "bootstrap-datepicker-1.9.0.tgz": [
        (
            "dist/css/bootstrap-datepicker.min.css",
            "bootstrap-datepicker.min.css",
            ["https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css"],
        ),
        (
            "dist/js/bootstrap-datepicker.min.js",
            "bootstrap-datepicker.min.js",
            ["https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js"],
        ),
    ],
    "forevolve-bootstrap-dark-1.1.0.tgz": [
        (
            "dist/css/bootstrap-prefers-dark.min.css",
            "bootstrap-prefers-dark.min.css",
            ["https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css"],
        )
    ],
    "vega-5.33.1.tgz": [
        (
            "build/vega.min.js",
            "vega.min.js",
            ["https://cdn.jsdelivr.net/npm/vega@5", "https://cdn.jsdelivr.net/npm/vega@5.20.2"],
        )
    ],
    "vega-lite-5.23.0.tgz": [
        (
            "build/vega-lite.min.js",
            "vega-lite.min.js",
            ["https://cdn.jsdelivr.net/npm/vega-lite@5", "https://cdn.jsdelivr.net/npm/vega-lite@5.2.0"],
        )
    ],
    "vega-embed-6.29.0.tgz": [
        (
            "build/vega-embed.min.js",
            "vega-embed.min.js",
            ["https://cdn.jsdelivr.net/npm/vega-embed@6", "https://cdn.jsdelivr.net/npm/vega-embed@6.18.2"],
        )
    ],
}
LICENSE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md")

PLOTS_TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot (thermops, offline)</title>
    <!-- vega {vega}, vega-lite {vega_lite}, vega-embed {vega_embed} inlined from vendor/web
         (scripts/vendor_web.py): this page loads nothing from the network. -->
    <script>{vega_js}</script>
    <script>{vega_lite_js}</script>
    <script>{vega_embed_js}</script>
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tarballs", type=Path, help="folder with the npm pack tarballs")
    args = ap.parse_args(argv)
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "licenses").mkdir(parents=True)
    manifest: dict[str, dict] = {"files": {}, "urls": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for tarball, files in FILES.items():
            dest = Path(tmp) / tarball
            with tarfile.open(args.tarballs / tarball) as tf:
                tf.extractall(dest, filter="data")
            pkg = dest / "package"
            meta = json.loads((pkg / "package.json").read_text())
            lic = next((pkg / n for n in LICENSE_NAMES if (pkg / n).is_file()), None)
            if lic is not None:
                shutil.copyfile(lic, OUT / "licenses" / f"{meta['name'].replace('/', '__')}-{meta['version']}.txt")
            for inner, vendored, urls in files:
                target = OUT / vendored
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(pkg / inner, target)
                manifest["files"][vendored] = {
                    "package": f"{meta['name']}@{meta['version']}",
                    "license": meta.get("license"),
                    "path_in_package": inner,
                    "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                }
                for url in urls:
                    manifest["urls"][url] = vendored
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    pkg_of = {v: d["package"].rsplit("@", 1)[1] for v, d in manifest["files"].items()}
    page = PLOTS_TEMPLATE.format(
        vega=pkg_of["vega.min.js"],
        vega_lite=pkg_of["vega-lite.min.js"],
        vega_embed=pkg_of["vega-embed.min.js"],
        vega_js=(OUT / "vega.min.js").read_text().replace("</script", "<\\/script"),
        vega_lite_js=(OUT / "vega-lite.min.js").read_text().replace("</script", "<\\/script"),
        vega_embed_js=(OUT / "vega-embed.min.js").read_text().replace("</script", "<\\/script"),
    )
    (OUT / "dvc-plots.html").write_text(page)
    print(f"vendored {len(manifest['files'])} files for {len(manifest['urls'])} CDN URLs into {OUT}")


if __name__ == "__main__":
    main()
