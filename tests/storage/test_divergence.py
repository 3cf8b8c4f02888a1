"""A rejoining copy finds where its history parts from a new principal's (net.inbound with core.history) on a real log.

The nemesis's case (seed 20261201, round 301): the copy was promoted to role sequence 103 at LSN 10 and wrote
LSN 11-14; the new principal, forced into service, had forked at LSN 12 with its own records of role sequence
102 at 11 and 12. The copy's records from 11 on are not in the new history: the loss it reports starts at 11,
and the pages it sends to be rewound are those it changed from 11 on.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from mirrord.core import roles
from mirrord.engine import mirror_session
from mirrord.storage.log import DurableLog, LogRecord

PS = 4096


def record(lsn: int, role_sequence: int, pages: list[int]) -> LogRecord:
    return LogRecord(lsn, role_sequence, 8, PS, tuple((p, bytes([lsn % 256]) * PS) for p in pages))


def copy_with(tmp_path: Path, records: list[LogRecord]) -> SimpleNamespace:
    log = DurableLog(tmp_path / "log")
    log.append(records)
    store = tmp_path / "db.sqlite"
    store.touch()
    return SimpleNamespace(log=log, mirror=SimpleNamespace(path=store, redo_lsn=log.last_lsn))


def shared_end(host: SimpleNamespace, hello: dict) -> int | None:
    """What the mirror's hello handling finds: the end of the shared history when this copy diverged, else None."""
    return roles.diverged_end(mirror_session._fork_found(host, hello))


def test_a_copy_that_went_on_in_a_newer_role_sequence_reports_and_rewinds_from_where_it_began(tmp_path):
    host = copy_with(tmp_path, [record(n, 102, [1]) for n in range(1, 11)]
                     + [record(11, 103, [3]), record(12, 103, [4]), record(13, 103, [5]), record(14, 103, [2])])
    hello = {"failover_lsn": 12, "failover_role_sequence": 102, "role_sequence": 104}
    assert shared_end(host, hello) == 10
    assert mirror_session._diverged_pages(host, 10) == [2, 3, 4, 5]  # 3 and 4 too: written at 11 and 12 in 103


def test_an_old_principal_with_records_past_the_fork_still_parts_at_the_fork(tmp_path):
    host = copy_with(tmp_path, [record(n, 102, [1 + n % 3]) for n in range(1, 15)])
    hello = {"failover_lsn": 12, "failover_role_sequence": 102, "role_sequence": 103}
    assert shared_end(host, hello) == 12
    assert mirror_session._diverged_pages(host, 12) == [2, 3]  # written at 13 and 14


def test_a_principal_that_does_not_say_its_forks_role_sequence_is_trusted_as_before(tmp_path):
    host = copy_with(tmp_path, [record(n, 102, [1]) for n in range(1, 11)] + [record(n, 103, [2]) for n in range(11, 15)])
    assert shared_end(host, {"failover_lsn": 12, "role_sequence": 104}) == 12


def test_a_copy_holding_nothing_past_the_shared_history_did_not_diverge(tmp_path):
    host = copy_with(tmp_path, [record(n, 102, [1]) for n in range(1, 11)])
    assert shared_end(host, {"failover_lsn": 12, "failover_role_sequence": 102, "role_sequence": 103}) is None
