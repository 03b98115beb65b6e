"""No import cycle between lit_ft's packages, function-level imports included.

A package here is a folder of lit_ft (config, data, tasks, model, training, observe, ...) or a
top-level module (run, steps, export, log, problems, ...). Every `import` in a file counts,
wherever it stands: an import moved into a function to dodge a circular ImportError still
ties the two packages together, and that is the knot this test is about. The leaves every
package may use are lit_ft/errors.py, lit_ft/log.py, lit_ft/problems.py and lit_ft/config/.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import lit_ft

ROOT = Path(lit_ft.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    """lit_ft.model.build -> model; lit_ft.steps -> steps; lit_ft (or a name lit_ft's
    __init__ re-exports, e.g. lit_ft.train) -> lit_ft."""
    parts = module.split(".")
    if len(parts) > 1 and ((ROOT / parts[1]).is_dir() or (ROOT / f"{parts[1]}.py").is_file()):
        return parts[1]
    return parts[0]


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against this module's package
            base = module.split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            module_name = ".".join([*base, node.module] if node.module else base)
        else:
            module_name = node.module
        # `from lit_ft import steps` imports lit_ft.steps: each name may be a module
        return [f"{module_name}.{alias.name}" for alias in node.names]
    return []


def _lit_ft_imports():
    """(importing module, imported lit_ft name, the importing file) for every import."""
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for name in _imported(node, module, path.name == "__init__.py"):
                if name.split(".")[0] == "lit_ft":
                    yield module, name, str(path.relative_to(ROOT.parent))


def package_imports() -> dict[tuple[str, str], set[str]]:
    """(importing package, imported package) -> the files that import across."""
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for module, name, file in _lit_ft_imports():
        source, target = _package(module), _package(name)
        if source != target and target != "lit_ft":  # lit_ft/__init__ re-exports only
            edges[(source, target)].add(file)
    return edges


def cycles(edges) -> list[list[str]]:
    """The strongly connected groups of more than one package (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_packages():
    edges = package_imports()
    assert ("run", "steps") in edges  # the scan sees imports (run.py imports steps.py)
    report = []
    for group in cycles(edges):
        report.append(" <-> ".join(group))
        for (source, target), files in sorted(edges.items()):
            if source in group and target in group:
                report.append(f"    {source} -> {target}: {', '.join(sorted(files))}")
    assert not report, "import cycles between lit_ft's packages:\n" + "\n".join(report)


def test_a_function_level_import_is_a_cycle_too():
    """The scan reads imports inside functions: a hidden back edge is found."""
    edges = {("model", "tasks"): {"a"}, ("tasks", "model"): {"b"}, ("run", "model"): {"c"}}
    assert cycles(edges) == [["model", "tasks"]]
    source = "def f():\n    from lit_ft.tasks import get_task\n"
    (node,) = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    (name,) = _imported(node, "lit_ft.model.build", is_package=False)
    assert _package(name) == "tasks"
    relative = ast.parse("from ..tasks import base").body[0]
    assert _imported(relative, "lit_ft.model.build", is_package=False) == ["lit_ft.tasks.base"]
    assert _package("lit_ft.steps") == "steps" and _package("lit_ft.train") == "lit_ft"


def module_imports() -> dict[tuple[str, str], set[str]]:
    """(importing module, imported module) -> the importing file, every import counted; a
    name imported from a module (`from lit_ft.data.sources import load_source`) is an edge
    to that module, and lit_ft/__init__'s re-exports are left out as above."""
    modules = {_module_name(path) for path in ROOT.rglob("*.py")}
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for module, name, file in _lit_ft_imports():
        while name not in modules and "." in name:  # lit_ft.data.sources.load_source
            name = name.rsplit(".", 1)[0]
        if name not in (module, "lit_ft"):
            edges[(module, name)].add(file)
    return edges


def test_no_import_cycle_between_modules():
    """Inside a package too: two files that import each other (one inside a function) are
    one concept split in two, or a rule living on the wrong side."""
    edges = module_imports()
    assert ("lit_ft.data.mixture", "lit_ft.data.sources") in edges  # the scan sees them
    found = [" <-> ".join(group) for group in cycles(edges)]
    assert not found, "import cycles between lit_ft's modules:\n" + "\n".join(found)
