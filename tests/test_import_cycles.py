"""No import cycle in mirrord/ and mirrorctl/ (every import counts: module level, in functions, TYPE_CHECKING).

There is none: the parts under the node (net/, role changes, statements, the
monitor, the witness) reach it through the interface in mirrord/node_services.py,
never by importing mirrord.node. The test fails on any cycle.
"""

from __future__ import annotations

from tests.import_graph import imports, modules

PACKAGES = ("mirrord", "mirrorctl")


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    known = modules(PACKAGES)
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert [sorted(cycle) for cycle in _cycles(graph)] == []


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert _cycles({"a": {"b"}, "b": set()}) == []
