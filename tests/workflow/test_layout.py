"""The package's architecture as a checked contract: the library never imports the workflow side, and no module
imports itself back through others (function-level and ``TYPE_CHECKING`` imports count too)."""

from __future__ import annotations

import ast

from helpers import REPO

PACKAGE = REPO / "probes"
WORKFLOW = "probes.workflow"


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every probes module and the probes modules it imports, anywhere in its body."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def is_workflow(module: str) -> bool:
    return module == WORKFLOW or module.startswith(WORKFLOW + ".")


def test_the_library_never_imports_the_workflow_side():
    graph = imports()
    assert any(is_workflow(module) for module in graph) and len(graph) > 40
    offending = {
        module: sorted(filter(is_workflow, targets))
        for module, targets in graph.items()
        if not is_workflow(module) and any(map(is_workflow, targets))
    }
    assert offending == {}


def test_no_import_cycles():
    graph = imports()
    # A package's __init__ importing its own submodules is how it re-exports them, not a cycle of concerns.
    edges = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}
    state, cycles = {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_documented_layout_names_every_module_and_no_other():
    """The drawing in docs/pipeline.md, where a reader looks for where each concern lives."""
    import re

    text = (REPO / "docs" / "pipeline.md").read_text(encoding="utf-8")
    drawing = text.split("<!-- package layout -->\n```text\n", 1)[1].split("```", 1)[0]
    documented, parents = set(), []
    for line in drawing.splitlines()[1:]:
        match = re.match(r"^([│ ]*)(?:├── |└── )(\S+)", line)
        depth, name = len(match.group(1)) // 4, match.group(2)
        parents[depth:] = [name.rstrip("/")]
        documented.add("/".join(parents) + ("/" if name.endswith("/") else ""))
    actual = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and path.parent.name not in ("tasks", "stages")
    }
    actual |= {str(path.relative_to(PACKAGE)) + "/" for path in PACKAGE.rglob("*") if path.is_dir()}
    actual = {name for name in actual if "__pycache__" not in name} | {"__init__.py"}
    documented_packages = {name for name in documented if name.endswith("/")}
    assert documented_packages == {name for name in actual if name.endswith("/")}
    assert documented - documented_packages == actual - documented_packages
