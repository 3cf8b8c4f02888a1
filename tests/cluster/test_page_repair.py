"""Automatic page repair with real processes: pages of the mirror's page store overwritten with dd are found
(by the scrubber, or by DBCC CHECKMIRROR), fetched from the principal, written back and counted; nothing acknowledged is lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mirrord_testing.localcluster import wait_for

from .helpers import Writer, create_table, db_file, ids_on, wait_synchronized

DB = "shop"
REPAIRED = 5


def fill(node, rows: int = 400) -> None:
    """A table and an index on it, many pages of each."""
    create_table(node, DB)
    node.query("CREATE INDEX t_v ON t(v)", db=DB)
    for i in range(rows):
        node.query("INSERT INTO t(id, v) VALUES (?, ?)", db=DB, params=[i, f"{i:05d}" * 40])


def page_kinds(store: Path) -> dict[int, list[int]]:
    """Page numbers by b-tree page type (13 table leaf, 10 index leaf, ...), read from the file itself."""
    data = store.read_bytes()
    size = int.from_bytes(data[16:18], "big")
    kinds: dict[int, list[int]] = {}
    for pgno in range(2, len(data) // size + 1):
        kinds.setdefault(data[(pgno - 1) * size], []).append(pgno)
    return kinds


def overwrite(store: Path, pages: list[int]) -> None:
    size = int.from_bytes(store.read_bytes()[16:18], "big")
    for pgno in pages:
        subprocess.run(["dd", "if=/dev/urandom", f"of={store}", f"bs={size}", f"seek={pgno - 1}", "count=1",
                        "conv=notrunc,fsync", "status=none"], check=True)


def repairs(node) -> dict[int, dict]:
    rows = node.query(f"SELECT * FROM sys.dm_db_mirroring_auto_page_repair WHERE database = '{DB}'").as_dicts()
    return {r["page_id"]: r for r in rows}


def checkmirror(node) -> dict:
    return node.query(f"DBCC CHECKMIRROR('{DB}')", timeout=120).as_dicts()[0]


def victims(store: Path) -> list[int]:
    """The first table leaf and the first index leaf past page 2: far from where new rows go (the right edge)."""
    kinds = page_kinds(store)
    assert len(kinds.get(13, [])) >= 6 and len(kinds.get(10, [])) >= 6, kinds
    return [kinds[13][0], kinds[10][0]]


def test_the_scrubber_finds_pages_overwritten_while_the_mirror_was_down_and_they_are_repaired_under_load(cluster):
    a, b = cluster["a"], cluster["b"]
    b.extra_args = ["--page-scrub-rate-mb", "20"]
    b.restart()
    cluster.setup_session(DB, principal="a", mirror="b")  # no witness: the principal goes on while b is down
    fill(a)
    wait_synchronized(cluster, DB, "a", "b")
    writer = Writer(a, DB, start=100_000)
    writer.start()
    try:
        wait_for(lambda: writer.acked_count_reaches(50), 30, "50 acknowledged writes")
        b.terminate()  # redo persists its LSN as it stops: the restart does not redo over the damage
        store = db_file(b, DB)
        data_page, index_page = victims(store)
        overwrite(store, [1, data_page, index_page])  # the first page (its header too), a data page, an index page
        b.start()
        wait_for(lambda: all(repairs(b).get(p, {}).get("page_status") == REPAIRED for p in (data_page, index_page)),
                 60, "the data and index pages repaired")
        acked = len(writer.acked)
        wait_for(lambda: len(writer.acked) > acked + 50, 30, "writes go on")
    finally:
        writer.stop()
    wait_synchronized(cluster, DB, "a", "b")
    rows = repairs(b)
    assert set(rows) <= {1, data_page, index_page}, rows  # page 1: found and repaired, unless redo rewrote it first
    assert all(r["error_type"] == 2 and r["page_status"] == REPAIRED and r["modification_time"].endswith("Z")
               for r in rows.values()), rows
    assert repairs(a) == {}  # the principal's copy had nothing to repair
    events = b.query(f"SELECT * FROM sys.database_mirroring_events WHERE database = '{DB}'").as_dicts()
    repaired = [e for e in events if e["event"] == "PAGE_REPAIR" and "repaired" in e["detail"]]
    assert {int(e["detail"].split()[1]) for e in repaired} >= {data_page, index_page}, events
    row = checkmirror(a)
    assert row["result"] == "IDENTICAL", row
    assert set(writer.acked) <= ids_on(a, DB)


def test_pages_dbcc_checkmirror_finds_differing_are_repaired_on_the_mirror(cluster):
    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b")  # the scrubber is off (the default)
    fill(a)
    wait_synchronized(cluster, DB, "a", "b")
    b.terminate()
    store = db_file(b, DB)
    data_page, index_page = victims(store)
    overwrite(store, [data_page, index_page])
    b.start()
    wait_synchronized(cluster, DB, "a", "b")
    row = checkmirror(a)
    assert row["result"] == "DIFFERENT" and row["first_differing_pages"] == ",".join(map(str, sorted([data_page, index_page]))), row
    wait_for(lambda: all(repairs(b).get(p, {}).get("page_status") == REPAIRED for p in (data_page, index_page)),
             60, "the differing pages repaired")
    row = checkmirror(a)
    assert row["result"] == "IDENTICAL", row
    a.query("INSERT INTO t(id, v) VALUES (100000, 'after')", db=DB)
    wait_synchronized(cluster, DB, "a", "b")
    assert checkmirror(a)["result"] == "IDENTICAL"


def test_a_page_overwritten_on_the_principals_disk_fails_statements_clearly_and_is_repaired_from_the_mirror(cluster):
    from mirrorctl.client import ServerError
    import pytest

    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b")  # no witness: a restarted principal stays principal
    fill(a)
    expected = a.query("SELECT id, v FROM t ORDER BY id", db=DB).rows
    by_index = a.query("SELECT v FROM t INDEXED BY t_v WHERE v >= '' ORDER BY v", db=DB).rows
    wait_synchronized(cluster, DB, "a", "b")
    assert a.terminate() == 0  # a clean stop checkpoints everything into the file
    store = db_file(a, DB)
    data_page, index_page = victims(store)
    overwrite(store, [data_page, index_page])
    a.start()
    wait_synchronized(cluster, DB, "a", "b")
    writer = Writer(a, DB, start=100_000)
    writer.start()
    try:
        with pytest.raises(ServerError, match="damaged on this node.*retry in a moment"):
            a.query("SELECT id, v FROM t ORDER BY id", db=DB)  # a statement touching the page: a clear error
        wait_for(lambda: all(repairs(a).get(p, {}).get("page_status") == REPAIRED for p in (data_page, index_page)),
                 60, "the principal's data and index pages repaired")
        acked = len(writer.acked)
        wait_for(lambda: len(writer.acked) > acked + 20, 30, "writes go on")
    finally:
        writer.stop()
    rows = a.query("SELECT id, v FROM t WHERE id < 100000 ORDER BY id", db=DB).rows
    assert rows == expected
    assert a.query("SELECT v FROM t INDEXED BY t_v WHERE v >= '' AND v < 'x' ORDER BY v", db=DB).rows == by_index
    assert repairs(a)[data_page]["error_type"] == repairs(a)[index_page]["error_type"] == 1 and repairs(b) == {}
    events = a.query(f"SELECT * FROM sys.database_mirroring_events WHERE database = '{DB}'").as_dicts()
    assert any(e["event"] == "PAGE_REPAIR" and "of the principal's copy repaired" in e["detail"] for e in events), events
    wait_synchronized(cluster, DB, "a", "b")
    assert checkmirror(a)["result"] == "IDENTICAL"
    assert set(writer.acked) <= ids_on(a, DB)


def test_a_damaged_first_page_on_the_principals_disk_is_repaired_from_the_mirror_at_load(cluster):
    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b")  # no witness: a restarted principal stays principal
    fill(a)
    expected = a.query("SELECT id, v FROM t ORDER BY id", db=DB).rows
    wait_synchronized(cluster, DB, "a", "b")
    assert a.terminate() == 0  # a clean stop checkpoints everything into the file: page 1 is read from it
    overwrite(db_file(a, DB), [1])  # SQLite's header and the schema: the database does not open as it is
    a.start()
    wait_for(lambda: repairs(a).get(1, {}).get("page_status") == REPAIRED, 60, "the principal's page 1 repaired")
    wait_synchronized(cluster, DB, "a", "b")
    writer = Writer(a, DB, start=100_000)
    writer.start()
    try:
        wait_for(lambda: writer.acked_count_reaches(50), 30, "50 acknowledged writes")
    finally:
        writer.stop()
    assert a.query("SELECT id, v FROM t WHERE id < 100000 ORDER BY id", db=DB).rows == expected
    assert repairs(b) == {}
    wait_synchronized(cluster, DB, "a", "b")
    assert checkmirror(a)["result"] == "IDENTICAL"
    assert set(writer.acked) <= ids_on(a, DB)


def test_the_principals_scrubber_finds_pages_overwritten_under_load_and_they_are_repaired_from_the_mirror(cluster):
    a, b = cluster["a"], cluster["b"]
    a.extra_args = ["--page-scrub-rate-mb", "20"]
    a.restart()
    cluster.setup_session(DB, principal="a", mirror="b")
    fill(a)
    expected = a.query("SELECT id, v FROM t ORDER BY id", db=DB).rows
    wait_synchronized(cluster, DB, "a", "b")
    assert a.terminate() == 0  # a clean stop checkpoints: the file holds the pages, not SQLite's WAL
    a.start()
    wait_synchronized(cluster, DB, "a", "b")
    store = db_file(a, DB)
    data_page, index_page = victims(store)
    writer = Writer(a, DB, start=100_000)
    writer.start()
    try:
        wait_for(lambda: writer.acked_count_reaches(50), 30, "50 acknowledged writes")
        overwrite(store, [1, data_page, index_page])  # under the running principal: no statement reads them
        wait_for(lambda: all(repairs(a).get(p, {}).get("page_status") == REPAIRED for p in (data_page, index_page)),
                 60, "the principal's data and index pages repaired")
        acked = len(writer.acked)
        wait_for(lambda: len(writer.acked) > acked + 50, 30, "writes go on")
    finally:
        writer.stop()
    rows = repairs(a)
    assert set(rows) <= {1, data_page, index_page}, rows  # page 1: repaired, unless a checkpoint rewrote it first
    assert all(r["error_type"] == 1 and r["page_status"] == REPAIRED for r in rows.values()), rows
    assert repairs(b) == {}
    assert a.query("SELECT id, v FROM t WHERE id < 100000 ORDER BY id", db=DB).rows == expected
    wait_synchronized(cluster, DB, "a", "b")
    assert checkmirror(a)["result"] == "IDENTICAL"
    assert set(writer.acked) <= ids_on(a, DB)


def test_repairs_waiting_in_the_mirrors_redo_when_it_stops_are_asked_again_when_it_starts(cluster, monkeypatch):
    from mirrord.storage.pagestore import TEST_REDO_RATE_ENV

    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b")  # no witness: a goes on while b is down
    fill(a)
    wait_synchronized(cluster, DB, "a", "b")
    b.terminate()
    store = db_file(b, DB)
    data_page, index_page = victims(store)
    overwrite(store, [data_page, index_page])
    writer = Writer(a, DB, start=100_000)
    writer.start()
    try:
        wait_for(lambda: writer.acked_count_reaches(50), 30, "50 acknowledged writes while b is down")
        monkeypatch.setenv(TEST_REDO_RATE_ENV, "32")  # b's redo trails the principal's log: the images wait for it
        b.extra_args = ["--page-scrub-rate-mb", "20"]
        b.start()  # it has the writes made meanwhile to redo at 32 KB/s: the principal's images are past its redo
        wait_for(lambda: all(repairs(b).get(p, {}).get("page_status") == 4 for p in (data_page, index_page)),
                 60, "both images received, waiting for b's redo to reach their LSN")
        assert b.terminate() == 0  # redo stops before it reaches them: the images are gone with it
        monkeypatch.delenv(TEST_REDO_RATE_ENV)
        b.extra_args = []  # no scrubber now: only the pages b kept as suspect bring the repair back
        b.start()
        wait_for(lambda: all(repairs(b).get(p, {}).get("page_status") == REPAIRED for p in (data_page, index_page)),
                 60, "the pages asked for again and repaired after the restart")
        acked = len(writer.acked)
        wait_for(lambda: len(writer.acked) > acked + 20, 30, "writes go on")
    finally:
        writer.stop()
    wait_synchronized(cluster, DB, "a", "b", timeout=120)
    assert not (db_file(b, DB).parent / "suspect_pages.json").exists()
    events = b.query(f"SELECT * FROM sys.database_mirroring_events WHERE database = '{DB}'").as_dicts()
    assert any("suspect_pages.json" in e["detail"] for e in events), events
    assert checkmirror(a)["result"] == "IDENTICAL"
    assert set(writer.acked) <= ids_on(a, DB)


def test_a_first_page_damaged_under_the_running_principal_fails_statements_clearly_and_is_repaired(cluster):
    from mirrorctl.client import ServerError
    import pytest

    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b")
    fill(a)
    expected = a.query("SELECT id, v FROM t ORDER BY id", db=DB).rows
    wait_synchronized(cluster, DB, "a", "b")
    assert a.terminate() == 0  # a clean stop checkpoints: page 1 is read from the file, not SQLite's WAL
    a.start()
    wait_synchronized(cluster, DB, "a", "b")
    overwrite(db_file(a, DB), [1])  # under the running principal, whose readers have not read page 1 yet
    with pytest.raises(ServerError, match="damaged on this node.*retry in a moment"):
        a.query("SELECT id, v FROM t ORDER BY id", db=DB)  # the session and the node go on
    wait_for(lambda: repairs(a).get(1, {}).get("page_status") == REPAIRED, 60, "the principal's page 1 repaired")
    assert repairs(a)[1]["error_type"] == 1 and repairs(b) == {}
    writer = Writer(a, DB, start=100_000)
    writer.start()
    try:
        wait_for(lambda: writer.acked_count_reaches(50), 30, "50 acknowledged writes")
    finally:
        writer.stop()
    assert a.query("SELECT id, v FROM t WHERE id < 100000 ORDER BY id", db=DB).rows == expected
    wait_synchronized(cluster, DB, "a", "b")
    assert checkmirror(a)["result"] == "IDENTICAL"
    assert set(writer.acked) <= ids_on(a, DB)


def test_a_mirror_copy_whose_first_page_is_damaged_opens_when_a_failover_promotes_it(cluster):
    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b")
    fill(a)
    expected = a.query("SELECT id, v FROM t ORDER BY id", db=DB).rows
    wait_synchronized(cluster, DB, "a", "b")
    b.terminate()
    overwrite(db_file(b, DB), [1])  # no scrubber, no writes after: redo does not rewrite it before the failover
    b.start()
    wait_synchronized(cluster, DB, "a", "b")
    a.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER", timeout=60)
    wait_for(lambda: b.status(DB)["role"] == "PRINCIPAL", 30, "b principal")
    assert b.query("SELECT id, v FROM t ORDER BY id", db=DB).rows == expected
    assert repairs(b)[1]["page_status"] == REPAIRED and repairs(b)[1]["error_type"] == 1
    b.query("INSERT INTO t(id, v) VALUES (100000, 'after')", db=DB)
    wait_synchronized(cluster, DB, "b", "a")
    assert checkmirror(b)["result"] == "IDENTICAL"
