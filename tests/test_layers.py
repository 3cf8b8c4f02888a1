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

import pytest

from tests.import_graph import imports, modules

LAYERS = ["mirrord.core", "mirrord.storage", "mirrord.net", "mirrord.engine", "mirrord"]
CLIENT_MAY_USE = ("mirrord.core", "mirrord.net", "mirrord.version", "mirrorctl")
KNOWN = modules(("mirrord", "mirrorctl", "mirrord_testing"))


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific package holding module."""
    holding = [pkg for pkg in LAYERS if module == pkg or module.startswith(pkg + ".")]
    return LAYERS.index(max(holding, key=len))


def runtime_imports(name: str) -> set[str]:
    return imports(name, KNOWN[name], KNOWN, runtime_only=True)


def of_package(package: str) -> list[str]:
    return sorted(name for name in KNOWN if name == package or name.startswith(package + "."))


@pytest.mark.parametrize("me", of_package("mirrord"))
def test_a_daemon_module_imports_only_its_layer_and_below(me):
    mine = layer_of(me)
    used = runtime_imports(me)
    # `from mirrord.engine import x` names the package as well as x: the package itself is not a layer's code
    above = sorted(name for name in used if name.startswith("mirrord.") and name not in LAYERS and layer_of(name) > mine)
    assert not above, f"{me} ({LAYERS[mine]} layer) imports from a layer above it: {above}"
    others = sorted(name for name in used if name.startswith(("mirrord_testing", "mirrorctl")))
    assert not others, f"{me} imports {others}: the daemon depends on neither the client nor the test tools"


@pytest.mark.parametrize("me", of_package("mirrorctl"))
def test_the_client_uses_only_the_core_and_the_network_layer(me):
    used = sorted(name for name in runtime_imports(me) if name != "mirrord" and not name.startswith(CLIENT_MAY_USE))
    assert not used, f"{me} imports {used}: mirrorctl may use only {CLIENT_MAY_USE}"


def test_the_layers_are_all_there():
    """A module outside every layer would escape the test above."""
    assert {layer_of(name) for name in of_package("mirrord")} == set(range(len(LAYERS)))


def test_type_checking_imports_are_not_dependencies_but_others_are():
    used = runtime_imports("mirrord.engine.role_change")
    assert "mirrord.node_services" not in used  # under `if TYPE_CHECKING:` only
    assert "mirrord.engine.mirror_session" in used and "mirrord.core.roles" in used
