"""The package's layout: files small enough to read (issue 12: no file over ~600 lines, checked
at 700)."""

from __future__ import annotations

from pathlib import Path

import edge_trgl

MAX_LINES = 700
PACKAGE = Path(edge_trgl.__file__).resolve().parent


def test_no_file_in_the_package_exceeds_700_lines():
    sizes = {path.relative_to(PACKAGE.parent).as_posix(): len(path.read_text().splitlines())
             for path in sorted(PACKAGE.rglob("*.py"))}
    assert sizes, f"no Python files found under {PACKAGE}"
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, (f"files over {MAX_LINES} lines (split them by job): "
                          + ", ".join(f"{name} ({n})" for name, n in sorted(too_long.items())))


# --- the import graph (issue 12: no import cycle; memory/ asks no backend) -----------------------

def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every package module -> the package modules it imports, at module level or inside a
    function (a lazy import is still a dependency), read with `ast` without importing anything."""
    import ast
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(c for c in candidates if c in files and c != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_import_graph_is_acyclic():
    graph = import_graph()
    assert len(graph) > 50 and graph["edge_trgl.train"], "the import graph was not read"
    found = cycles(graph)
    assert not found, "modules that import each other (directly or through others): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_layers_memory_and_backends_ask_no_target():
    """The planner receives a target's memory model; it never imports a backend or a target. The
    backends (workers) import no target, driver or train module: those sit above them."""
    graph = import_graph()
    above = ("edge_trgl.targets", "edge_trgl.driver", "edge_trgl.train", "edge_trgl.cli")
    for name, deps in graph.items():
        if name.startswith("edge_trgl.memory"):
            bad = [d for d in deps if d.startswith(("edge_trgl.backends",) + above)]
            assert not bad, f"{name} imports {bad}"
        if name.startswith("edge_trgl.backends"):
            bad = [d for d in deps if d.startswith(above)]
            assert not bad, f"{name} imports {bad}"
