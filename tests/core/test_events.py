"""The event history's pure core: the record, its line form and checks, retention, the merge by time."""

from __future__ import annotations

import json

import pytest

from mirrord.core import events as ev

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def test_time_is_utc_iso_with_milliseconds_and_reads_back():
    assert ev.utc_text(T0 + 0.1234) == "2027-01-15T08:00:00.123Z"
    assert ev.seconds_of(ev.utc_text(T0 + 0.5)) == pytest.approx(T0 + 0.5)
    for bad in ("2027-01-15 08:00:00", "2027-01-15T08:00:00.123", 12, None, "2027-13-15T08:00:00.123Z"):
        with pytest.raises(ValueError):
            ev.seconds_of(bad)


def test_a_record_round_trips_through_its_line():
    item = ev.make(T0, "a", "shop", "PROMOTED", role="PRINCIPAL", state="DISCONNECTED", role_sequence=2, lsn=41,
                   detail="witness vote granted — ünïcode", seq=7)
    line = ev.to_line(item)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert ev.from_line(line) == item
    assert item.row() == {"time": "2027-01-15T08:00:00.000Z", "node": "a", "database": "shop", "event": "PROMOTED",
                          "role": "PRINCIPAL", "state": "DISCONNECTED", "role_sequence": 2, "lsn": 41,
                          "detail": "witness vote granted — ünïcode"}


def test_an_unknown_event_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown event"):
        ev.make(T0, "a", "shop", "PROMOTD")


def test_a_long_detail_is_cut_to_the_limit():
    item = ev.make(T0, "a", None, "NODE_STARTED", detail="x" * 10_000)
    assert len(item.detail) == ev.MAX_DETAIL
    assert ev.from_line(ev.to_line(item)) == item


def _line(**changes) -> bytes:
    d = json.loads(ev.to_line(ev.make(T0, "a", "shop", "SUSPEND", role="PRINCIPAL", role_sequence=1, lsn=5)))
    d.update(changes)
    return json.dumps(d).encode()


@pytest.mark.parametrize("line", [
    b"", b"{", b"[1, 2]", b"\xff\xfe", b'"text"',
    _line(time="yesterday"), _line(time=None), _line(event="DROP TABLE"), _line(event=3),
    _line(node=None), _line(node="n" * 201), _line(database=5), _line(role=["x"]),
    _line(role_sequence=-1), _line(role_sequence=True), _line(role_sequence=2**63), _line(lsn="5"), _line(lsn=1.5),
    _line(detail=None), _line(detail="d" * (ev.MAX_DETAIL + 1)), _line(seq=-3),
])
def test_every_field_read_back_is_checked(line):
    with pytest.raises(ValueError):
        ev.from_line(line)


def test_optional_fields_may_be_absent_or_null():
    item = ev.from_line(_line(database=None, role=None, state=None, role_sequence=None, lsn=None))
    assert (item.database, item.role, item.state, item.role_sequence, item.lsn) == (None, None, None, None, None)


def test_retention_keeps_the_newest_within_the_age():
    items = [ev.make(T0 + i * 60, "a", "shop", "ALERT", seq=i) for i in range(10)]  # one a minute
    now = T0 + 9 * 60
    assert ev.retained(items, 100, 3600, now) == items
    assert ev.retained(items, 3, 3600, now) == items[-3:]
    assert ev.retained(items, 100, 150, now) == items[-3:]  # 2.5 minutes: the events at 0, 1 and 2 minutes ago
    assert ev.retained(items, 2, 150, now) == items[-2:]
    assert ev.retained(items, 100, 3600, now + 7200) == []


def test_merge_orders_by_time_then_node_keeping_each_nodes_order():
    a = [{"time": "2027-01-15T08:00:00.000Z", "node": "a", "event": "STEPPED_DOWN"},
         {"time": "2027-01-15T08:00:02.000Z", "node": "a", "event": "STATE_CHANGE", "detail": "first"},
         {"time": "2027-01-15T08:00:02.000Z", "node": "a", "event": "STATE_CHANGE", "detail": "second"}]
    b = [{"time": "2027-01-15T08:00:01.000Z", "node": "b", "event": "PROMOTED"},
         {"time": "2027-01-15T08:00:02.000Z", "node": "b", "event": "PARTNER_CONNECTED"}]
    c = [{"time": "2027-01-15T07:59:59.000Z", "node": "c", "event": "WITNESS_VOTE"}]
    out = ev.merged([a, b, c])
    assert [(r["node"], r["event"], r.get("detail")) for r in out] == [
        ("c", "WITNESS_VOTE", None), ("a", "STEPPED_DOWN", None), ("b", "PROMOTED", None),
        ("a", "STATE_CHANGE", "first"), ("a", "STATE_CHANGE", "second"), ("b", "PARTNER_CONNECTED", None)]
    assert ev.merged([]) == [] and ev.merged([[], []]) == []
