"""The house rules that keep the code base navigable: no import circle (function-level imports included), a
thin CLI."""

import ast
from pathlib import Path

import turbovaed

ROOT = Path(turbovaed.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every turbovaed module -> the turbovaed modules it imports anywhere in its body."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {m: set() for m in files}
    for m, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[m] |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    graph[m].add(full if full in files else node.module)
        graph[m] = {t for t in graph[m] if t in files and t != m}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert "turbovaed.presets" in graph["turbovaed.distill.setup"]  # the walk sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_planted_circle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_cli_only_parses_and_prints():
    """Each CLI module stays small and no command grows past ~40 lines: pipelines live in their modules."""
    for path in (ROOT / "cli").glob("*.py"):
        source = path.read_text()
        assert len(source.splitlines()) < 300, path
        long = [n.name for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno >= 40]
        assert not long, f"{path.name}: {long}"
