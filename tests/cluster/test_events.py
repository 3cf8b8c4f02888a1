"""The event history with real processes: recorded where it happened, kept across restarts, merged by mirrorctl."""

from __future__ import annotations

import json
import re

from mirrord_testing.localcluster import wait_for
from mirrorctl import cli

from .helpers import create_table

DB = "shop"


def events(node, db=DB) -> list[dict]:
    return node.query(f"SELECT * FROM sys.database_mirroring_events WHERE database = '{db}'").as_dicts()


def kinds(node, db=DB) -> list[str]:
    return [e["event"] for e in events(node, db)]


def history(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_failover_and_suspend_resume_are_in_every_nodes_history_after_restarts(cluster, capsys):
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    create_table(a, DB)
    a.query(f"ALTER DATABASE {DB} SET PARTNER SUSPEND")
    wait_for(lambda: b.status(DB)["state"] == "SUSPENDED", 15, "the mirror SUSPENDED")
    a.query("INSERT INTO t(id, v) VALUES (1, 'while suspended')", db=DB)
    a.query(f"ALTER DATABASE {DB} SET PARTNER RESUME")
    cluster.wait_synchronized(DB, "a", "b", 30)
    a.kill()
    wait_for(lambda: b.status(DB)["role"] == "PRINCIPAL", 15, "b promoted by the witness's vote")
    a.start()
    wait_for(lambda: a.status(DB)["role"] == "MIRROR", 20, "the old principal rejoins as mirror")
    cluster.wait_synchronized(DB, "b", "a", 30)
    for node in (a, b, c):
        node.restart()
    cluster.wait_synchronized(DB, "b", "a", 30, witness_connected=True)

    on_a, on_b, on_c = events(a), events(b), events(c)
    ka, kb, kc = [e["event"] for e in on_a], [e["event"] for e in on_b], [e["event"] for e in on_c]
    # the principal's statements, then its step down when it came back after the kill
    assert ka.index("SUSPEND") < ka.index("RESUME") < ka.index("STEPPED_DOWN"), ka
    stepped = next(e for e in on_a if e["event"] == "STEPPED_DOWN")
    assert (stepped["role"], stepped["role_sequence"]) == ("MIRROR", 2), stepped
    # the mirror adopted SUSPENDED and RESUME from its principal, saw its state change, then was promoted
    assert kb.index("SUSPEND") < kb.index("RESUME") < kb.index("PROMOTED"), kb
    assert any(e["event"] == "STATE_CHANGE" and e["state"] == "SUSPENDED" for e in on_b)
    promoted = next(e for e in on_b if e["event"] == "PROMOTED")
    assert (promoted["role"], promoted["role_sequence"]) == ("PRINCIPAL", 2), promoted
    assert "witness" in promoted["detail"]
    assert "PARTNER_CONNECTED" in kb[kb.index("PROMOTED"):]  # the old principal reconnected as its mirror
    # the witness: its vote and the record it changed
    vote = next(e for e in on_c if e["event"] == "WITNESS_VOTE")
    assert vote["role_sequence"] == 2 and b.endpoint_url in vote["detail"] and vote["role"] == "WITNESS"
    assert any(e["event"] == "WITNESS_RECORD" and e["role_sequence"] == 2 for e in on_c), kc
    # three starts of a (the first, after the kill, after the restart) are in the node's own events
    node_events = a.query("SELECT event, detail FROM sys.database_mirroring_events").as_dicts()
    assert sum(e["event"] == "NODE_STARTED" for e in node_events) == 3
    for rows in (on_a, on_b, on_c):
        assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
        assert all(r["time"].endswith("Z") for r in rows)

    servers = ",".join(n.address for n in (a, b, c))
    code, out, err = history(capsys, "-S", servers, "history", "-d", DB, "--json")
    assert (code, err) == (0, "")
    merged = json.loads(out)
    got = [(r["node"], r["time"], r["event"]) for r in merged]
    assert len(got) == len(set(got))  # nothing twice
    # everything each node said is there; the nodes may have recorded more since (a reconnect, a state change)
    assert {(r["node"], r["time"], r["event"]) for r in on_a + on_b + on_c} <= set(got)
    assert [r["time"] for r in merged] == sorted(r["time"] for r in merged)
    assert {r["node"] for r in merged} == {"a", "b", "c"}
    order = [(r["node"], r["event"]) for r in merged]
    assert order.index(("c", "WITNESS_VOTE")) < order.index(("b", "PROMOTED")) < order.index(("a", "STEPPED_DOWN"))

    code, out, err = history(capsys, "-S", servers, "history", "-d", DB, "--last", "5")
    assert code == 0 and err == "" and "role_sequence" in out
    assert len(re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out)) == 5  # one time per row

    c.terminate()
    code, out, err = history(capsys, "-S", servers, "history", "-d", DB, "--json")
    assert code == 1 and c.address in err  # a partial history says whose events are missing
    assert {r["node"] for r in json.loads(out)} == {"a", "b"}


def test_forced_service_and_its_loss_report_survive_restarts(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", safety="OFF")
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    for i in range(1, 11):
        a.query("INSERT INTO t VALUES (?, 'both')", db=DB, params=[i])
    wait_for(lambda: b.status(DB)["redo_lsn"] == a.status(DB)["end_of_log_lsn"], 30, "the mirror redone")
    a.query("ALTER ENDPOINT mirroring STATE = STOPPED")  # the partners lose each other; a runs on alone
    wait_for(lambda: b.status(DB)["state"] == "DISCONNECTED", 15, "mirror disconnected")
    for i in range(11, 16):
        a.query("INSERT INTO t VALUES (?, 'only on a')", db=DB, params=[i])
    b.query(f"ALTER DATABASE {DB} SET PARTNER FORCE_SERVICE_ALLOW_DATA_LOSS")
    a.query("ALTER ENDPOINT mirroring STATE = STARTED")
    wait_for(lambda: a.status(DB)["role"] == "MIRROR" and a.status(DB)["state"] == "SUSPENDED", 30, "old principal rejoins SUSPENDED")
    fork = b.status(DB)["fork_lsn"]
    a.restart()
    b.restart()

    forced = [e for e in events(b) if e["event"] == "FORCED_SERVICE"]
    assert len(forced) == 1 and forced[0]["lsn"] == fork and forced[0]["role"] == "PRINCIPAL", forced
    assert "FORCE_SERVICE_ALLOW_DATA_LOSS" in forced[0]["detail"]
    loss = [e for e in events(a) if e["event"] == "DATA_LOSS"]
    assert len(loss) == 1, events(a)
    assert f"LSN {fork + 1}-" in loss[0]["detail"] and "(5 transactions)" in loss[0]["detail"], loss
    assert a.status(DB)["salvage_path"] in loss[0]["detail"]
    states = [(e["role"], e["state"]) for e in events(a) if e["event"] == "STATE_CHANGE"]
    assert ("MIRROR", "SUSPENDED") in states, states
    assert "STEPPED_DOWN" in kinds(a)
