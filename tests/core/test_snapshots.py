"""Database snapshots, the pure parts: which pages a batch saves, the meta checks, the reader's header, the statement."""

from __future__ import annotations

import pytest

from mirrord.core import rules
from mirrord.core import snapshots as sn
from mirrord.core import statements as st
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import DatabaseStatus, Role, StatementSyntaxError


def never(_: int) -> bool:
    return False


def test_pages_written_by_the_batch_and_within_the_snapshot_are_saved_once_ascending():
    batch = [([3, 1, 9], 9), ([3, 2], 9)]
    assert sn.pages_to_save(batch, 9, 5, never) == [1, 2, 3]  # 9 was not a page of the snapshot


def test_pages_already_saved_are_not_saved_again():
    assert sn.pages_to_save([([1, 2, 3], 3)], 3, 3, lambda p: p == 2) == [1, 3]


def test_pages_a_shrink_cuts_off_are_saved_even_when_the_batch_grows_the_file_again():
    # 8 pages, shrink to 4 (5..8 cut off), then grow to 10 writing only page 10
    assert sn.pages_to_save([([], 4), ([10], 10)], 8, 8, never) == [5, 6, 7, 8]
    # a snapshot of 6 pages saves only its own
    assert sn.pages_to_save([([], 4)], 8, 6, never) == [5, 6]


def test_growth_saves_nothing():
    assert sn.pages_to_save([([11, 12], 12)], 10, 10, never) == []


def meta(**changes) -> dict:
    base = dict(name="snap", database="db", lsn=5, page_size=4096, page_count=10, created="t", role_sequence=1)
    return {**base, **changes}


def test_meta_reads_back_and_bad_values_are_refused():
    assert sn.SnapshotMeta.from_dict(meta()).to_dict() == meta()
    for bad in (meta(name="../x"), meta(page_size=1000), meta(page_count=0), meta(lsn=-1), meta(lsn="5"),
                meta(page_count=True), "not a dict"):
        with pytest.raises(ValueError):
            sn.SnapshotMeta.from_dict(bad)


def test_the_reader_sees_a_rollback_journal_header_and_nothing_else_changes():
    page = bytearray(4096)
    page[18:20] = b"\x02\x02"
    shown = sn.reader_header(bytes(page))
    assert shown[18:20] == b"\x01\x01" and shown[:18] == page[:18] and shown[20:] == page[20:]
    legacy = bytes(4096)
    assert sn.reader_header(legacy) == legacy


def test_names_are_shared_with_databases_and_a_source_with_snapshots_cannot_be_dropped():
    assert "a database named db" in sn.name_refusal("db", ["db"], [])
    assert "DROP DATABASE s first" in sn.name_refusal("s", ["db"], ["s"])
    assert sn.name_refusal("new", ["db"], ["s"]) is None
    assert "(a, b)" in sn.drop_source_refusal("db", ["b", "a"])
    assert sn.drop_source_refusal("db", []) is None


def test_the_statement_parses_and_renders_back():
    stmt = st.parse("create database [snap] as snapshot of shop")
    assert stmt == st.CreateSnapshot("snap", "shop")
    assert st.parse(stmt.to_sql()) == stmt
    assert st.parse("CREATE DATABASE shop") == st.CreateDatabase("shop")
    for bad in ("CREATE DATABASE s AS SNAPSHOT shop", "CREATE DATABASE s AS COPY OF shop", "CREATE DATABASE s AS SNAPSHOT OF"):
        with pytest.raises(StatementSyntaxError):
            st.parse(bad)


def session(role: Role, status: DatabaseStatus, redo_error: str | None = None) -> Session:
    s = Session(SessionConfig("shop", role=role, status=status, partner="tcp://x:1"))
    s.redo_error = redo_error
    return s


def test_a_snapshot_is_made_on_the_mirror_only():
    stmt = st.CreateSnapshot("snap", "shop")
    assert rules.refusal(session(Role.MIRROR, DatabaseStatus.RESTORING), stmt) is None
    assert "does not exist" in rules.refusal(None, stmt)
    assert "issued on the mirror" in rules.refusal(session(Role.PRINCIPAL, DatabaseStatus.ONLINE), stmt)
    assert "restart the node" in rules.refusal(session(Role.MIRROR, DatabaseStatus.RESTORING, "disk died"), stmt)
