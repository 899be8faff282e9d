"""Run a module as a bare GPU node would: with torch, numpy and pyyaml as the only third-party packages.

    python tests/bare_python.py [--with DIST,...] MODULE ARGS...

Every other non-standard-library package (pydantic, matplotlib, bentoml, ...) is not found, as on a
node whose python has only those three (with what they require); the project's own packages import
as usual. `--with` adds distributions a node has beside them (a GPU node's python also has
torchmetrics, which the fine-tuning metrics import when they run). Used by the tests that keep the training path runnable there.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import re
import runpy
import sys
from pathlib import Path

import numpy  # noqa: F401
import torch  # noqa: F401
import yaml  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"thermops", "components", "benchmarks", "tests"}


def _installed_with(*dists: str) -> set[str]:
    """Top-level module names of these distributions and of everything they require (torch brings
    sympy, networkx, jinja2, ...: they are part of a node's torch), extras left out."""
    seen: set[str] = set()
    todo, modules = list(dists), set()
    while todo:
        d = todo.pop()
        if d.lower() in seen:
            continue
        seen.add(d.lower())
        try:
            dist = importlib.metadata.distribution(d)
        except importlib.metadata.PackageNotFoundError:
            continue
        top = dist.read_text("top_level.txt")
        modules |= set(top.split()) if top else {d.replace("-", "_").lower()}
        for f in dist.files or ():  # wheels without top_level.txt: their package folders
            if len(f.parts) > 1 and f.parts[1] == "__init__.py":
                modules.add(f.parts[0])
        for req in dist.requires or ():
            if "extra ==" not in req:
                todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return modules


# torch, numpy and pyyaml with what they require, and whatever they imported of their own
BARE = ("torch", "numpy", "pyyaml")
PRESENT = {name.split(".")[0] for name in sys.modules}


class Bare(importlib.abc.MetaPathFinder):
    """Wraps a finder of sys.meta_path: a package not on a bare node is not found, exactly as if it
    were not installed (`import` raises ModuleNotFoundError; `importlib.util.find_spec` says None)."""

    def __init__(self, finder) -> None:
        self.finder = finder

    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in PRESENT or top in PROJECT:
            return self.finder.find_spec(name, path, target)
        return None

    def invalidate_caches(self) -> None:
        getattr(self.finder, "invalidate_caches", lambda: None)()


if __name__ == "__main__":
    args = sys.argv[1:]
    extra = [d for d in args.pop(1).split(",") if d] if args[0] == "--with" else []
    if args[0] == "--with":
        args.pop(0)
    PRESENT |= _installed_with(*BARE, *extra)
    sys.meta_path[:] = [Bare(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
    sys.path.insert(0, str(ROOT))
    module, sys.argv = args[0], args
    runpy.run_module(module, run_name="__main__", alter_sys=True)
