"""The monitor on real nodes: figures under load, alerts, failover readiness, /metrics, mirrorctl monitor."""

from __future__ import annotations

import json
import urllib.request

from mirrord_testing.localcluster import free_port, wait_for
from mirrorctl import cli
from mirrorctl.client import ServerError

from .helpers import Writer

DB = "shop"
RETRY = (LookupError, ServerError, OSError)


def create_table(node) -> None:
    node.query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", db=DB)


def figure(node, column: str):
    return node.status(DB)[column]


def events(node, name: str) -> list[dict]:
    """The node's structured log events called name."""
    found = []
    for line in node.log_text().splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                found.append(event)
    return found


def test_rates_and_commit_delay_on_both_partners_under_load(cluster, capsys):
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    a, b = cluster["a"], cluster["b"]
    create_table(a)
    writer = Writer(a, DB)
    writer.start()
    try:
        for node in (a, b):
            def busy(node=node) -> bool:
                row = node.status(DB)
                return all((row[c] or 0) > 0 for c in ("send_rate_kb_s", "new_transactions_per_s", "redo_rate_kb_s",
                                                       "transaction_delay_ms", "mirror_commit_overhead_ms", "log_rate_kb_s"))
            wait_for(busy, 20, f"nonzero rates and commit delay on {node.name}", retry_on=RETRY)
            row = node.status(DB)
            assert row["automatic_failover"] == "READY" and row["manual_failover"] == "READY", row
            assert row["forced_failover"] == "NO: the principal is connected; use SET PARTNER FAILOVER on the principal instead"
            assert row["warnings"] is None
        servers = ",".join(n.address for n in cluster)
        assert cli.main(["-S", servers, "monitor", "--once", "--json"]) == 0
    finally:
        writer.stop()
    rows = json.loads(capsys.readouterr().out)
    by_node = {(r["node"], r["role"]) for r in rows}
    assert by_node == {(a.address, "PRINCIPAL"), (b.address, "MIRROR"), (cluster["c"].address, "WITNESS")}
    for row in rows:
        assert row["database"] == DB and row["role_sequence"] == 1


def test_suspended_session_grows_its_send_queue_and_crosses_an_alert(cluster):
    cluster.setup_session(DB, principal="a", mirror="b")
    a, b = cluster["a"], cluster["b"]
    create_table(a)
    a.query(f"EXEC sp_dbmmonitorchangealert '{DB}', 2, 4, 1")  # unsent log over 4 KB
    a.query(f"EXEC sp_dbmmonitorchangealert '{DB}', 3, 1000000, 0")
    helped = a.query(f"EXEC sp_dbmmonitorhelpalert '{DB}'").as_dicts()
    assert [(h["alert_id"], h["threshold"], h["enabled"], h["unit"]) for h in helped] == [(2, 4, True, "KB"), (3, 1000000, False, "KB")]
    try:
        a.query(f"EXEC sp_dbmmonitorchangealert '{DB}', 2, 4, 7")
        raise AssertionError("enabled = 7 was accepted")
    except ServerError as exc:
        assert "enabled must be 1 (on) or 0 (off); found 7" in exc.message
    assert len(a.query(f"EXEC sp_dbmmonitorhelpalert '{DB}'").rows) == 2  # the refused statement changed nothing

    a.query(f"ALTER DATABASE {DB} SET PARTNER SUSPEND")
    sizes = []
    for batch in range(3):
        for i in range(20):
            a.query("INSERT INTO t (id, v) VALUES (?, ?)", db=DB, params=[batch * 100 + i, "x" * 200])
        wait_for(lambda: figure(a, "send_queue_kb") > (sizes[-1] if sizes else 0), 10, "the send queue grows", retry_on=RETRY)
        sizes.append(figure(a, "send_queue_kb"))
    assert sizes == sorted(sizes) and sizes[-1] > 4
    wait_for(lambda: (figure(a, "warnings") or "").startswith("unsent log"), 10, "the warning in status", retry_on=RETRY)
    row = a.status(DB)
    assert row["state"] == "SUSPENDED" and "> 4 KB (alert 2)" in row["warnings"]
    assert row["forced_loss_transactions"] >= 60 and row["forced_loss_bytes"] > 4096
    assert row["oldest_unsent_transaction_s"] > 0 and row["time_to_send_s"] is None  # nothing is being sent
    assert row["manual_failover"].startswith("NO: manual failover needs SAFETY FULL and SYNCHRONIZED; the session is SAFETY FULL, SUSPENDED")
    # the mirror shows the principal's send queue, from its pings
    wait_for(lambda: figure(b, "send_queue_kb") > 4, 10, "the mirror sees the send queue", retry_on=RETRY)
    wait_for(lambda: len(events(a, "mirroring_alert")) >= 1, 10, "the structured warning event")
    for i in range(10):  # still over the threshold: no second event
        a.query("INSERT INTO t (id, v) VALUES (?, ?)", db=DB, params=[1000 + i, "y"])
    alerts = events(a, "mirroring_alert")
    assert len(alerts) == 1, alerts
    assert alerts[0]["level"] == "warning" and alerts[0]["alert_id"] == 2 and alerts[0]["database"] == DB
    assert alerts[0]["threshold"] == 4 and alerts[0]["value"] > 4 and alerts[0]["unit"] == "KB"

    a.query(f"ALTER DATABASE {DB} SET PARTNER RESUME")
    wait_for(lambda: figure(a, "warnings") is None and figure(a, "send_queue_kb") == 0, 20, "the queue drained, the warning cleared",
             retry_on=RETRY)
    wait_for(lambda: len(events(a, "mirroring_alert_cleared")) == 1, 10, "the clearing event")
    assert len(events(a, "mirroring_alert")) == 1


def test_failover_readiness_names_what_is_missing(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", safety="OFF")
    a, b = cluster["a"], cluster["b"]
    wait_for(lambda: figure(b, "safety") == "OFF", 10, "the mirror adopts SAFETY OFF", retry_on=RETRY)
    for node in (a, b):
        row = node.status(DB)
        assert row["automatic_failover"] == "NO: automatic failover needs SAFETY FULL", row
        assert row["manual_failover"].startswith("NO: manual failover needs SAFETY FULL and SYNCHRONIZED; the session is SAFETY OFF")
    a.query(f"ALTER DATABASE {DB} SET PARTNER SAFETY FULL")
    cluster.wait_synchronized(DB, "a", "b", witness_connected=True)
    wait_for(lambda: figure(a, "automatic_failover") == "READY" and figure(a, "manual_failover") == "READY", 10,
             "ready once SAFETY FULL and SYNCHRONIZED", retry_on=RETRY)
    b.kill()
    wait_for(lambda: figure(a, "state") == "DISCONNECTED", 20, "the principal sees its mirror gone", retry_on=RETRY)
    row = a.status(DB)
    assert row["automatic_failover"] == "NO: the mirror is not connected"
    assert row["manual_failover"].startswith("NO: manual failover needs SAFETY FULL and SYNCHRONIZED; the session is SAFETY FULL, DISCONNECTED")
    assert row["forced_failover"].startswith("NO: the principal is connected")


def scrape(url: str) -> dict[str, float]:
    """Every sample line of a /metrics page: 'name{labels}' -> value."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def metric(samples: dict[str, float], name: str, **labels: str) -> float | None:
    """The value of the series with these labels (any order in the text), or None."""
    for key, value in samples.items():
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            return value
    return None


def test_metrics_endpoint_gauges_and_counters(cluster):
    a, b = cluster["a"], cluster["b"]
    urls = {}
    for node in (a, b):
        port = free_port(node.host)
        node.extra_args = ["--metrics", f"{node.host}:{port}"]
        node.terminate()
        node.start()
        urls[node.name] = f"http://{node.host}:{port}/metrics"
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    create_table(a)
    for i in range(20):
        a.query("INSERT INTO t (id, v) VALUES (?, 'm')", db=DB, params=[i])

    def a_metrics_ready() -> bool:
        s = scrape(urls["a"])
        return (metric(s, "mirrord_role", node="a", database=DB, role="PRINCIPAL") == 1
                and metric(s, "mirrord_state", node="a", database=DB, state="SYNCHRONIZED") == 1
                and (metric(s, "mirrord_new_transactions_per_second", node="a", database=DB) or 0) > 0)
    wait_for(a_metrics_ready, 15, "a's gauges", retry_on=(OSError,))
    s = scrape(urls["a"])
    assert metric(s, "mirrord_role", node="a", database=DB, role="MIRROR") == 0
    assert metric(s, "mirrord_send_queue_bytes", node="a", database=DB) is not None
    assert metric(s, "mirrord_failover_ready", node="a", database=DB, kind="automatic") == 1
    assert metric(s, "mirrord_failovers_total", node="a", database=DB) == 0
    assert metric(s, "mirrord_reconnects_total", node="a", database=DB) == 0
    wait_for(lambda: metric(scrape(urls["b"]), "mirrord_role", node="b", database=DB, role="MIRROR") == 1, 10, "b's gauges",
             retry_on=(OSError,))
    assert metric(scrape(urls["b"]), "mirrord_reconnects_total", node="b", database=DB) == 0  # SET PARTNER's probe is not one

    a.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER")
    for name in ("a", "b"):
        wait_for(lambda name=name: metric(scrape(urls[name]), "mirrord_failovers_total", node=name, database=DB) == 1, 15,
                 f"the failover counted on {name}", retry_on=(OSError,))
    wait_for(lambda: metric(scrape(urls["b"]), "mirrord_role", node="b", database=DB, role="PRINCIPAL") == 1, 10,
             "b is principal in its gauges", retry_on=(OSError,))
    try:
        a.query("INSERT INTO t (id, v) VALUES (999, 'refused')", db=DB)
        raise AssertionError("the new mirror took a write")
    except ServerError:
        pass
    wait_for(lambda: metric(scrape(urls["a"]), "mirrord_refused_writes_total", node="a", database=DB, reason="not_principal") == 1,
             10, "the refused write counted", retry_on=(OSError,))
    # a was principal, then took its new principal's connection as mirror: one reconnect
    wait_for(lambda: metric(scrape(urls["a"]), "mirrord_reconnects_total", node="a", database=DB) == 1, 10, "a reconnect counted",
             retry_on=(OSError,))


def test_a_mirror_that_lost_its_principal_shows_what_forced_service_would_lose(cluster):
    cluster.setup_session(DB, principal="a", mirror="b")
    a, b = cluster["a"], cluster["b"]
    create_table(a)
    a.query(f"ALTER DATABASE {DB} SET PARTNER SUSPEND")
    for i in range(30):
        a.query("INSERT INTO t (id, v) VALUES (?, 'unsent')", db=DB, params=[i])
    wait_for(lambda: figure(b, "forced_loss_transactions") >= 30, 10, "the mirror hears of the unsent log", retry_on=RETRY)
    before = b.status(DB)
    assert before["forced_failover"] == "NO: the principal is connected; use SET PARTNER FAILOVER on the principal instead"
    a.kill()
    wait_for(lambda: figure(b, "partner_state") == "DISCONNECTED", 20, "the mirror sees the principal gone", retry_on=RETRY)
    row = b.status(DB)
    assert row["forced_failover"] == "READY"  # no witness: the DBA may force service now
    assert row["automatic_failover"] == "NO: no witness is set (automatic failover needs a witness)"
    assert row["forced_loss_transactions"] >= 30 and row["forced_loss_bytes"] > 0
    assert row["forced_loss_age_s"] >= before["forced_loss_age_s"] > 0  # it keeps ageing
    assert row["send_queue_kb"] == 0 and row["new_transactions_per_s"] is None  # nothing flows from a lost principal


def test_metrics_follow_prometheus_conventions(cluster):
    """Base units, counters left to rate(), a commit latency histogram, build info, the witness's own series."""
    urls = {}
    for node in cluster:
        port = free_port(node.host)
        node.extra_args = ["--metrics", f"{node.host}:{port}"]
        node.terminate()
        node.start()
        urls[node.name] = f"http://{node.host}:{port}/metrics"
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    a = cluster["a"]
    create_table(a)
    for i in range(40):
        a.query("INSERT INTO t (id, v) VALUES (?, ?)", db=DB, params=[i, "x" * 200])
    end = a.status(DB)["end_of_log_lsn"]
    wait_for(lambda: cluster["b"].status(DB)["redo_lsn"] == end, 10, "b redone", retry_on=RETRY)

    def counted() -> dict | None:
        s = scrape(urls["a"])
        ok = ((metric(s, "mirrord_log_hardened_bytes_total", node="a", database=DB) or 0) > 40 * 200
              and metric(s, "mirrord_send_queue_bytes", node="a", database=DB) == 0)  # sampled after b hardened all
        return s if ok else None
    s = wait_for(counted, 10, "a's counters", retry_on=(OSError,))
    names = {key.split("{")[0] for key in s}
    assert not any(n.endswith(("_kb", "_ms", "_kb_s", "_per_s")) for n in names), sorted(names)  # base units only
    assert metric(s, "mirrord_commits_total", node="a", database=DB) >= 41  # CREATE TABLE + 40 INSERTs
    assert metric(s, "mirrord_commit_latency_seconds_count", node="a", database=DB) == metric(s, "mirrord_commits_total", node="a", database=DB)
    assert metric(s, "mirrord_commit_latency_seconds_bucket", node="a", database=DB, le="+Inf") >= 41
    assert metric(s, "mirrord_log_sent_bytes_total", node="a", database=DB) >= metric(s, "mirrord_log_hardened_bytes_total", node="a", database=DB)
    assert metric(s, "mirrord_build_info", node="a") == 1
    wait_for(lambda: (metric(scrape(urls["b"]), "mirrord_log_redone_bytes_total", node="b", database=DB) or 0) > 40 * 200, 10,
             "b's redo counter", retry_on=(OSError,))

    w = scrape(urls["c"])
    assert metric(w, "mirrord_witness_sessions", node="c") == 1
    assert metric(w, "mirrord_witness_partner_connections", node="c", database=DB) == 2
    a.kill()  # b asks c for its vote: granted
    wait_for(lambda: metric(scrape(urls["c"]), "mirrord_witness_votes_total", node="c", database=DB, outcome="granted") == 1, 20,
             "the witness counts its vote", retry_on=(OSError,))
