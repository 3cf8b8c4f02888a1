"""Power cuts: a node loses every write it did not fsync, then boots from what it synced.

Every node's data directory is on the power-cut file system (lazyfs). A cut is
SIGKILL, drop of the unsynced writes, remount; nodes cut "together" are all
killed before any of their writes are dropped, as when one power strip goes.
Under a steady stream of writes, after the restart: every acknowledged commit
is on the current principal, the session is SYNCHRONIZED again, the witness
records the same principal and role sequence, the two copies are equal page
for page, and no role sequence had two writers.
"""

from __future__ import annotations

import pytest

from mirrord_testing.localcluster import LocalCluster, wait_for
from mirrorctl.client import ServerError, Unreachable

from .helpers import FailoverWriter, Writer, assert_identical_copies, create_table, ids_on, wait_synchronized

DB = "shop"
START, MORE = 200, 50


def cut_together(cluster: LocalCluster, names: list[str]) -> dict[str, dict]:
    """Kill every named node first, then drop each one's unsynced writes; what each lost."""
    for name in names:
        cluster[name].kill()
    return {name: cluster[name].power_cut() for name in names}


def current_pair(cluster: LocalCluster) -> tuple[str, str]:
    """(principal, mirror) of DB among a and b, once one of them is principal."""
    principal = wait_for(lambda: cluster.principal_of(DB, among=("a", "b")), 60, f"a principal of {DB}")
    return principal.name, "b" if principal.name == "a" else "a"


def wait_acked(writer, count, n: int, what: str, cluster: LocalCluster, dropped: dict) -> None:
    """Wait until count() reaches n; on timeout say what the writer last met and how the nodes stand."""

    def reached() -> bool:
        failure = getattr(writer, "failure", None)
        if failure is not None:
            raise AssertionError(f"the writer stopped on {failure!r} while waiting for {what}\n"
                                 f"{describe(cluster, dropped)}")
        return count() >= n

    try:
        wait_for(reached, 60, what)
    except TimeoutError as exc:
        errors = getattr(writer, "errors", [])[-3:]
        raise AssertionError(f"{exc}\nthe writer's last errors: {errors}\n{describe(cluster, dropped)}") from None


def describe(cluster: LocalCluster, dropped: dict[str, dict]) -> str:
    """What the cut dropped and each node's status, for a failure message."""
    lines = [f"dropped by the cut: {dropped}"]
    for node in cluster:
        try:
            lines.append(f"{node.name}: {node.status(DB)}")
        except (LookupError, ServerError, Unreachable, OSError) as exc:
            lines.append(f"{node.name}: no status ({exc!r})")
    return "\n".join(lines)


@pytest.mark.parametrize("victims", [["a"], ["b"], ["c"], ["a", "b"], ["a", "b", "c"]],
                         ids=["principal", "mirror", "witness", "principal+mirror", "all-three"])
def test_power_cut_under_safety_full_loses_no_acknowledged_commit(lazy_cluster, victims):
    cluster = lazy_cluster
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    create_table(cluster["a"], DB)
    writer = FailoverWriter([cluster["a"], cluster["b"]], DB)
    writer.start()
    try:
        wait_for(lambda: writer.acked_count() >= START, 60, f"{START} acknowledged writes")
        dropped = cut_together(cluster, victims)
        if victims == ["a"]:  # the witness and the mirror still form a quorum: service goes on
            wait_acked(writer, writer.acked_count, writer.acked_count() + MORE,
                       "writes on the new principal during the cut", cluster, dropped)
        for name in victims:
            cluster[name].start()
        wait_acked(writer, writer.acked_count, writer.acked_count() + MORE, "writes after the restart",
                   cluster, dropped)
    finally:
        writer.stop()
    principal, mirror = current_pair(cluster)
    cluster.wait_synchronized(DB, principal, mirror, timeout=60, witness_connected=True)
    wait_synchronized(cluster, DB, principal, mirror, timeout=60)
    missing = writer.ids() - ids_on(cluster[principal], DB)
    assert not missing, (f"{len(missing)} acknowledged commits missing on the principal {principal} "
                         f"after a power cut of {victims}: {sorted(missing)[:20]}\n{describe(cluster, dropped)}")
    writer.assert_single_writer_per_role_sequence()
    role_sequence = cluster[principal].status(DB)["role_sequence"]
    wait_for(lambda: witness_record(cluster) == (cluster[principal].endpoint_url, role_sequence), 30,
             f"the witness to record {principal} as principal in role sequence {role_sequence}")
    assert_identical_copies(cluster, DB, principal, mirror)


def witness_record(cluster: LocalCluster) -> tuple[str, int] | None:
    """(principal endpoint, role sequence) as the witness c records DB."""
    rows = cluster["c"].query("SELECT * FROM sys.database_mirroring_witnesses").as_dicts()
    row = next((r for r in rows if r.get("database") == DB), None)
    return None if row is None else (row.get("principal"), row.get("role_sequence"))


def _write_through_a_power_cut_of(cluster: LocalCluster, node):
    """Writes to node's table t of DB before and after a cut of its power alone; the writer and what the cut dropped."""
    create_table(node, DB)
    writer = Writer(node, DB)
    writer.start()
    try:
        wait_for(lambda: writer.acked_count_reaches(START), 60, f"{START} acknowledged writes")
        dropped = cut_together(cluster, [node.name])
        node.start()
        wait_acked(writer, lambda: len(writer.acked), len(writer.acked) + MORE, "writes after the restart",
                   cluster, dropped)
    finally:
        writer.stop()
    return writer, dropped


def test_power_cut_of_the_principal_under_safety_off_loses_no_acknowledged_commit(lazy_cluster):
    """SAFETY OFF: acknowledged means synced on the principal, whatever the mirror has."""
    cluster = lazy_cluster
    a = cluster["a"]
    cluster.setup_session(DB, principal="a", mirror="b", safety="OFF")
    writer, dropped = _write_through_a_power_cut_of(cluster, a)
    assert a.status(DB)["role"] == "PRINCIPAL"
    missing = set(writer.acked) - ids_on(a, DB)
    assert not missing, (f"{len(missing)} acknowledged SAFETY OFF commits missing after the principal's power cut: "
                         f"{sorted(missing)[:20]}\n{describe(cluster, dropped)}")
    a.query(f"ALTER DATABASE {DB} SET PARTNER SAFETY FULL")
    cluster.wait_synchronized(DB, "a", "b", timeout=60)
    assert_identical_copies(cluster, DB, "a", "b")


def test_power_cut_of_a_standalone_database_loses_no_acknowledged_commit(lazy_cluster):
    cluster = lazy_cluster
    a = cluster["a"]
    a.query(f"CREATE DATABASE {DB}")
    writer, dropped = _write_through_a_power_cut_of(cluster, a)
    missing = set(writer.acked) - ids_on(a, DB)
    assert not missing, (f"{len(missing)} acknowledged standalone commits missing after a power cut: "
                         f"{sorted(missing)[:20]}; dropped by the cut: {dropped}")
