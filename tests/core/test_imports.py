"""The import graph of ``em`` runs one way (docs/architecture.md): no two modules import each other (counting
lazy and type-checking imports), and only the entries import the task layer."""

from __future__ import annotations

import ast
from pathlib import Path

import em

PACKAGE = Path(em.__file__).parent
ENTRIES = {"em.pipeline", "em.prepare", "em.datagen.__main__"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` (``em.a.b`` or ``em.a.b.attr``) is defined in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("em"):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("em")]
            else:
                continue
            for name in names:
                target = _target(name, modules)
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def _is_package_of(a: str, b: str) -> bool:
    return b.startswith(a + ".")  # a package's __init__ may re-export its own modules


def test_no_two_modules_import_each_other():
    graph = import_graph()
    pairs = sorted(
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if a < b and a in graph.get(b, set()) and not (_is_package_of(a, b) or _is_package_of(b, a))
    )
    assert not pairs, f"modules importing each other: {pairs}"


def test_only_entries_and_tasks_import_the_task_layer():
    graph = import_graph()
    upward = sorted(
        (mod, t)
        for mod, targets in graph.items()
        for t in targets
        if t.startswith("em.tasks") and not mod.startswith("em.tasks") and mod not in ENTRIES
    )
    assert not upward, f"imports of em.tasks outside the entries: {upward}"


def test_the_graph_sees_lazy_and_type_checking_imports():
    graph = import_graph()
    assert "em.tasks.pipeline" in graph["em.pipeline"]  # imported inside main()
    assert "em.judging.openai_settings" in graph["em.judging.replies"]
