"""The shape of gptkit's module graph."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gptkit"


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The gptkit modules a module imports anywhere in it: at the top, inside functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "gptkit":
            names = [f"gptkit.{alias.name}" for alias in node.names]  # `from gptkit import x`: x may be a module
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "gptkit" and len(parts) > 1 and parts[1] in modules:
                found.add(parts[1])
    return found - {path.stem}


def import_circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import each other (directly or through others): strongly connected components of
    more than one module."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module):  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return groups


def cycle_within(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest import path from the group's first module back to itself, staying inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for imported in sorted(graph[module] & group):
                if imported == start:
                    return paths[module] + [start]
                if imported not in paths:
                    paths[imported] = paths[module] + [imported]
                    following.append(imported)
        frontier = following
    raise AssertionError(f"{group} is not strongly connected")


def test_import_circles_are_found():
    """The checker itself: a circle through three modules is reported (with a path around it), a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [{"a", "b", "c"}]
    assert cycle_within(graph, {"a", "b", "c"}) == ["a", "b", "c", "a"]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []


def test_no_import_circle_among_gptkits_modules():
    """No gptkit module imports, even lazily inside a function, a module that imports it back (directly or through
    others): each module can be read, tested and changed with only what lies below it."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {module: imported_modules(PACKAGE / f"{module}.py", modules) for module in modules}
    circles = import_circles(graph)
    assert not circles, "import circles: " + "; ".join(
        f"{' -> '.join(cycle_within(graph, group))} (among {', '.join(sorted(group))})" for group in circles
    )
