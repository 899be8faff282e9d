"""Print the local paths this machine's pip reads, one per line.

Sources: `pip config list` (every configuration file pip reads) and the PIP_*
environment variables; kept: find-links folders, file:// indexes (for an index
`file:///opt/pypi/simple` the folder printed is `/opt/pypi`, because its pages
link to `../files`) and constraint files (a pip.conf with `constraint = FILE`
makes every pip that reads it fail unless FILE is there too). The image build
mounts these read-only at the same paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

KEYS = ("find-links", "index-url", "extra-index-url")
FILE_KEYS = ("constraint", "build-constraint")


def local_folder(entry: str) -> Path | None:
    """Map one pip source entry (path or URL) to the local folder to mount, or None."""
    if entry.startswith("file://"):
        path = Path(urlparse(entry).path)
    elif entry.startswith("/"):
        path = Path(entry)
    else:
        return None  # http(s) index: reached over the network, nothing to mount
    if path.name == "simple":
        path = path.parent
    return path if path.is_dir() else None


def _read_config_files() -> str:
    """`pip config list`-like lines from pip's config files, for a python without pip."""
    import configparser

    lines = []
    home = Path.home()
    for f in (
        Path("/etc/pip.conf"),
        Path("/etc/xdg/pip/pip.conf"),
        home / ".config/pip/pip.conf",
        home / ".pip/pip.conf",
    ):
        if f.is_file():
            cp = configparser.ConfigParser()
            cp.read(f)
            for section in cp.sections():
                for key, value in cp[section].items():
                    lines.append(f"{section}.{key}='{' '.join(value.split())}'")
    return "\n".join(lines)


def pip_settings() -> list[tuple[str, str]]:
    """(key, value) of every source and constraint setting pip would use (`KEYS`, `FILE_KEYS`): its config
    files in pip's order, then the environment. One `pip config list` for all of them."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    out = proc.stdout if proc.returncode == 0 else _read_config_files()
    keys = KEYS + FILE_KEYS
    entries: list[tuple[str, str]] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        key = key.rsplit(".", 1)[-1]
        if key in keys:
            entries.extend((key, v) for v in value.strip().strip("'\"").split())
    for key in keys:
        entries.extend((key, v) for v in os.environ.get("PIP_" + key.upper().replace("-", "_"), "").split())
    return entries


def uv_toml(entries: list[str]) -> str:
    """The same sources as a uv configuration (uv does not read pip.conf)."""
    find_links = [e for e in entries if local_folder(e) is not None and not e.rstrip("/").endswith("simple")]
    indexes = [
        e if "://" in e else Path(e).as_uri()
        for e in entries
        if e.rstrip("/").endswith("simple") or e.startswith("http")
    ]
    lines = [f"find-links = {json.dumps(sorted(set(find_links)))}"]
    if indexes:
        lines.append(f"extra-index-url = {json.dumps(list(dict.fromkeys(indexes)))}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print each local folder and constraint file once (or, with --uv-toml, a uv.toml of the sources)."""
    settings = pip_settings()
    sources = [value for key, value in settings if key in KEYS]
    if "--uv-toml" in sys.argv[1:]:
        print(uv_toml(sources), end="")
        return
    seen: set[Path] = set()
    for entry in sources:
        folder = local_folder(entry)
        if folder is not None and folder not in seen:
            seen.add(folder)
            print(folder)
    for path in (Path(value) for key, value in settings if key in FILE_KEYS):
        if path.is_absolute() and path.is_file() and path not in seen:
            seen.add(path)
            print(path)


if __name__ == "__main__":
    main()
