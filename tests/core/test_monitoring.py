"""The monitor's pure parts: rates, commit times, estimates, failover readiness, alerts."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrord.core import messages
from mirrord.core.alerts import ALERTS, MAX_THRESHOLD, alert_refusal
from mirrord.core.monitoring import (
    FIGURE_COLUMNS,
    AlertWatch,
    CommitClock,
    Queues,
    Rates,
    RateWindow,
    Readiness,
    Sample,
    estimate_seconds,
    figures,
    readiness,
    set_threshold,
)
from mirrord.core.alerts import thresholds_from_json
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import DatabaseStatus, ProtocolError, Role, Safety

PARTNER = "tcp://b:5022"
WITNESS = "tcp://c:5022"


# ---------------------------------------------------------------- rate window


def test_no_rates_before_two_samples() -> None:
    w = RateWindow()
    assert w.rates() == Rates()
    w.add(Sample(1.0, transactions=10))
    assert w.rates() == Rates()


def test_rates_are_deltas_over_time() -> None:
    w = RateWindow(span=10)
    w.add(Sample(0.0, transactions=0, logged_bytes=0, sent_bytes=0, hardened_bytes=0, redone_bytes=0, commits=0, commit_wait=0.0))
    w.add(Sample(2.0, transactions=100, logged_bytes=20480, sent_bytes=10240, hardened_bytes=8192, redone_bytes=4096,
                 commits=50, commit_wait=0.1))
    r = w.rates()
    assert r.transactions_per_s == 50
    assert r.log_kb_per_s == 10
    assert r.send_kb_per_s == 5
    assert r.harden_kb_per_s == 4
    assert r.redo_kb_per_s == 2
    assert r.commit_delay_ms == pytest.approx(2.0)  # 100 ms over 50 commits


def test_commit_delay_unknown_without_commits() -> None:
    w = RateWindow()
    w.add(Sample(0.0, commits=5, commit_wait=1.0))
    w.add(Sample(1.0, commits=5, commit_wait=1.0))
    assert w.rates().commit_delay_ms is None
    assert w.rates().transactions_per_s == 0


def test_window_forgets_old_samples_but_keeps_a_base() -> None:
    w = RateWindow(span=5)
    w.add(Sample(0.0, transactions=0))
    w.add(Sample(1.0, transactions=1000))  # a burst long ago
    for t in range(2, 20):
        w.add(Sample(float(t), transactions=1000 + (t - 1)))
    assert w.rates().transactions_per_s == pytest.approx(1.0)
    assert len(w) <= 7


def test_a_counter_going_back_restarts_the_window() -> None:
    w = RateWindow()
    w.add(Sample(0.0, logged_bytes=10_000))
    w.add(Sample(1.0, logged_bytes=20_000))
    w.add(Sample(2.0, logged_bytes=100))  # the engine restarted: its counters began again
    assert len(w) == 1
    assert w.rates() == Rates()
    w.add(Sample(3.0, logged_bytes=1124))
    assert w.rates().log_kb_per_s == pytest.approx(1.0)


def test_a_clock_that_did_not_move_adds_nothing() -> None:
    w = RateWindow()
    w.add(Sample(5.0, transactions=1))
    w.add(Sample(5.0, transactions=9))
    w.add(Sample(4.0, transactions=9))
    assert len(w) == 1


def test_window_span_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateWindow(span=0)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.01, 1e6), st.lists(st.floats(0.01, 2.0), min_size=1, max_size=60), st.floats(1.0, 30.0))
def test_steady_rates_are_measured_exactly(rate: float, gaps: list[float], span: float) -> None:
    w = RateWindow(span=span)
    now, total = 0.0, 0.0
    w.add(Sample(now))
    for gap in gaps:
        now += gap
        total = rate * now
        w.add(Sample(now, transactions=int(total), logged_bytes=int(total)))
    r = w.rates()
    first = rate  # integer truncation costs at most 1 over the window
    assert r.log_kb_per_s * 1024 == pytest.approx(first, rel=1e-6, abs=2 / min(now, span) + 1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.001, 5.0), st.integers(0, 10_000)), min_size=2, max_size=50))
def test_rates_never_negative(steps: list[tuple[float, int]]) -> None:
    w = RateWindow(span=5)
    now = 0.0
    for gap, value in steps:  # counters that may jump around (restarts)
        now += gap
        w.add(Sample(now, transactions=value, logged_bytes=value, sent_bytes=value, hardened_bytes=value, redone_bytes=value))
        r = w.rates()
        for v in (r.transactions_per_s, r.log_kb_per_s, r.send_kb_per_s, r.harden_kb_per_s, r.redo_kb_per_s):
            assert v is None or v >= 0


# ---------------------------------------------------------------- commit clock


def test_commit_clock_gives_the_bucket_time() -> None:
    c = CommitClock(granularity=0.05)
    c.note(1, 10.0)
    c.note(5, 10.01)  # same bucket as LSN 1
    c.note(9, 10.2)
    assert c.committed_at(0) is None
    assert c.committed_at(1) == 10.0
    assert c.committed_at(7) == 10.0
    assert c.committed_at(9) == 10.2
    assert c.committed_at(1000) == 10.2
    assert len(c) == 2


def test_commit_clock_forgets_what_the_mirror_hardened() -> None:
    c = CommitClock(granularity=0.0)
    for lsn, t in ((1, 1.0), (5, 2.0), (9, 3.0)):
        c.note(lsn, t)
    c.forget_through(6)  # 7 is the oldest unsent: it is in the bucket that starts at 5
    assert c.committed_at(7) == 2.0
    c.forget_through(8)
    assert c.committed_at(9) == 3.0
    assert len(c) == 1
    c.forget_through(100)
    assert len(c) == 1  # the last bucket stays: later LSNs may belong to it


def test_commit_clock_restarts_when_the_log_goes_back() -> None:
    c = CommitClock(granularity=0.0)
    c.note(10, 1.0)
    c.note(5, 2.0)  # a fork rolled back: LSN 5 is new
    assert c.committed_at(5) == 2.0
    assert c.committed_at(12) == 2.0
    assert len(c) == 1


def test_commit_clock_is_bounded() -> None:
    c = CommitClock(granularity=0.0, max_buckets=10)
    for i in range(100):
        c.note(i + 1, float(i))
    assert len(c) == 10


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.floats(0.0, 0.2)), min_size=1, max_size=80), st.floats(0.0, 0.1))
def test_commit_clock_never_makes_a_transaction_younger(batches, granularity) -> None:
    c = CommitClock(granularity=granularity)
    truth: dict[int, float] = {}
    lsn, now = 1, 0.0
    for size, gap in batches:
        now += gap
        c.note(lsn, now)
        for i in range(size):
            truth[lsn + i] = now
        lsn += size
    for l, t in truth.items():
        at = c.committed_at(l)
        assert at is not None and t - granularity - 1e-9 <= at <= t


# ---------------------------------------------------------------- estimates and figures


@pytest.mark.parametrize("queue,rate,expected", [
    (0, None, 0.0), (0, 0.0, 0.0), (1024, None, None), (1024, 0.0, None), (10240, 2.0, 5.0), (512, 1.0, 0.5),
])
def test_estimate_seconds(queue, rate, expected) -> None:
    assert estimate_seconds(queue, rate) == expected


READY = Readiness(None, None, "the principal is connected; use SET PARTNER FAILOVER on the principal instead")


def test_figures_of_a_principal() -> None:
    q = Queues(send_queue_bytes=20480, redo_queue_bytes=4096, unsent_transactions=7, oldest_unsent_age=1.25)
    r = Rates(transactions_per_s=100.0, log_kb_per_s=50.0, send_kb_per_s=10.0, harden_kb_per_s=99.0, redo_kb_per_s=2.0, commit_delay_ms=1.234)
    f = figures(Role.PRINCIPAL, True, q, r, READY)
    assert list(f) == FIGURE_COLUMNS
    assert f["send_queue_kb"] == 20.0
    assert f["send_rate_kb_s"] == 10.0  # what the principal sent, not what the mirror hardened
    assert f["time_to_send_s"] == 2.0
    assert f["redo_queue_kb"] == 4.0 and f["time_to_restore_s"] == 2.0 and f["estimated_failover_s"] == 2.0
    assert f["transaction_delay_ms"] == 1.23 and f["mirror_commit_overhead_ms"] == 1.23
    assert f["automatic_failover"] == "READY" and f["manual_failover"] == "READY"
    assert f["forced_failover"].startswith("NO: the principal is connected")
    assert (f["forced_loss_bytes"], f["forced_loss_transactions"], f["forced_loss_age_s"]) == (20480, 7, 1.2)


def test_figures_of_a_mirror_use_what_it_hardened_as_the_send_rate() -> None:
    q = Queues(0, 0, 0, None)
    f = figures(Role.MIRROR, True, q, Rates(send_kb_per_s=0.0, harden_kb_per_s=12.0), READY)
    assert f["send_rate_kb_s"] == 12.0
    assert f["oldest_unsent_transaction_s"] is None
    assert f["time_to_send_s"] == 0.0


def test_a_disconnected_mirror_still_reports_what_forced_service_would_lose() -> None:
    f = figures(Role.MIRROR, True, Queues(0, 0, 3, 4.0, at_risk_bytes=8192), Rates(), READY, sending=False)
    assert (f["send_queue_kb"], f["forced_loss_bytes"], f["forced_loss_transactions"], f["forced_loss_age_s"]) == (0.0, 8192, 3, 4.0)


def test_nothing_sent_while_suspended_or_disconnected() -> None:
    f = figures(Role.PRINCIPAL, True, Queues(10240, 0, 5, 2.0), Rates(send_kb_per_s=100.0), READY, sending=False)
    assert f["send_rate_kb_s"] == 0.0 and f["time_to_send_s"] is None
    f = figures(Role.PRINCIPAL, True, Queues(0, 0, 0, 0.0), Rates(send_kb_per_s=100.0), READY, sending=False)
    assert f["time_to_send_s"] == 0.0


def test_safety_off_adds_no_commit_overhead() -> None:
    f = figures(Role.PRINCIPAL, False, Queues(0, 0, 0, 0.0), Rates(commit_delay_ms=0.5), READY)
    assert f["mirror_commit_overhead_ms"] == 0.0
    assert f["transaction_delay_ms"] == 0.5


def test_figures_without_history() -> None:
    f = figures(Role.PRINCIPAL, True, Queues(2048, 1024, 2, 3.0), Rates(), READY)
    assert f["send_rate_kb_s"] is None and f["time_to_send_s"] is None and f["estimated_failover_s"] is None
    assert f["transaction_delay_ms"] is None


# ---------------------------------------------------------------- readiness


def principal(**changes) -> Session:
    defaults = dict(partner_connected=True, caught_up=True, witness_connected=True)
    observed = {k: changes.pop(k) for k in list(changes) if k in defaults or k == "principal_was_synchronized"}
    s = Session(SessionConfig("shop", **{"role": Role.PRINCIPAL, "partner": PARTNER, "witness": WITNESS, "role_sequence": 1, **changes}))
    for k, v in {**defaults, **observed}.items():
        setattr(s, k, v)
    s.end_of_log_lsn = s.hardened_lsn = 10
    return s


def mirror(**changes) -> Session:
    defaults = dict(partner_connected=True, caught_up=True, witness_connected=True)
    observed = {k: changes.pop(k) for k in list(changes) if k in defaults or k == "principal_was_synchronized"}
    s = Session(SessionConfig("shop", **{"role": Role.MIRROR, "status": DatabaseStatus.RESTORING, "partner": PARTNER,
                                         "witness": WITNESS, "role_sequence": 1, **changes}))
    for k, v in {**defaults, **observed}.items():
        setattr(s, k, v)
    s.end_of_log_lsn = s.hardened_lsn = 10
    return s


def test_synchronized_with_witness_is_ready_for_all_but_forced() -> None:
    for session in (principal(), mirror()):
        r = readiness(session)
        assert r.automatic is None and r.manual is None
        assert r.forced == "the principal is connected; use SET PARTNER FAILOVER on the principal instead"


def test_safety_off_allows_neither_automatic_nor_manual() -> None:
    for session in (principal(safety=Safety.OFF), mirror(safety=Safety.OFF)):
        r = readiness(session)
        assert r.automatic == "automatic failover needs SAFETY FULL"
        assert r.manual.startswith("manual failover needs SAFETY FULL and SYNCHRONIZED; the session is SAFETY OFF")


def test_mirror_disconnected_seen_from_the_principal() -> None:
    r = readiness(principal(partner_connected=False, caught_up=False))
    assert r.automatic == "the mirror is not connected"
    assert "DISCONNECTED" in r.manual
    assert r.forced.startswith("the principal is connected")


def test_principal_lost_seen_from_the_mirror() -> None:
    r = readiness(mirror(partner_connected=False, caught_up=False, principal_was_synchronized=True))
    assert r.automatic is None  # the witness may promote it now
    assert r.forced is None
    assert "DISCONNECTED" in r.manual
    r = readiness(mirror(partner_connected=False, caught_up=False, principal_was_synchronized=False))
    assert r.automatic == "the mirror was not SYNCHRONIZED when it lost the principal"


def test_forced_service_needs_the_witness_when_one_is_set() -> None:
    r = readiness(mirror(partner_connected=False, witness_connected=False, principal_was_synchronized=True))
    assert r.forced == "a witness is set and this mirror cannot reach it; forced service needs mirror and witness connected"
    assert r.automatic == "the witness is not connected"


def test_no_witness_no_automatic_failover() -> None:
    r = readiness(principal(witness=None, witness_connected=False))
    assert r.automatic == "no witness is set (automatic failover needs a witness)"
    assert r.manual is None


def test_suspended_and_synchronizing() -> None:
    r = readiness(principal(suspended=True))
    assert r.automatic == "the session is SUSPENDED"
    assert "SUSPENDED" in r.manual
    r = readiness(principal(caught_up=False))
    assert r.automatic == "the mirror was not SYNCHRONIZED when it lost the principal"
    assert "SYNCHRONIZING" in r.manual


def test_no_session_no_failover() -> None:
    r = readiness(Session(SessionConfig("shop")))
    assert r == Readiness("no mirroring session", "no mirroring session", "no mirroring session")


# ---------------------------------------------------------------- alerts


def test_alert_ids_are_the_references() -> None:
    assert {k: (a.name, a.unit) for k, a in ALERTS.items()} == {
        1: ("oldest unsent transaction", "minutes"), 2: ("unsent log", "KB"),
        3: ("unrestored log", "KB"), 4: ("mirror commit overhead", "ms"),
    }
    assert all(a.figure in FIGURE_COLUMNS for a in ALERTS.values())


@pytest.mark.parametrize("args,message", [
    ((0, 1, 1), "alert_id must be one of 1 (oldest unsent transaction, minutes)"),
    ((5, 1, 1), "found 5"),
    ((2, -1, 1), "threshold must be 0..2147483647 KB; found -1"),
    ((1, MAX_THRESHOLD + 1, 1), "minutes"),
    ((3, 1, 2), "enabled must be 1 (on) or 0 (off); found 2"),
])
def test_alert_refusals(args, message) -> None:
    assert message in alert_refusal(*args)


def test_alert_accepted() -> None:
    assert alert_refusal(4, 0, 0) is None and alert_refusal(1, MAX_THRESHOLD, 1) is None


def test_set_threshold_replaces_and_sorts() -> None:
    t = set_threshold((), 3, 100, True)
    t = set_threshold(t, 1, 5, False)
    t = set_threshold(t, 3, 7, True)
    assert t == ((1, 5, False), (3, 7, True))
    with pytest.raises(ValueError, match="alert_id must be"):
        set_threshold(t, 9, 1, True)
    assert t == ((1, 5, False), (3, 7, True))


def test_thresholds_from_json_keeps_only_good_entries() -> None:
    raw = [[2, 10, True], [9, 1, True], [3, -1, True], [4, 5, 1], "x", [1, True, True], [2, 11, False]]
    assert thresholds_from_json(raw) == ((2, 11, False),)
    assert thresholds_from_json(None) == () and thresholds_from_json({"a": 1}) == ()


def test_session_config_persists_thresholds() -> None:
    cfg = SessionConfig("shop", alerts=((2, 10, True),))
    import json

    assert SessionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SessionConfig.from_dict({"db": "old"}).alerts == ()  # meta.json written before alerts existed


def test_a_crossing_is_reported_once_and_cleared_once() -> None:
    watch = AlertWatch()
    thresholds = ((2, 10, True),)
    assert watch.check({"send_queue_kb": 5.0}, thresholds) == []
    assert watch.warnings() is None
    changes = watch.check({"send_queue_kb": 12.5}, thresholds)
    assert [(c.alert.alert_id, c.value, c.threshold, c.cleared) for c in changes] == [(2, 12.5, 10, False)]
    assert watch.warnings() == "unsent log 12.5 KB > 10 KB (alert 2)"
    assert watch.check({"send_queue_kb": 50.0}, thresholds) == []  # still over: no new event
    assert watch.warnings() == "unsent log 50 KB > 10 KB (alert 2)"  # the value shown is current
    changes = watch.check({"send_queue_kb": 10.0}, thresholds)  # at the threshold is not over it
    assert [(c.alert.alert_id, c.cleared) for c in changes] == [(2, True)]
    assert watch.warnings() is None
    assert len(watch.check({"send_queue_kb": 11.0}, thresholds)) == 1  # a second crossing is a new event


def test_alert_units_and_disabled_and_unknown_figures() -> None:
    watch = AlertWatch()
    thresholds = ((1, 2, True), (3, 0, False), (4, 5, True))
    figs = {"oldest_unsent_transaction_s": 150.0, "redo_queue_kb": 99.0, "mirror_commit_overhead_ms": None}
    changes = watch.check(figs, thresholds)
    assert [(c.alert.alert_id, c.value) for c in changes] == [(1, 2.5)]  # 150 s = 2.5 minutes > 2
    assert "oldest unsent transaction 2.5 minutes > 2 minutes" in watch.warnings()
    changes = watch.check(figs, ())  # thresholds dropped: the warning clears
    assert [c.cleared for c in changes] == [True]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=1, max_size=50), st.integers(0, 100))
def test_events_alternate_crossing_and_clearing(values: list[float], threshold: int) -> None:
    watch = AlertWatch()
    events = []
    for v in values:
        events += [c.cleared for c in watch.check({"redo_queue_kb": v}, ((3, threshold, True),))]
    assert all(a != b for a, b in zip(events, events[1:]))
    if events:
        assert events[0] is False
    assert (watch.warnings() is not None) == (round(values[-1], 2) > threshold)


# ---------------------------------------------------------------- wire


def test_ping_and_pong_carry_checked_figures() -> None:
    assert messages.validate({"t": "ping", "seq": 1})  # still optional
    assert messages.validate({"t": "pong", "seq": 1, "monitor": {"redo_rate_kb_s": 1.5, "x": None, "n": 3}})
    for bad in ({"a": True}, {"a": math.nan}, {"a": math.inf}, {"a": "1"}, [1], {"": 1}, {str(i): 1 for i in range(33)}):
        with pytest.raises(ProtocolError, match="field 'monitor'"):
            messages.validate({"t": "ping", "seq": 1, "monitor": bad})


# ---------------------------------------------------------------- config and mirrorctl pieces


def test_metrics_option_is_validated() -> None:
    from mirrord.node_config import NodeConfig

    base = {"name": "a", "data_dir": "/tmp/x", "endpoint": "127.0.0.1:5022", "listen": "127.0.0.1:1433", "insecure": True}
    assert NodeConfig._validated(base).metrics is None  # off unless asked for
    assert str(NodeConfig._validated({**base, "metrics": "127.0.0.1:9187"}).metrics) == "tcp://127.0.0.1:9187"
    for bad in ("9187", "host:0", "host:http", 9187):
        with pytest.raises(ValueError, match="metrics must be HOST:PORT"):
            NodeConfig._validated({**base, "metrics": bad})


def test_failover_ready_cell() -> None:
    from mirrorctl.cli import failover_ready

    assert failover_ready({"automatic_failover": "READY", "manual_failover": "READY", "forced_failover": "NO: x"}) == "automatic, manual"
    assert failover_ready({"automatic_failover": "NO: a", "manual_failover": "NO: b", "forced_failover": "NO: c"}) == "none"
    assert failover_ready({"state": "SYNCHRONIZED"}) is None  # an older server


@pytest.mark.parametrize("argv", [
    ["-S", "h:1", "status", "--once"],
    ["-S", "h:1", "-Q", "x", "--interval", "5"],
    ["-S", "h:1,nohost", "monitor"],
    ["-S", ",", "monitor"],
    ["-S", "h:1", "monitor", "--interval", "0"],
])
def test_monitor_usage_errors(argv, capsys) -> None:
    from mirrorctl import cli

    assert cli.main(argv) == 2
    assert "usage" in capsys.readouterr().err


def test_monitor_reports_unreachable_nodes(capsys) -> None:
    from mirrord_testing.localcluster import free_port
    from mirrorctl import cli

    dead = f"127.0.0.1:{free_port('127.0.0.1')}"
    assert cli.main(["-S", dead, "monitor", "--once", "--json", "--timeout", "1"]) == 3
    rows = json.loads(capsys.readouterr().out)
    assert [(r["node"], r["state"]) for r in rows] == [(dead, "UNREACHABLE")]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([Role.PRINCIPAL, Role.MIRROR]), st.sampled_from(Safety), st.booleans(), st.booleans(), st.booleans(),
       st.booleans(), st.booleans(), st.booleans())
def test_readiness_says_what_the_statements_say(role, safety, witness_set, suspended, connected, caught_up, witness_connected,
                                                 was_synchronized) -> None:
    from mirrord.core import statements as stmts
    from mirrord.core.rules import refusal

    status = DatabaseStatus.ONLINE if role is Role.PRINCIPAL else DatabaseStatus.RESTORING
    s = Session(SessionConfig("shop", role=role, status=status, partner=PARTNER, witness=WITNESS if witness_set else None,
                              safety=safety, suspended=suspended, role_sequence=1))
    s.partner_connected, s.caught_up = connected, caught_up and connected
    s.witness_connected, s.principal_was_synchronized = witness_connected and witness_set, was_synchronized
    s.end_of_log_lsn, s.hardened_lsn = 10, 10 if caught_up else 7
    r = readiness(s)
    if role is Role.PRINCIPAL:
        assert r.manual == refusal(s, stmts.PartnerAction("shop", "FAILOVER"))  # the same words as the refusal
    else:
        assert r.forced == refusal(s, stmts.PartnerAction("shop", "FORCE_SERVICE_ALLOW_DATA_LOSS"))
    if r.automatic is None:  # automatic failover is never promised where its conditions fail
        assert safety is Safety.FULL and witness_set and witness_connected and not suspended and (connected or role is Role.MIRROR)
