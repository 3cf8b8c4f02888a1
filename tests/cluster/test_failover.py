"""Witness, quorum and role switching with real processes and real faults."""

from __future__ import annotations

import sqlite3
import time

import pytest

from mirrord_testing.localcluster import iptables_available, wait_for
from mirrorctl.client import ServerError

from .helpers import FailoverWriter, assert_identical_copies, create_table, ids_on

DB = "shop"
needs_iptables = pytest.mark.skipif(not iptables_available(), reason="link cuts need root and iptables")


def role(node, db=DB):
    return node.status(db)["role"]


def accepts_write(node, key) -> bool:
    try:
        node.query("INSERT INTO t(id, v) VALUES (?, 'probe')", db=DB, params=[key])
        return True
    except (ServerError, OSError):
        return False


def serves_reads(node) -> bool:
    try:
        node.query("SELECT count(*) FROM t", db=DB)
        return True
    except (ServerError, OSError):
        return False


def settle(cluster, principal, mirror, timeout=30):
    cluster.wait_synchronized(DB, principal, mirror, timeout)
    wait_for(lambda: cluster[mirror].status(DB)["redo_lsn"] == cluster[principal].status(DB)["end_of_log_lsn"], timeout, "mirror redone")


def test_sigkill_principal_fails_over_within_3s_and_rejoins(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")  # PARTNER TIMEOUT stays 10 s
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    writer = FailoverWriter([a, b], DB)
    writer.start()
    wait_for(lambda: writer.acked_count() >= 200, 30, "200 acknowledged writes")
    a.kill()
    killed = time.monotonic()
    wait_for(lambda: accepts_write(b, -1), 10, "b accepts writes as principal")
    took = time.monotonic() - killed
    assert took < 3.0, f"failover took {took:.2f} s"
    assert b.status(DB)["role_sequence"] == 2
    after = writer.acked_count()
    wait_for(lambda: writer.acked_count() >= after + 100, 30, "writes continue on the new principal")
    a.start()  # rejoins by itself as mirror
    wait_for(lambda: a.status(DB)["role"] == "MIRROR", 20, "old principal is mirror")
    writer.stop()
    settle(cluster, "b", "a")
    assert writer.ids() <= ids_on(b, DB)
    writer.assert_single_writer_per_role_sequence()


@pytest.mark.parametrize("fault", ["sigstop", pytest.param("link_cut", marks=needs_iptables)])
def test_isolated_principal_stops_and_mirror_takes_over(cluster, fault):
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", timeout=2)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    writer = FailoverWriter([a, b], DB)
    writer.start()
    wait_for(lambda: writer.acked_count() >= 100, 30, "100 acknowledged writes")
    if fault == "sigstop":
        a.freeze()
    else:
        cluster.isolate("a")
    wait_for(lambda: role(b) == "PRINCIPAL", 15, "b promoted")
    wait_for(lambda: accepts_write(b, -1), 10, "b accepts writes")
    after = writer.acked_count()
    wait_for(lambda: writer.acked_count() >= after + 50, 30, "writes on the new principal")
    if fault == "sigstop":
        a.thaw()
    else:
        assert not accepts_write(a, -2), "the isolated old principal accepted a write"
        cluster.heal_all()
    wait_for(lambda: role(a) == "MIRROR", 20, "old principal steps down and rejoins as mirror")
    writer.stop()
    settle(cluster, "b", "a")
    writer.assert_single_writer_per_role_sequence()
    assert writer.ids() <= ids_on(b, DB)
    promoted_role_sequence = b.status(DB)["role_sequence"]
    assert not [x for x in writer.acked if x[1] == "a" and x[2] >= promoted_role_sequence]


@needs_iptables
def test_isolated_mirror_principal_runs_exposed_then_forced_service_reports_loss(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", timeout=2)
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    create_table(a, DB)
    for i in range(1, 51):
        a.query("INSERT INTO t VALUES (?, 'synced')", db=DB, params=[i])
    cluster.isolate("b")
    wait_for(lambda: a.status(DB)["state"] == "DISCONNECTED", 15, "principal exposed")
    for i in range(51, 101):  # acknowledged alone, after the witness learned the mirror is behind
        a.query("INSERT INTO t VALUES (?, 'exposed')", db=DB, params=[i])
    assert role(b) == "MIRROR"
    cluster.heal_all()
    cluster.wait_synchronized(DB, "a", "b", 30)  # the mirror catches up
    # now the mirror falls behind again, and the principal dies
    cluster.cut("a", "b")
    wait_for(lambda: a.status(DB)["state"] == "DISCONNECTED", 15, "principal exposed again")
    tokens = [a.query("INSERT INTO t VALUES (?, 'only on a')", db=DB, params=[i]) for i in range(101, 131)]
    a.kill()
    cluster.heal_all()
    # no automatic failover to a mirror the witness knows is behind: observe for 3 × timeout
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert role(b) == "MIRROR"
        time.sleep(0.2)
    assert c.query("SELECT mirror_synchronized FROM sys.database_mirroring_witnesses").rows == [[False]]
    b.query(f"ALTER DATABASE {DB} SET PARTNER FORCE_SERVICE_ALLOW_DATA_LOSS")
    assert role(b) == "PRINCIPAL"
    b.query("INSERT INTO t VALUES (1000, 'after forced service')", db=DB)
    a.start()
    wait_for(lambda: a.status(DB)["state"] == "SUSPENDED" and a.status(DB)["lost_transactions"] > 0, 30, "old principal SUSPENDED with a loss report")
    report = a.status(DB)
    assert report["role"] == "MIRROR" and report["lost_transactions"] == 30
    for node in (a, b):  # the old principal still has them in its log, yet they are not in the session's history
        for t in (tokens[0], tokens[-1]):
            answer = node.query(f"EXEC sp_transaction_status '{DB}', {t.lsn}, {t.role_sequence}").as_dicts()[0]
            assert answer["status"] == "LOST", (node.name, answer)
    salvage = sqlite3.connect(report["salvage_path"])
    assert salvage.execute("SELECT count(*) FROM t WHERE v = 'only on a'").fetchone() == (30,)
    salvage.close()
    b.query(f"ALTER DATABASE {DB} SET PARTNER RESUME")
    settle(cluster, "b", "a")
    assert a.status(DB)["lost_transactions"] == 0
    # rolled back to the fork and forward by the pages either side changed since, not copied whole
    assert '"event": "rewound"' in a.log_text() and '"event": "seeded"' not in a.log_text()
    assert_identical_copies(cluster, DB, "b", "a")
    assert ids_on(b, DB) == set(range(1, 101)) | {1000}


def test_witness_lost_changes_nothing_for_the_partners(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", timeout=2)
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    create_table(a, DB)
    c.kill()
    wait_for(lambda: a.status(DB)["witness_state"] == "DISCONNECTED", 15, "principal sees the witness gone")
    wait_for(lambda: b.status(DB)["witness_state"] == "DISCONNECTED", 15, "mirror sees the witness gone")
    for i in range(100):
        a.query("INSERT INTO t VALUES (?, 'no witness')", db=DB, params=[i])
    assert a.status(DB)["state"] == b.status(DB)["state"] == "SYNCHRONIZED"
    c.start()
    wait_for(lambda: a.status(DB)["witness_state"] == "CONNECTED", 15, "witness back")


def test_manual_failover_back_and_forth_twenty_times_under_load(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", timeout=5)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    writer = FailoverWriter([a, b], DB)
    writer.start()
    principal, mirror = a, b
    for n in range(20):
        wait_for(lambda: writer.acked_count() >= 20 * (n + 1), 30, "writes between failovers")
        cluster.wait_synchronized(DB, principal.name, mirror.name, 30)
        principal.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER")
        assert role(principal) == "MIRROR" and role(mirror) == "PRINCIPAL"
        principal, mirror = mirror, principal
    writer.stop()
    settle(cluster, principal.name, mirror.name)
    assert writer.ids() <= ids_on(principal, DB)
    writer.assert_single_writer_per_role_sequence()
    assert principal.status(DB)["role_sequence"] == 21


def test_forced_service_in_high_performance_mode_and_back(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", safety="OFF")
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    for i in range(1, 101):
        a.query("INSERT INTO t VALUES (?, 'both')", db=DB, params=[i])
    settle(cluster, "a", "b")
    a.query("ALTER ENDPOINT mirroring STATE = STOPPED")  # the partners lose each other; a runs on alone
    wait_for(lambda: b.status(DB)["state"] == "DISCONNECTED", 15, "mirror disconnected")
    for i in range(101, 121):
        a.query("INSERT INTO t VALUES (?, 'only on a')", db=DB, params=[i])
    b.query(f"ALTER DATABASE {DB} SET PARTNER FORCE_SERVICE_ALLOW_DATA_LOSS")
    for i in range(200, 210):
        b.query("INSERT INTO t VALUES (?, 'new fork')", db=DB, params=[i])
    a.query("ALTER ENDPOINT mirroring STATE = STARTED")
    wait_for(lambda: a.status(DB)["role"] == "MIRROR" and a.status(DB)["state"] == "SUSPENDED", 30, "old principal rejoins SUSPENDED")
    report = a.status(DB)
    assert report["lost_transactions"] == 20, report
    assert report["salvage_path"]
    b.query(f"ALTER DATABASE {DB} SET PARTNER RESUME")
    settle(cluster, "b", "a")
    assert '"event": "rewound"' in a.log_text()  # only the pages either side changed since the fork travelled
    assert_identical_copies(cluster, DB, "b", "a")
    b.query(f"ALTER DATABASE {DB} SET PARTNER SAFETY FULL")
    cluster.wait_synchronized(DB, "b", "a", 30)
    b.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER")
    assert role(a) == "PRINCIPAL"
    rows = a.query("SELECT id, v FROM t ORDER BY id", db=DB).rows
    assert [r[0] for r in rows] == list(range(1, 101)) + list(range(200, 210))


def test_concurrent_sessions_table_of_the_reference(cluster):
    """Each node is a partner in some sessions and the witness in others; killing one acts per database."""
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    layout = {  # database: (principal, mirror, witness), as the reference's table
        "dba": ("b", "c", "a"),
        "dbb": ("a", "c", "b"),
        "dbc": ("a", "b", "c"),
        "dbd": ("b", "a", "c"),
    }
    for db, (p, m, w) in layout.items():
        cluster.setup_session(db, principal=p, mirror=m, witness=w, timeout=5)
        cluster[p].query("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", db=db)
        cluster[p].query("INSERT INTO t VALUES (1, ?)", db=db, params=[db])
    witnessed = {r["database"] for r in a.query("SELECT * FROM sys.database_mirroring_witnesses").as_dicts()}
    assert witnessed == {"dba"}
    a.kill()
    wait_for(lambda: c.status("dbb")["role"] == "PRINCIPAL", 15, "dbb failed over to c")
    wait_for(lambda: b.status("dbc")["role"] == "PRINCIPAL", 15, "dbc failed over to b")
    wait_for(lambda: b.status("dba")["witness_state"] == "DISCONNECTED", 15, "dba lost only its witness")
    assert b.status("dba")["role"] == "PRINCIPAL" and b.status("dba")["state"] == "SYNCHRONIZED"
    wait_for(lambda: b.status("dbd")["state"] == "DISCONNECTED", 15, "dbd lost its mirror")
    b.query("INSERT INTO t VALUES (2, 'exposed')", db="dbd")  # runs exposed: the witness c is there
    for db, node in (("dbb", c), ("dbc", b)):
        assert node.query("SELECT v FROM t", db=db).rows == [[db]]
    a.start()
    for db, (p, m, w) in {"dbb": ("c", "a", "b"), "dbc": ("b", "a", "c"), "dbd": ("b", "a", "c")}.items():
        cluster.wait_synchronized(db, p, m, 30, witness_connected=True)
    wait_for(lambda: b.status("dba")["witness_state"] == "CONNECTED", 15, "dba's witness back")


@needs_iptables
def test_old_principal_with_unacknowledged_records_rejoins_a_new_principal_that_wrote_nothing(cluster):
    """Regression (nemesis seeds 331 and 11 after the 'not reseeded from the shorter copy' refusal):
    the isolated principal holds records its mirror never hardened (in flight, never acknowledged);
    the mirror is promoted and nothing is written in its new role sequence yet, so its log still
    ends in the old one. The old principal's extra records are past the fork, not a longer copy of
    the new principal's role sequence: it must be rolled back and rejoin, not be refused for good."""
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", timeout=2)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    for i in range(1, 11):
        a.query("INSERT INTO t(id, v) VALUES (?, 'acked')", db=DB, params=[i])
    settle(cluster, "a", "b")
    cluster.isolate("a")
    with pytest.raises((ServerError, OSError)):  # appended on a, never hardened by b: not acknowledged
        a.query("INSERT INTO t(id, v) VALUES (11, 'in flight')", db=DB, timeout=15)
    wait_for(lambda: role(b) == "PRINCIPAL", 15, "b promoted")
    assert a.status(DB)["end_of_log_lsn"] > b.status(DB)["end_of_log_lsn"]
    cluster.heal_all()
    wait_for(lambda: role(a) == "MIRROR", 20, "the old principal steps down")
    cluster.wait_synchronized(DB, "b", "a", timeout=30)
    assert ids_on(b, DB) == set(range(1, 11))


@needs_iptables
def test_forced_service_on_a_copy_that_stepped_down_with_records_of_its_own_reports_every_lost_commit(cluster):
    """The 500-round nemesis's finding (seed 20261201, round 301), step by step.

    a (principal, role sequence 1) is isolated with a commit logged only on itself; b takes over (2) and
    acknowledges commits at the very LSNs a holds its own record at; a hears from the witness that b is
    principal and steps down, still cut from b, its record kept; b dies; a is forced into service (3), its
    fork past its own record. b's commits of role sequence 2 are not in the new history from where 2
    began, not from a's fork: every one of them must be in b's loss report and its salvage copy, and the
    rewind must make the copies identical.
    """
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", timeout=2)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    for i in range(1, 51):
        a.query("INSERT INTO t VALUES (?, 'synced')", db=DB, params=[i])
    settle(cluster, "a", "b")
    cluster.isolate("a")
    try:  # logged (and synced) on a, never hardened by b: in doubt, not acknowledged
        a.query("INSERT INTO t VALUES (60, 'only on a, never acknowledged')", db=DB, timeout=1)
    except (ServerError, OSError):
        pass
    wait_for(lambda: a.status(DB)["end_of_log_lsn"] > b.status(DB)["hardened_lsn"], 10, "a commit logged on a alone")
    wait_for(lambda: role(b) == "PRINCIPAL", 20, "b promoted by automatic failover")
    # PRINCIPAL is persisted before the copy is open (redo finishing): until then SQL hears a retryable
    # not_serving. A read waits that out without logging anything, so b's first commit lands at b_fork + 1
    wait_for(lambda: serves_reads(b), 10, "b open as the principal")
    b_fork = b.status(DB)["fork_lsn"]
    for i in range(200, 210):  # acknowledged by b alone (a is cut off), from LSN b_fork + 1: where a has its own record
        b.query("INSERT INTO t VALUES (?, 'b in role sequence 2')", db=DB, params=[i])
    cluster.heal("a", "c")  # a hears the witness's record, not b
    wait_for(lambda: role(a) == "MIRROR", 20, "a stepped down on the witness's record")
    a_end = a.status(DB)["end_of_log_lsn"]
    assert a_end > b_fork  # its own record of role sequence 1 stands where b's of 2 do
    b.kill()

    def forced() -> bool:
        try:
            a.query(f"ALTER DATABASE {DB} SET PARTNER FORCE_SERVICE_ALLOW_DATA_LOSS")
        except ServerError:
            return False  # the witness still hears b, or has not yet waited a full TIMEOUT
        return True

    wait_for(forced, 30, "forced service on a")
    assert role(a) == "PRINCIPAL" and a.status(DB)["fork_lsn"] == a_end
    cluster.heal_all()
    b.start()
    wait_for(lambda: b.status(DB)["state"] == "SUSPENDED" and b.status(DB)["lost_transactions"] > 0, 30,
             "b SUSPENDED with its loss report")
    report = b.status(DB)
    # from where role sequence 2 began, not from a's fork: all ten of b's acknowledged commits
    assert report["lost_lsn_range"].split("-")[0] == str(b_fork + 1), report
    assert report["lost_transactions"] == 10, report
    salvage = sqlite3.connect(report["salvage_path"])
    assert salvage.execute("SELECT count(*) FROM t WHERE v = 'b in role sequence 2'").fetchone() == (10,)
    salvage.close()
    a.query(f"ALTER DATABASE {DB} SET PARTNER RESUME")
    settle(cluster, "a", "b")
    assert_identical_copies(cluster, DB, "a", "b")
    assert not ids_on(a, DB) & set(range(200, 210))
