"""Static import graph of the project's own code (thermops, components, pipeline, service.py).

Read from the source with `ast`, imports inside functions included (they run too),
so that lists kept by hand elsewhere (dvc.yaml deps, the bento's `include`) can be
checked against what the code really imports.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("thermops", "components", "pipeline")


def module_file(name: str) -> Path | None:
    """The file of a project module (`thermops.camera.sensor`), or None if it is not ours."""
    if name.split(".")[0] not in (*PACKAGES, "service"):
        return None
    base = ROOT.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def module_name(path: Path) -> str:
    rel = path.resolve().relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@cache
def direct_imports(path: Path) -> frozenset[str]:
    """Project modules that `path` imports anywhere in its body, with their parent packages."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from thermops.camera import sensor`: the name may be a submodule
            found.update(f"{node.module}.{a.name}" for a in node.names)
    out: set[str] = set()
    for name in found:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            prefix = ".".join(parts[:i])
            if module_file(prefix) is not None:
                out.add(prefix)
    return frozenset(out)


def closure(*modules: str) -> set[Path]:
    """Files (absolute) that importing `modules` executes, the modules themselves included."""
    todo = [m for m in modules]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            raise ValueError(f"{name} is not a module of this project")
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(direct_imports(path))
    return {module_file(m) for m in seen}


def library_graph() -> dict[str, set[str]]:
    """thermops module -> thermops modules it imports (package __init__ edges left out)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "thermops").rglob("*.py")):
        name = module_name(path)
        graph[name] = {
            m for m in direct_imports(path) if m.startswith("thermops") and module_file(m).name != "__init__.py"
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def runs_code(path: Path) -> bool:
    """False for a file that holds nothing but a docstring (a package's `__init__.py`)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def code_closure(*modules: str) -> set[Path]:
    """`closure` without the files that run no code: what a stage's outputs can depend on."""
    return {p for p in closure(*modules) if runs_code(p)}


def covered(path: Path, deps: list[str]) -> bool:
    """Whether a dvc.yaml dep list (files or folders, relative to the root) covers `path`."""
    rel = path.resolve().relative_to(ROOT)
    for dep in deps:
        d = Path(dep)
        if rel == d or d in rel.parents:
            return True
    return False
