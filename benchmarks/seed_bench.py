"""Seeding a new mirror while the principal takes writes: how long it takes, and how long commits stall.

    python benchmarks/seed_bench.py [--mb 1024] [--seconds-before 1]

How it works: start a 2-node LocalCluster (a, b) in a temporary directory; on a,
fill database `seedbench` to --mb MB (64 KB blobs, 16 per transaction); then
one client commits one-row INSERTs on a without pause, while `SET PARTNER` on
b and then on a starts mirroring: b has no copy, so a seeds it (a consistent
image at some LSN, sent in 1 MB chunks, then the log after it). Reported: the
time from `SET PARTNER` on a until b is SYNCHRONIZED, the commits made during
it, and the longest gap between two acknowledged commits in that window (the
issue's target is 100 ms). Before the seed stopped holding the write lock for
the copy, that gap was the whole copy.

The load generator and both nodes share this machine's cores and disk.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

from mirrord_testing.localcluster import LocalCluster, wait_for
from mirrorctl.client import Client, ServerError, Unreachable

DB = "seedbench"
FIRST_IP = 56  # 127.0.0.56-57: inside the benchmarks' 127.0.0.51-59
BLOB = 64 << 10
PER_TXN = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=1024, help="database size to seed, MB (default 1024)")
    p.add_argument("--seconds-before", type=float, default=1.0, help="commits measured before the seed starts (default 1)")
    args = p.parse_args(argv)
    if args.mb < 1 or args.seconds_before < 0:
        p.error("--mb must be >= 1 and --seconds-before >= 0")
    return args


def fill(address: str, mb: int) -> None:
    with Client.connect(address, timeout=60) as c:
        c.query(f"CREATE DATABASE {DB}")
        c.query("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)", db=DB)
        c.query("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", db=DB)
        for _ in range((mb << 20) // (BLOB * PER_TXN) + 1):
            values = ",".join(["(randomblob(?))"] * PER_TXN)
            c.query(f"INSERT INTO blobs(b) VALUES {values}", db=DB, params=[BLOB] * PER_TXN, timeout=60)


class Committer(threading.Thread):
    """Commits one-row INSERTs without pause; keeps the time of every acknowledgement."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address, self.acks, self.errors = address, [], 0
        self._halt = threading.Event()

    def run(self) -> None:
        with Client.connect(self.address, timeout=30) as c:
            i = 0
            while not self._halt.is_set():
                i += 1
                try:
                    c.query("INSERT INTO t(id, v) VALUES (?, 'x')", db=DB, params=[i], timeout=30)
                    self.acks.append(time.monotonic())
                except (ServerError, Unreachable):
                    self.errors += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


def longest_gap(acks: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest time without an acknowledgement within [start, end], and when it began (seconds after start)."""
    inside = [start] + [t for t in acks if start <= t <= end] + [end]
    return max((b - a, a - start) for a, b in zip(inside, inside[1:]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}; the load generator and both nodes share these cores and this disk")
    with tempfile.TemporaryDirectory(prefix="mirrord-seed-", dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        with LocalCluster(Path(tmp), names=("a", "b"), first_ip=FIRST_IP) as cluster:
            cluster.start_all()
            a, b = cluster["a"], cluster["b"]
            started = time.monotonic()
            fill(a.address, args.mb)
            size = (a.data_dir / "databases" / DB / "db.sqlite").stat().st_size
            print(f"filled {size >> 20} MB in {time.monotonic() - started:.1f} s")
            committer = Committer(a.address)
            committer.start()
            time.sleep(args.seconds_before)
            before = len(committer.acks)
            b.query(f"ALTER DATABASE {DB} SET PARTNER = '{a.endpoint_url}'")
            seed_start = time.monotonic()
            a.query(f"ALTER DATABASE {DB} SET PARTNER = '{b.endpoint_url}'", timeout=60)
            wait_for(lambda: b.status(DB)["state"] == "SYNCHRONIZED" or None, 3600, "b seeded and SYNCHRONIZED", interval=0.05)
            seed_end = time.monotonic()
            committer.stop()
            during = sum(1 for t in committer.acks if seed_start <= t <= seed_end)
            gap, gap_at = longest_gap(committer.acks, seed_start, seed_end)
            found = cluster.tracebacks()
    rows = [
        ("database size", f"{size / (1 << 20):.0f} MB"),
        ("seed time (SET PARTNER on the principal -> SYNCHRONIZED)", f"{seed_end - seed_start:.2f} s"),
        ("seed rate", f"{size / (1 << 20) / (seed_end - seed_start):.0f} MB/s"),
        ("commits acknowledged during the seed", f"{during} ({during / (seed_end - seed_start):.0f}/s; "
                                                  f"{before / args.seconds_before if args.seconds_before else 0:.0f}/s before)"),
        ("longest gap between acknowledged commits during the seed",
         f"{gap * 1000:.0f} ms, {gap_at:.1f} s into the seed (target <= 100 ms)"),
        ("commit errors", str(committer.errors)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    if found:
        print(f"WARNING: node logs contain tracebacks: {found}", file=sys.stderr)
    return 1 if found or committer.errors else 0


if __name__ == "__main__":
    sys.exit(main())
