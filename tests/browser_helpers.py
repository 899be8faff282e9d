"""Open a page in headless Chromium with the network off and report what actually rendered.

`inspect_page(page)` loads `page` (a local file) in an iframe of a harness page and, once it
has loaded, reports from inside it: every image and whether it decoded (naturalWidth > 0),
every stylesheet and whether its rules loaded, which script globals exist, how many vega
views were drawn, and the page's visible text length. Chromium runs in a fresh network
namespace (`unshare -n`: no interface but loopback) when it can, else behind a proxy that
does not exist; either way nothing can be fetched from the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)")

HARNESS = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="f" src="{src}" style="width:1200px;height:900px"></iframe>
<script>
document.getElementById('f').addEventListener('load', function () {{
  setTimeout(function () {{
    var d = this.contentDocument, w = this.contentWindow, out = {{}};
    out.images = Array.from(d.images).map(function (i) {{
      return {{src: i.getAttribute('src').slice(0, 60), ok: i.complete && i.naturalWidth > 0}};
    }});
    out.styles = Array.from(d.querySelectorAll('link[rel=stylesheet]')).map(function (l) {{
      var n = -1; try {{ n = l.sheet ? l.sheet.cssRules.length : -1; }} catch (e) {{ n = -2; }}
      return {{href: l.getAttribute('href'), rules: n}};
    }});
    out.globals = ['jQuery', 'vega', 'vegaLite', 'vegaEmbed', 'bootstrap'].filter(function (g) {{ return !!w[g]; }});
    out.vega_views = d.querySelectorAll('.vega-embed canvas').length;
    out.bootstrap_tables = d.querySelectorAll('.bootstrap-table').length;
    out.text_chars = (d.body ? d.body.innerText : '').length;
    document.getElementById('result').textContent = JSON.stringify(out);
  }}.bind(this), {settle_ms});
}});
</script></body></html>
"""


def _offline_prefix() -> list[str]:
    if os.geteuid() == 0 and shutil.which("unshare"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-n"]
    return []


def inspect_page(page: Path, settle_ms: int = 2500) -> dict:
    """What rendered when `page` was opened with the network off (see the module docstring)."""
    assert CHROMIUM is not None
    page = Path(page).resolve()
    with tempfile.TemporaryDirectory(prefix="thermops-browser-") as tmp:
        harness = Path(tmp) / "harness.html"
        harness.write_text(HARNESS.format(src=page.as_uri(), settle_ms=settle_ms))
        cmd = _offline_prefix() + [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--proxy-server=http://127.0.0.1:9",  # a port nothing listens on: no fetch can succeed
            "--proxy-bypass-list=<-loopback>",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--virtual-time-budget={settle_ms + 15000}",
            "--dump-dom",
            harness.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    start = proc.stdout.find('<pre id="result">')
    if start < 0:
        raise AssertionError(f"chromium printed no DOM (exit {proc.returncode}): {proc.stderr[-2000:]}")
    body = proc.stdout[start + len('<pre id="result">') : proc.stdout.find("</pre>", start)]
    import html

    text = html.unescape(body)
    if text == "pending":
        raise AssertionError(f"{page}: the page did not finish loading: {proc.stderr[-2000:]}")
    return json.loads(text)


def screenshot(page: Path, out: Path, size: str = "1300,1000") -> Path:
    """A PNG of `page` rendered with the network off (to look at it)."""
    cmd = _offline_prefix() + [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--proxy-server=http://127.0.0.1:9",
        f"--window-size={size}",
        "--virtual-time-budget=8000",
        f"--screenshot={out}",
        Path(page).resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=180, check=True)
    return out
