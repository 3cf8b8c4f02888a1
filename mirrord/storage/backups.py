"""Backup files: only inside the backup directory, never overwritten, one refusal for every bad path.

A backup file is `MAGIC, u32 header length, msgpack header {db, lsn, role_sequence,
size, crc}, the database image`. BACKUP and RESTORE name a file relative to
the node's backup directory (`--backup-dir`, default DATA_DIR/backups), or
an absolute path below it. Why so strict: a client that could name any path
could overwrite any file the daemon may write, and a RESTORE that answered
"no such file" and "not a backup" differently would tell it which files exist
anywhere. So every path that is refused — outside the directory, through a
link leading out, missing, not a regular file, or (for BACKUP) already there —
gets the same `BackupPathRefused` message, which depends only on the verb.

BACKUP writes a hidden temporary file next to the target, fsyncs it, then
`link`s it to the target name: link fails if the name exists, so a backup
never replaces a file, not even one created meanwhile. RESTORE opens with
O_NOFOLLOW|O_NONBLOCK and checks it opened a regular file (a FIFO would hang).
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import msgpack

from mirrord.core.names import PathOutside, inside
from mirrord.storage.fileutil import fsync_dir

MAGIC = b"MIRRORD-BACKUP\x01"
_CHUNK = 1 << 20


class BackupPathRefused(ValueError):
    """A BACKUP or RESTORE path that is not allowed (one message for every reason)."""


class BackupDamaged(ValueError):
    """A file inside the backup directory that is not a whole mirrord backup."""


def refusal(verb: str, text: str, base: Path) -> BackupPathRefused:
    """The one error for every refused path of a verb (BACKUP or RESTORE)."""
    what = "a new file" if verb == "BACKUP" else "an existing backup file"
    return BackupPathRefused(
        f"{verb} path {text!r} is refused: {verb} uses only {what} inside the backup directory {base} "
        "(a name relative to it, or an absolute path below it, with no link leading out); "
        "the node's --backup-dir sets that directory"
    )


def resolve(base: Path, text: str, verb: str) -> Path:
    """The path text names inside base; BackupPathRefused if it leaves base."""
    if not text or "\x00" in text:
        raise refusal(verb, text, base)
    try:
        return inside(base, text)
    except (PathOutside, OSError, ValueError):
        raise refusal(verb, text, base) from None


def write_backup(snapshot: Path, base: Path, text: str, db: str, lsn: int, role_sequence: int) -> Path:
    """Write snapshot as a backup at text (inside base), never replacing a file; return the path."""
    dest = resolve(base, text, "BACKUP")
    if dest.exists() or dest.is_symlink() or not dest.parent.is_dir():
        raise refusal("BACKUP", text, base)
    data_crc, size = 0, snapshot.stat().st_size
    with open(snapshot, "rb") as f:
        while chunk := f.read(_CHUNK):
            data_crc = zlib.crc32(chunk, data_crc)
    header = msgpack.packb({"db": db, "lsn": lsn, "role_sequence": role_sequence, "size": size, "crc": data_crc})
    tmp = dest.with_name(f".{dest.name}.partial.{os.getpid()}")
    try:
        with open(tmp, "xb") as out, open(snapshot, "rb") as f:
            out.write(MAGIC + struct.pack(">I", len(header)) + header)
            while chunk := f.read(_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, dest)  # fails if dest exists: a backup never replaces a file
        except FileExistsError:
            raise refusal("BACKUP", text, base) from None
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def read_backup(base: Path, text: str, dest: Path) -> dict:
    """Copy the image of the backup at text (inside base) to dest; return its header."""
    src = resolve(base, text, "RESTORE")
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise refusal("RESTORE", text, base) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refusal("RESTORE", text, base)
    with os.fdopen(fd, "rb") as f:
        header = _read_header(f)
        crc = 0
        with open(dest, "wb") as out:
            while chunk := f.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    if dest.stat().st_size != header["size"] or crc != header["crc"]:
        raise BackupDamaged("backup data does not match its checksum; the file is damaged")
    return header


def _read_header(f) -> dict:
    if f.read(len(MAGIC)) != MAGIC:
        raise BackupDamaged("not a mirrord backup file")
    raw = f.read(4)
    if len(raw) != 4:
        raise BackupDamaged("backup header is truncated; the file is damaged")
    (hlen,) = struct.unpack(">I", raw)
    if hlen > 1 << 16:
        raise BackupDamaged("backup header is too large; the file is damaged")
    try:
        header = msgpack.unpackb(f.read(hlen), raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise BackupDamaged("backup header is damaged") from None
    if isinstance(header, dict) and "role_sequence" not in header and "epoch" in header:
        header["role_sequence"] = header.pop("epoch")  # a backup written before the role sequence had one name
    if not isinstance(header, dict) or not all(
        type(header.get(k)) is int and 0 <= header[k] < 2**63 for k in ("lsn", "role_sequence", "size", "crc")
    ):
        raise BackupDamaged("backup header is damaged")
    return header
