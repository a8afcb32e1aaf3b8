"""The import graph of spml/ and train/: no circles, and no lower room importing a higher one.

Every module is parsed (never imported) and every import statement counts, those inside functions and
under ``if TYPE_CHECKING`` included: a circle hidden in a function is still a circle. An import names
the module it loads (``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``); the
parent packages Python loads on the way are not edges, so a package ``__init__`` importing its own
submodules is no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spml", "train")
# The core: what the trainer, the app and the audit all stand on.
CORE = ("spml.model", "spml.cam", "spml.rejection", "spml.losses", "spml.checkpoint")
ABOVE_CORE = ("spml.app", "spml.audit", "spml.commands")


def module_names() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ours (None for outside modules)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        targets.update(target for target in (_resolve(name, modules) for name in names) if target)
    targets.discard(module)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or not, with the module that imports it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for target in graph[node]:
            if target not in seen and target != start:
                seen[target] = node
                todo.append(target)
    return seen


def _inside(module: str, rooms: tuple[str, ...]) -> bool:
    return any(module == room or module.startswith(room + ".") for room in rooms)


def test_the_graph_sees_the_packages_and_their_imports():
    graph = import_graph()
    assert {"spml.model", "spml.losses", "train.engine", "spml.architectures"} <= set(graph)
    assert "spml.model" in graph["spml.checkpoint"]
    # Imports inside functions count: train's command line imports its subcommands on use.
    assert "train.engine" in graph["train.__main__"]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_spml_never_imports_train():
    graph = import_graph()
    wrong = {module: sorted(t for t in targets if _inside(t, ("train",)))
             for module, targets in graph.items() if _inside(module, ("spml",))}
    assert {module: targets for module, targets in wrong.items() if targets} == {}


def test_the_core_imports_nothing_above_it():
    graph = import_graph()
    wrong = {}
    for module in graph:
        if _inside(module, CORE):
            above = {t: via for t, via in reachable(graph, module).items() if _inside(t, ABOVE_CORE)}
            if above:
                wrong[module] = {t: f"imported by {via}" for t, via in sorted(above.items())}
    assert wrong == {}


def test_the_model_registry_knows_no_architecture():
    graph = import_graph()
    assert not any(_inside(t, ("spml.architectures",)) for t in reachable(graph, "spml.model"))
