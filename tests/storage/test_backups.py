"""BACKUP/RESTORE files: inside the backup directory only, never overwritten, one refusal text."""

from __future__ import annotations

import os
import struct

import msgpack

import pytest

from mirrord.storage import backups


@pytest.fixture
def setup(tmp_path):
    base = tmp_path / "backups"
    base.mkdir()
    snap = tmp_path / "snap.sqlite"
    snap.write_bytes(b"page" * 1024)
    return base, snap, tmp_path


def test_round_trip(setup):
    base, snap, tmp = setup
    dest = backups.write_backup(snap, base, "shop.bak", "shop", 7, 2)
    assert dest == (base / "shop.bak").resolve()
    header = backups.read_backup(base, "shop.bak", tmp / "out")
    assert (header["lsn"], header["role_sequence"]) == (7, 2)
    assert (tmp / "out").read_bytes() == snap.read_bytes()
    assert [p.name for p in base.iterdir()] == ["shop.bak"]  # no temporary file left


def test_a_backup_written_before_the_role_sequence_had_one_name_restores(setup):
    base, snap, tmp = setup
    dest = backups.write_backup(snap, base, "old.bak", "shop", 7, 2)
    raw = dest.read_bytes()
    (hlen,) = struct.unpack(">I", raw[len(backups.MAGIC):len(backups.MAGIC) + 4])
    start = len(backups.MAGIC) + 4
    header = msgpack.unpackb(raw[start:start + hlen])
    header["epoch"] = header.pop("role_sequence")
    packed = msgpack.packb(header)
    dest.write_bytes(raw[:len(backups.MAGIC)] + struct.pack(">I", len(packed)) + packed + raw[start + hlen:])
    assert backups.read_backup(base, "old.bak", tmp / "out")["role_sequence"] == 2
    assert (tmp / "out").read_bytes() == snap.read_bytes()


def test_backup_never_overwrites(setup):
    base, snap, _ = setup
    (base / "taken.bak").write_bytes(b"keep me")
    with pytest.raises(backups.BackupPathRefused):
        backups.write_backup(snap, base, "taken.bak", "shop", 1, 1)
    assert (base / "taken.bak").read_bytes() == b"keep me"


def test_every_refused_path_has_one_message(setup):
    base, snap, tmp = setup
    (tmp / "exists.txt").write_text("secret")
    os.symlink(tmp / "exists.txt", base / "link.bak")
    os.mkfifo(base / "fifo")
    (base / "dir").mkdir()
    restore_msgs = set()
    for text in (str(tmp / "exists.txt"), str(tmp / "missing.txt"), "../exists.txt", "../missing.txt",
                 "link.bak", "missing.bak", "fifo", "dir", "", "/etc/passwd"):
        with pytest.raises(backups.BackupPathRefused) as err:
            backups.read_backup(base, text, tmp / "out")
        restore_msgs.add(str(err.value).replace(repr(text), "PATH"))
    assert len(restore_msgs) == 1, restore_msgs
    backup_msgs = set()
    for text in (str(tmp / "new.bak"), str(tmp / "exists.txt"), "../new.bak", "link.bak", "fifo", "dir",
                 "nodir/x.bak", "/etc/passwd"):
        with pytest.raises(backups.BackupPathRefused) as err:
            backups.write_backup(snap, base, text, "shop", 1, 1)
        backup_msgs.add(str(err.value).replace(repr(text), "PATH"))
    assert len(backup_msgs) == 1, backup_msgs
    assert (tmp / "exists.txt").read_text() == "secret"
    assert not (tmp / "new.bak").exists()


def test_damaged_file_inside_is_reported_as_damaged(setup):
    base, _, tmp = setup
    (base / "junk.bak").write_bytes(b"not a backup")
    with pytest.raises(backups.BackupDamaged):
        backups.read_backup(base, "junk.bak", tmp / "out")
