"""WAL reader against real SQLite WAL files: capture, identity (I3), resets, damage."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from mirrord.storage.log import LogRecord
from mirrord.storage.pagestore import PageStore
from mirrord.storage.wal import (
    FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    WalPosition,
    WalReader,
    wal_checksum,
    wal_checksum_reference,
)


def open_db(path: Path, page_size: int = 4096) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size={page_size}")
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class Capture:
    """Principal-side capture into a replica page store, like the real principal does."""

    def __init__(self, db: Path, replica: Path) -> None:
        self.reader = WalReader(Path(str(db) + "-wal"))
        self.pos: WalPosition | None = None
        self.store = PageStore(replica)
        self.replica = replica
        self.lsn = 0
        self.txns = []

    def step(self) -> list:
        txns, self.pos = self.reader.read_committed(self.pos)
        records = []
        for t in txns:
            self.lsn += 1
            record = LogRecord(self.lsn, 1, t.db_size, t.page_size, t.pages)
            assert LogRecord.from_wire(record.to_wire()) == record  # within the wire bounds (page <= db_size)
            records.append(record)
        self.store.apply(records)
        self.txns += txns
        return txns

    def replica_bytes(self) -> bytes:
        return self.replica.read_bytes()


def checkpoint_truncate(conn: sqlite3.Connection) -> None:
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0


def assert_identical(conn: sqlite3.Connection, db: Path, cap: Capture) -> None:
    """I3: the replica equals the principal's file after a full checkpoint."""
    cap.step()
    checkpoint_truncate(conn)
    assert cap.replica_bytes() == db.read_bytes()


@pytest.fixture
def env(tmp_path):
    db = tmp_path / "p.db"
    conn = open_db(db)
    cap = Capture(db, tmp_path / "replica.db")
    yield db, conn, cap
    conn.close()
    cap.store.close()


# --- checksum -------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 24, 520, 1032, 4104, 8200, 65544])
@pytest.mark.parametrize("big_endian", [False, True])
def test_fast_checksum_matches_definition(size, big_endian):
    data = os.urandom(size)
    assert wal_checksum(data, 17, 99, big_endian) == wal_checksum_reference(data, 17, 99, big_endian)


# --- capture --------------------------------------------------------------------


def test_small_commits_captured_one_by_one(env):
    db, conn, cap = env
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    assert len(cap.step()) == 1
    frames = cap.pos.frame_count
    for i in range(20):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"row {i}" * 20,))
        txns = cap.step()
        assert len(txns) == 1
        assert cap.pos.frame_count > frames
        frames = cap.pos.frame_count
        pgnos = [p for p, _ in txns[0].pages]
        assert pgnos == sorted(set(pgnos))
        # each transaction's pages are what SQLite now serves: replica == live image
        assert cap.replica_bytes() == conn.serialize()
    assert cap.step() == []  # nothing new: position unchanged
    assert cap.pos.frame_count == frames


def test_position_roundtrips_through_dict(env):
    db, conn, cap = env
    conn.execute("CREATE TABLE t(x)")
    cap.step()
    assert WalPosition.from_dict(cap.pos.to_dict()) == cap.pos


def test_missing_wal_returns_input(tmp_path):
    pos = WalPosition(1, 2, 3, 4, 5, 4096)
    assert WalReader(tmp_path / "nope-wal").read_committed(pos) == ([], pos)
    assert WalReader(tmp_path / "nope-wal").read_committed(None) == ([], None)


def _mixed_workload(conn):
    conn.execute("CREATE TABLE a(id INTEGER PRIMARY KEY, v BLOB)")
    conn.execute("CREATE INDEX a_v ON a(v)")
    for i in range(30):
        conn.execute("INSERT INTO a(v) VALUES (?)", (os.urandom(200 + i * 10),))
    conn.execute("UPDATE a SET v = randomblob(300) WHERE id % 3 = 0")
    conn.execute("DELETE FROM a WHERE id % 2 = 0")


def _shrinking_workload(conn):
    conn.execute("CREATE TABLE b(v BLOB)")
    for _ in range(50):
        conn.execute("INSERT INTO b VALUES (randomblob(3000))")
    conn.execute("DELETE FROM b")
    conn.execute("VACUUM")  # the database shrinks: commit frames carry a smaller size


def _multi_statement_txn(conn):
    conn.execute("CREATE TABLE c(k TEXT PRIMARY KEY, n INT)")
    conn.execute("BEGIN")
    for i in range(200):
        conn.execute("INSERT INTO c VALUES (?, ?)", (f"key{i:05d}" * 5, i))
    conn.execute("UPDATE c SET n = n + 1")
    conn.execute("COMMIT")


@pytest.mark.parametrize("workload", [_mixed_workload, _shrinking_workload, _multi_statement_txn])
def test_page_for_page_identity(env, workload):
    db, conn, cap = env
    workload(conn)
    assert_identical(conn, db, cap)


def test_identity_with_capture_after_every_commit(env):
    db, conn, cap = env
    conn.execute("CREATE TABLE t(v BLOB)")
    for i in range(40):
        conn.execute("INSERT INTO t VALUES (randomblob(?))", (100 + 97 * i,))
        cap.step()
    assert_identical(conn, db, cap)


def test_large_spilled_transaction(env):
    db, conn, cap = env
    conn.execute("PRAGMA cache_size=10")  # forces dirty pages out to the WAL before commit
    conn.execute("CREATE TABLE big(v BLOB)")
    cap.step()
    conn.execute("BEGIN")
    for _ in range(600):
        conn.execute("INSERT INTO big VALUES (randomblob(4000))")
    wal = Path(str(db) + "-wal")
    assert wal.stat().st_size > 1 << 20  # spilled before the commit...
    assert cap.step() == []  # ...and not captured while in flight
    conn.execute("COMMIT")
    txns = cap.step()
    assert len(txns) == 1 and len(txns[0].pages) > 500
    assert_identical(conn, db, cap)


def test_spilled_transaction_that_shrinks_ships_no_page_past_its_size(tmp_path):
    """Pages spilled past the size a transaction commits with are truncated away: not shipped."""
    db = tmp_path / "s.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=FULL")  # a commit that frees pages shrinks the file
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA cache_size=10")
    cap = Capture(db, tmp_path / "replica.db")
    conn.execute("CREATE TABLE t(v BLOB)")
    conn.execute("BEGIN")
    for _ in range(300):
        conn.execute("INSERT INTO t VALUES (randomblob(4000))")
    conn.execute("DELETE FROM t")
    conn.execute("COMMIT")
    txns = cap.step()
    assert txns and all(p <= t.db_size for t in txns for p, _ in t.pages)
    assert_identical(conn, db, cap)
    conn.close()
    cap.store.close()


def test_rolled_back_spill_is_never_returned(env):
    db, conn, cap = env
    conn.execute("PRAGMA cache_size=10")
    conn.execute("CREATE TABLE t(v BLOB)")
    cap.step()
    conn.execute("BEGIN")
    for _ in range(300):
        conn.execute("INSERT INTO t VALUES (randomblob(4000))")
    conn.execute("ROLLBACK")
    for i in range(5):  # overwrite the head of the rolled-back frames
        conn.execute("INSERT INTO t VALUES (?)", (b"small %d" % i,))
    txns = cap.step()
    assert len(txns) == 5
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 5
    assert_identical(conn, db, cap)


def test_wal_reset_by_truncate_checkpoint(env):
    db, conn, cap = env
    conn.execute("CREATE TABLE t(v)")
    conn.execute("INSERT INTO t VALUES (1)")
    cap.step()
    old = cap.pos
    checkpoint_truncate(conn)
    assert cap.step() == []  # empty WAL: nothing, position kept
    conn.execute("INSERT INTO t VALUES (2)")
    txns = cap.step()
    assert len(txns) == 1
    assert (cap.pos.salt1, cap.pos.salt2) != (old.salt1, old.salt2)
    assert cap.pos.frame_count <= old.frame_count  # restarted at frame 0
    assert_identical(conn, db, cap)


@pytest.mark.parametrize("mode", ["PASSIVE", "RESTART"])
def test_wal_restart_without_truncate(env, mode):
    db, conn, cap = env
    conn.execute("CREATE TABLE t(v BLOB)")
    for _ in range(10):
        conn.execute("INSERT INTO t VALUES (randomblob(2000))")
    cap.step()
    old = cap.pos
    busy, frames, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    assert busy == 0 and frames == done
    wal_size = Path(str(db) + "-wal").stat().st_size
    conn.execute("INSERT INTO t VALUES (x'01')")  # rewrites the WAL from frame 0, file not shrunk
    assert Path(str(db) + "-wal").stat().st_size == wal_size
    txns = cap.step()
    assert len(txns) == 1  # the old generation's frames behind it are ignored
    assert cap.pos.salt1 != old.salt1 and cap.pos.frame_count < old.frame_count
    assert_identical(conn, db, cap)


# --- damaged WAL files ------------------------------------------------------------


@pytest.fixture
def wal_copy(tmp_path):
    """A WAL with 6 small commits (captured count, page size) copied while the db is open."""
    db = tmp_path / "d.db"
    conn = open_db(db, page_size=1024)
    conn.execute("CREATE TABLE t(v BLOB)")
    for i in range(5):
        conn.execute("INSERT INTO t VALUES (?)", (bytes([i]) * 300,))
    copy = tmp_path / "copy-wal"
    shutil.copyfile(str(db) + "-wal", copy)
    conn.close()
    return copy


def _frames(path: Path, page_size: int = 1024) -> int:
    return (path.stat().st_size - WAL_HEADER_SIZE) // (FRAME_HEADER_SIZE + page_size)


def test_intact_copy_reads_all(wal_copy):
    txns, pos = WalReader(wal_copy).read_committed(None)
    assert len(txns) == 6 and pos.frame_count == _frames(wal_copy)


def test_torn_wal_yields_committed_prefix(wal_copy):
    full, _ = WalReader(wal_copy).read_committed(None)
    size = wal_copy.stat().st_size
    data = wal_copy.read_bytes()
    for cut in range(0, size, 397):  # many cut points, some mid-frame, some mid-header
        wal_copy.write_bytes(data[:cut])
        txns, pos = WalReader(wal_copy).read_committed(None)
        assert txns == full[: len(txns)]
        if pos is not None:
            assert WAL_HEADER_SIZE + pos.frame_count * (FRAME_HEADER_SIZE + 1024) <= cut


def test_flipped_byte_ends_the_valid_wal(wal_copy):
    full, _ = WalReader(wal_copy).read_committed(None)
    data = bytearray(wal_copy.read_bytes())
    frame = FRAME_HEADER_SIZE + 1024
    last_frame = _frames(wal_copy) - 1
    data[WAL_HEADER_SIZE + last_frame * frame + FRAME_HEADER_SIZE + 100] ^= 0xFF
    wal_copy.write_bytes(bytes(data))
    txns, pos = WalReader(wal_copy).read_committed(None)
    assert txns == full[:-1]
    assert pos.frame_count < last_frame + 1


def test_bad_salt_in_frame_ends_the_valid_wal(wal_copy):
    full, _ = WalReader(wal_copy).read_committed(None)
    data = bytearray(wal_copy.read_bytes())
    data[WAL_HEADER_SIZE + 8] ^= 0x01  # salt-1 of frame 0
    wal_copy.write_bytes(bytes(data))
    assert WalReader(wal_copy).read_committed(None) == ([], None)


@pytest.mark.parametrize("offset", [0, 4, 8, 16, 24])
def test_bad_header_returns_input(wal_copy, offset):
    data = bytearray(wal_copy.read_bytes())
    data[offset] ^= 0x40
    wal_copy.write_bytes(bytes(data))
    pos = WalPosition(1, 2, 0, 3, 4, 1024)
    assert WalReader(wal_copy).read_committed(pos) == ([], pos)
    assert WalReader(wal_copy).read_committed(None) == ([], None)


def test_position_past_end_reads_nothing(wal_copy):
    _, pos = WalReader(wal_copy).read_committed(None)
    data = wal_copy.read_bytes()
    wal_copy.write_bytes(data[: WAL_HEADER_SIZE + 2 * (FRAME_HEADER_SIZE + 1024)])
    assert WalReader(wal_copy).read_committed(pos) == ([], pos)
