"""Lists kept by hand cannot drift from the code: dvc.yaml deps, the bento's files, the layers.

Each check is a function of (what the code imports, what the list says), so each
test also proves the check fails when an entry is removed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from structure_helpers import ROOT, closure, code_closure, covered, find_cycle, library_graph, module_name  # noqa: E402

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
BENTOFILE = yaml.safe_load((ROOT / "bentofile.yaml").read_text())


def _body(stage: dict) -> dict:
    return stage.get("do", stage)


def stage_code(name: str) -> set[Path]:
    """Code files a stage's outputs depend on: the import closure of the step it runs."""
    cmd = _body(STAGES[name])["cmd"]
    match = re.search(r"python -m (components\.\w+)", cmd)
    assert match, f"stage {name}: command does not run a step: {cmd}"
    files = code_closure(match.group(1))
    if name == "package":  # the bento is built from service.py and bentofile.yaml too
        files |= code_closure("service") | {ROOT / "bentofile.yaml"}
    return files


def uncovered(files: set[Path], deps: list[str]) -> list[str]:
    return sorted(str(f.relative_to(ROOT)) for f in files if not covered(f, deps))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_imports(name):
    missing = uncovered(stage_code(name), _body(STAGES[name])["deps"])
    assert not missing, f"dvc.yaml stage {name}: add these deps (files or their folders): {missing}"


@pytest.mark.parametrize("name", ["prepare", "gate", "package"])
def test_removing_a_dep_is_caught(name):
    deps = list(_body(STAGES[name])["deps"])
    code_deps = [d for d in deps if d.startswith(("thermops", "components"))]
    assert code_deps, name
    for dep in code_deps:
        assert uncovered(stage_code(name), [d for d in deps if d != dep]), f"{name}: dropping {dep} went unnoticed"


def test_bento_include_covers_what_service_imports():
    include = BENTOFILE["include"]
    files = closure("service")
    missing = uncovered(files, include)
    assert not missing, f"bentofile.yaml include lacks {missing}"
    for entry in include:  # and each entry is needed: removing it is caught
        assert uncovered(files, [e for e in include if e != entry]), (
            f"bentofile.yaml: {entry} is not imported by service.py"
        )


def test_the_library_has_no_import_cycles():
    cycle = find_cycle(library_graph())
    assert cycle is None, f"import cycle in thermops: {' -> '.join(cycle)}"


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_imports_no_orchestrator_or_server():
    """thermops knows no orchestrator, no server, no step: nothing imports upward."""
    forbidden = ("bentoml", "kfp", "dvc", "components", "pipeline", "service")
    bad = []
    for path in sorted((ROOT / "thermops").rglob("*.py")):
        text = path.read_text()
        for mod in forbidden:
            if re.search(rf"^\s*(from|import) {mod}\b", text, re.M):
                bad.append(f"{module_name(path)} imports {mod}")
    assert not bad, bad


def test_no_step_imports_another_step():
    steps = {p.stem for p in (ROOT / "components").glob("*.py") if not p.stem.startswith("_")}
    for step in sorted(steps):
        imported = {module_name(p) for p in closure(f"components.{step}")}
        others = {f"components.{s}" for s in steps - {step}} & imported
        assert not others, f"components.{step} imports {sorted(others)}"


def test_two_library_modules_never_share_a_name():
    names: dict[str, list[str]] = {}
    for path in (ROOT / "thermops").rglob("*.py"):
        if path.name != "__init__.py":
            names.setdefault(path.stem, []).append(module_name(path))
    for path in (ROOT / "pipeline").glob("*.py"):
        names.setdefault(path.stem, []).append(module_name(path))
    shared = {k: v for k, v in names.items() if len(v) > 1}
    assert not shared, shared
