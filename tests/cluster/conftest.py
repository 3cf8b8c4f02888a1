"""The `cluster` fixture: three real mirrord nodes per test, checked for tracebacks at teardown.

Every test under tests/cluster gets the `cluster` marker, so `-m "not cluster"`
runs the fast suites alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirrord_testing.localcluster import LocalCluster
from mirrord_testing.nemesis.lazyfs import unavailable_reason as lazyfs_unavailable

HERE = Path(__file__).resolve().parent
# Link cuts are iptables rules on these addresses: two test runs at once (say, two
# engineers' checkouts on one machine) must each pick their own range.
FIRST_IP = int(os.environ.get("MIRRORD_TEST_FIRST_IP") or "11")  # unset or empty: 11


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # keep each phase's report on the item, so the fixture's teardown knows if the test failed
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_report_{report.when}", report)


def _log_tails(cluster: LocalCluster, lines: int = 60) -> str:
    return "\n".join(f"----- {node.name} ({node.address}, log {node.log_path}) -----\n{node.log_tail(lines)}"
                     for node in cluster)


@pytest.fixture
def cluster(request, tmp_path):
    """A started LocalCluster of nodes a, b, c on 127.0.0.11-13 (or MIRRORD_TEST_FIRST_IP..+2); stopped (and checked) afterwards."""
    yield from _started(request, LocalCluster(tmp_path / "cluster", first_ip=FIRST_IP))


@pytest.fixture
def lazy_cluster(request, tmp_path):
    """Like `cluster`, every node's data directory on the power-cut file system (skips where FUSE cannot run)."""
    reason = lazyfs_unavailable()
    if reason:
        pytest.skip(f"power cuts need the lazyfs FUSE file system: {reason}")
    yield from _started(request, LocalCluster(tmp_path / "cluster", first_ip=FIRST_IP, lazyfs=True))


def _started(request, local: LocalCluster):
    """Start the cluster, hand it to the test, stop it; fail on tracebacks in the node logs."""
    try:
        local.start_all()
        yield local
    finally:
        local.stop_all()
    report = getattr(request.node, "_report_call", None)
    if report is not None and report.failed:
        print(f"\nnode logs after the failure:\n{_log_tails(local)}")
    found = local.tracebacks()
    if found:
        listing = "\n".join(f"--- {name}:\n" + "\n".join(blocks) for name, blocks in found.items())
        pytest.fail(f"node logs contain tracebacks:\n{listing}\n\nlog tails:\n{_log_tails(local)}", pytrace=False)
