"""DBCC CHECKMIRROR with real processes: identical under concurrent writes, and a page overwritten on the mirror's disk found."""

from __future__ import annotations

import subprocess
import urllib.request

import pytest

from mirrord_testing.localcluster import free_port, wait_for
from mirrorctl.client import ServerError

from .helpers import Writer, create_table, db_file, ids_on

DB = "shop"


def checkmirror(node) -> dict:
    return node.query(f"DBCC CHECKMIRROR('{DB}')", timeout=120).as_dicts()[0]


def test_identical_at_one_lsn_while_writes_go_on_and_on_a_schedule(cluster):
    cluster.setup_session(DB, principal="a", mirror="b")  # no witness: a restarted principal stays principal
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    writer = Writer(a, DB)
    writer.start()
    try:
        wait_for(lambda: writer.acked_count_reaches(200), 30, "200 acknowledged writes")
        seen = []
        for _ in range(3):
            before = len(writer.acked)
            row = checkmirror(a)
            assert row["result"] == "IDENTICAL", row
            assert row["pages"] == row["mirror_pages"] > 1 and row["differing_pages"] == 0
            seen.append(row["lsn"])
            wait_for(lambda: len(writer.acked) > before + 20, 30, "writes go on")  # the check stopped nothing
        assert seen == sorted(seen) and len(set(seen)) == 3
        status = a.status(DB)
        assert status["last_verified_lsn"] == seen[-1] and status["checkmirror_mismatches"] == 0
        assert status["last_verified_time"].endswith("Z") and "identical at LSN" in status["last_checkmirror"]

        with pytest.raises(ServerError, match="issue it on the principal"):
            b.query(f"DBCC CHECKMIRROR('{DB}')")
        a.extra_args = ["--checkmirror-interval", "1"]
        a.restart()  # the writer reconnects by itself
        after = len(writer.acked)
        wait_for(lambda: len(writer.acked) > after + 50, 30, "writes resume after the restart")
        first = wait_for(lambda: a.status(DB)["last_verified_lsn"], 30, "a scheduled check")
        wait_for(lambda: a.status(DB)["last_verified_lsn"] > first, 30, "the next scheduled check")
    finally:
        writer.stop()
    assert a.status(DB)["checkmirror_mismatches"] == 0
    assert set(writer.acked) <= ids_on(a, DB)


def test_a_page_overwritten_on_the_mirrors_disk_is_reported(cluster):
    a, b = cluster["a"], cluster["b"]
    metrics = f"{a.host}:{free_port(a.host)}"
    a.extra_args = ["--metrics", metrics]
    a.restart()
    cluster.setup_session(DB, principal="a", mirror="b")
    create_table(a, DB)
    for i in range(300):
        a.query("INSERT INTO t(id, v) VALUES (?, ?)", db=DB, params=[i, "x" * 200])
    wait_for(lambda: b.status(DB)["redo_lsn"] == a.status(DB)["end_of_log_lsn"], 30, "the mirror redone")
    row = checkmirror(a)
    assert row["result"] == "IDENTICAL" and row["pages"] >= 10, row
    principal_rows = a.query("SELECT id, v FROM t ORDER BY id", db=DB).rows

    b.terminate()  # redo persists its LSN as it stops: the restart redoes nothing over the damage
    store = db_file(b, DB)
    page_size = int.from_bytes(store.read_bytes()[16:18], "big")
    victim = 5
    subprocess.run(["dd", "if=/dev/urandom", f"of={store}", f"bs={page_size}", f"seek={victim - 1}", "count=1",
                    "conv=notrunc,fsync", "status=none"], check=True)
    b.start()
    cluster.wait_synchronized(DB, "a", "b", 30)

    row = checkmirror(a)
    assert row["result"] == "DIFFERENT" and row["differing_pages"] == 1, row
    assert row["first_differing_pages"] == str(victim) and row["pages"] == row["mirror_pages"]
    status = a.status(DB)
    assert status["checkmirror_mismatches"] == 1 and f"1 page(s) differ: {victim}" in status["last_checkmirror"]
    events = a.query(f"SELECT * FROM sys.database_mirroring_events WHERE database = '{DB}'").as_dicts()
    assert any(e["event"] == "CHECKMIRROR_MISMATCH" and f"differ: {victim}" in e["detail"] for e in events)
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    assert 'mirrord_checkmirror_mismatches_total{database="shop",node="a"} 1.0' in text
    assert 'mirrord_checkmirror_runs_total{database="shop",node="a",result="identical"} 1.0' in text
    assert 'mirrord_checkmirror_runs_total{database="shop",node="a",result="different"} 1.0' in text
    # the principal's data is untouched, and serves on
    assert a.query("SELECT id, v FROM t ORDER BY id", db=DB).rows == principal_rows
    a.query("INSERT INTO t(id, v) VALUES (1000, 'after')", db=DB)
