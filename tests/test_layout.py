"""The shape of gptkit's module graph."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gptkit"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
COMMAND_SIDE = ("__main__", "cli", "commands", "serve")  # the library (every other module) imports none of these


def module_names() -> dict[str, Path]:
    """Each gptkit module by its dotted name below gptkit ("model.gpt"; a package by its own name, "model")."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names[".".join(parts)] = path
    return names


def owning_module(dotted: str, modules) -> str | None:
    """The gptkit module a dotted import name ("gptkit.model.gpt.GPT") lands in: its longest prefix that is one."""
    parts = dotted.split(".")
    if parts[0] != "gptkit":
        return None
    for end in range(len(parts), 1, -1):
        name = ".".join(parts[1:end])
        if name in modules:
            return name
    return None


def imported_modules(path: Path, modules) -> set[str]:
    """The gptkit modules a module imports anywhere in it: at the top, inside functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]  # the name may be a module or an object
        else:
            continue
        for name in names:
            module = owning_module(name, modules)
            if module is not None:
                found.add(module)
    own = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
    return found - {own}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {module: imported_modules(path, modules) for module, path in modules.items()}


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
    graph = import_graph()
    circles = import_circles(graph)
    assert not circles, "import circles: " + "; ".join(
        f"{' -> '.join(cycle_within(graph, group))} (among {', '.join(sorted(group))})" for group in circles
    )


def test_the_library_never_imports_a_command():
    """The library (model, checkpoint, data, machine, training, inference, evaluation) imports no command module, no
    part of the server and not the command line: commands sit on top of it."""
    wrong = {
        f"{module} imports {imported}"
        for module, imports in import_graph().items()
        if module.split(".")[0] not in COMMAND_SIDE
        for imported in imports
        if imported.split(".")[0] in COMMAND_SIDE
    }
    assert not wrong, sorted(wrong)


def test_modules_and_functions_are_sizes_a_reader_can_hold():
    """No module over MAX_MODULE_LINES lines, no function (method, nested function) over MAX_FUNCTION_LINES: a
    module has one job, a function one step of it."""
    too_big = []
    for module, path in module_names().items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{module}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_big.append(f"{module}.{node.name}: {lines} lines")
    assert not too_big, too_big
