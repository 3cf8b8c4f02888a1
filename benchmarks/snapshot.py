"""Database snapshots on the mirror: how long creation takes, and what copy-on-write costs redo.

    python benchmarks/snapshot.py [--db-mb 1024] [--redo-mb 128] [--json out.json]

No network: the mirror's own parts (`MirrorDatabase`: durable log, page store,
redo thread, snapshots), on this machine's disk.

Creation: a mirror's copy of DB_MB megabytes (4 KB pages of random bytes: the
page store does not read them) is started as a mirror starts (its page
checksums computed), and `CREATE DATABASE … AS SNAPSHOT OF` is timed as the
node runs it (`MirrorDatabase.create_snapshot`): sync the copy, make the
sparse file, write meta.json. Nothing is copied, so the time does not grow
with the database (only with what redo left unsynced).

Redo: REDO_MB of log records, 16 pages each, pages chosen at random over the
whole copy, hardened once; then, for 0, 1 and 3 snapshots made just before,
redo is reset to the start of that log and timed until it has applied it all.
Random pages over a large copy are the worst case: nearly every page written
is written for the first time since the snapshots were made, so nearly every
one is saved (and synced) into each snapshot before it is overwritten. A
workload that rewrites the same pages pays only once per page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mirrord.core.session import Session, SessionConfig  # noqa: E402
from mirrord.core.types import DatabaseStatus, Role  # noqa: E402
from mirrord.engine.mirror import MirrorDatabase  # noqa: E402
from mirrord.storage.fileutil import atomic_write_bytes  # noqa: E402
from mirrord.storage.log import DurableLog, LogRecord  # noqa: E402

PAGE = 4096
PAGES_PER_RECORD = 16


def make_copy(path: Path, megabytes: int) -> int:
    """A mirror's copy of that many megabytes: a SQLite-like page 1 (page size 4096), random pages after it."""
    pages = megabytes * (1 << 20) // PAGE
    header = bytearray(b"SQLite format 3\0" + PAGE.to_bytes(2, "big") + b"\x02\x02").ljust(PAGE, b"\0")
    with open(path, "wb") as f:
        f.write(header)
        chunk = os.urandom(1 << 20)
        written = PAGE
        while written < pages * PAGE:
            f.write(chunk[: min(len(chunk), pages * PAGE - written)])
            written += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return pages


def records(pages: int, megabytes: int, seed: int = 7) -> list[LogRecord]:
    rng = random.Random(seed)
    image = os.urandom(PAGE)
    count = megabytes * (1 << 20) // (PAGE * PAGES_PER_RECORD)
    return [LogRecord(lsn, 1, pages, PAGE, tuple((p, image) for p in rng.sample(range(2, pages + 1), PAGES_PER_RECORD)))
            for lsn in range(1, count + 1)]


async def run(db_mb: int, redo_mb: int, workdir: Path) -> dict:
    directory = workdir / "databases" / "db"
    directory.mkdir(parents=True)
    started = time.monotonic()
    pages = make_copy(directory / "db.sqlite", db_mb)
    print(f"copy of {db_mb} MB ({pages} pages) written in {time.monotonic() - started:.1f} s", flush=True)
    log = DurableLog(directory / "log")
    log.reset(1, 1)
    recs = records(pages, redo_mb)
    for i in range(0, len(recs), 256):
        log.append(recs[i:i + 256])
    log.sync()
    session = Session(SessionConfig("db", role=Role.MIRROR, status=DatabaseStatus.RESTORING, partner="tcp://x:1"))
    mirror = MirrorDatabase(directory, session, log)
    atomic_write_bytes(directory / "redo_lsn", b"0")
    # creation, on a copy redo has not started on (the redo LSN is held at 0 while we time it)
    mirror.start()
    hold = mirror.hold_redo(0)
    creation = []
    for i in range(5):
        t0 = time.monotonic()
        mirror.create_snapshot(f"c{i}", "now")
        creation.append(time.monotonic() - t0)
    for i in range(5):
        mirror.drop_snapshot(f"c{i}", "benchmark")
    mirror.release_redo(hold)
    mirror.stop()
    result = {"db_mb": db_mb, "pages": pages, "creation_ms": [round(c * 1000, 1) for c in creation], "redo": []}
    print(f"creation of a snapshot of {db_mb} MB: {', '.join(f'{c * 1000:.1f}' for c in creation)} ms", flush=True)
    for snapshots in (0, 1, 3):
        atomic_write_bytes(directory / "redo_lsn", b"0")
        mirror.start()
        hold = mirror.hold_redo(0)
        for i in range(snapshots):
            mirror.create_snapshot(f"s{i}", "now")
        t0 = time.monotonic()
        mirror.release_redo(hold)
        assert await mirror.wait_redone(600)
        seconds = time.monotonic() - t0
        saved = sum(s.pages_saved for s in mirror.snapshots.values())
        for i in range(snapshots):
            mirror.drop_snapshot(f"s{i}", "benchmark")
        mirror.stop()
        rate = redo_mb / seconds
        result["redo"].append({"snapshots": snapshots, "seconds": round(seconds, 2), "mb_per_s": round(rate, 1),
                               "pages_saved": saved})
        print(f"redo of {redo_mb} MB with {snapshots} snapshots: {seconds:.2f} s, {rate:.1f} MB/s, "
              f"{saved} pages saved", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-mb", type=int, default=1024)
    parser.add_argument("--redo-mb", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-") as tmp:
        result = asyncio.run(run(args.db_mb, args.redo_mb, Path(tmp)))
    print()
    print("| database | creation (5 runs, ms) |")
    print("|---|---|")
    print(f"| {args.db_mb} MB | {', '.join(str(c) for c in result['creation_ms'])} |")
    print()
    print("| snapshots | redo MB/s | seconds | pages saved |")
    print("|---|---|---|---|")
    for row in result["redo"]:
        print(f"| {row['snapshots']} | {row['mb_per_s']} | {row['seconds']} | {row['pages_saved']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
