"""The package's layers, lowest first: each module imports only from its own layer and those below.

    core     pure decisions: no I/O, no clock (mirrord/core)
    storage  files: the log, the page store, backups (mirrord/storage)
    net      connections and frames only (mirrord/net)
    engine   one database's engines and sessions (mirrord/engine)
    node     the daemon: configuration, listeners, statements, lifecycle (mirrord/*.py)

`mirrorctl` (the client) may use the core's names, the network layer (frames, TLS) and the version,
nothing of a node or its engines; nothing in
`mirrord` or `mirrorctl` imports `mirrord_testing`. Imports under `if TYPE_CHECKING:` are types
for the reader, not dependencies, and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["mirrord.core", "mirrord.storage", "mirrord.net", "mirrord.engine", "mirrord"]
CLIENT_MAY_USE = ("mirrord.core", "mirrord.net", "mirrord.version", "mirrorctl")


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific package holding module."""
    holding = [pkg for pkg in LAYERS if module == pkg or module.startswith(pkg + ".")]
    return LAYERS.index(max(holding, key=len))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(path: Path) -> set[str]:
    """Every module path imports when it runs (inside functions too), fully qualified."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def ours(name: str) -> bool:
    return name == "mirrord" or name.startswith(("mirrord.", "mirrorctl", "mirrord_testing"))


@pytest.mark.parametrize("path", sources("mirrord"), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_daemon_module_imports_only_its_layer_and_below(path):
    me = module_name(path)
    mine = layer_of(me)
    above = sorted(
        name for name in runtime_imports(path)
        if ours(name) and not name.startswith("mirrord_testing") and name.startswith("mirrord")
        and name != "mirrord" and layer_of(name) > mine
        # `from mirrord.engine import x` names the package as well as x: the package itself is not a layer's code
        and name not in LAYERS
    )
    assert not above, f"{me} ({LAYERS[mine]} layer) imports from a layer above it: {above}"
    testing = sorted(name for name in runtime_imports(path) if name.startswith(("mirrord_testing", "mirrorctl")))
    assert not testing, f"{me} imports {testing}: the daemon depends on neither the client nor the test tools"


@pytest.mark.parametrize("path", sources("mirrorctl"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_client_uses_only_the_core_and_the_network_layer(path):
    used = sorted(name for name in runtime_imports(path) if ours(name) and name != "mirrord"
                  and not name.startswith(CLIENT_MAY_USE))
    assert not used, f"{module_name(path)} imports {used}: mirrorctl may use only {CLIENT_MAY_USE}"


def test_the_layers_are_all_there():
    """A module outside every layer would escape the test above."""
    for path in sources("mirrord"):
        me = module_name(path)
        assert me == "mirrord" or any(me.startswith(p + ".") or me == p for p in LAYERS)
    assert {layer_of(module_name(p)) for p in sources("mirrord")} == set(range(len(LAYERS)))
