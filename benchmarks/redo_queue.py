"""Failover time with and without a redo queue limit (ALTER DATABASE db SET PARTNER REDO_QUEUE).

    python benchmarks/redo_queue.py [--limits UNLIMITED,2,8] [--redo-kb-s 2048] [--load-seconds 6] [--first-ip 61]

How it works: per limit, a fresh three-node LocalCluster (a, b, c on 127.0.0.<first-ip>..+2, in a temporary
directory): database `bench` with session a -> b, witness c, SAFETY FULL, the limit set on a. The
mirror's redo is slowed to --redo-kb-s (MIRRORD_TEST_REDO_KB_S, a test hook read by every node at
start: a mirror on a slow disk), so large transactions pile up in its redo queue. Two clients
commit 256 KB rows to a for --load-seconds while the mirror's redo_queue_bytes is sampled; then a
is SIGKILLed, and the clock runs until b (promoted automatically: it must first redo its whole
queue) acknowledges an INSERT. Printed per limit: the load committed, the peak redo queue, the queue
at the kill, the failover time, and the bound the issue asks for, limit ÷ redo rate (the rest of a
failover, ~1 s here, comes on top). Every acknowledged row must be on b afterwards.

Under three minutes with the defaults: the UNLIMITED run's failover redoes everything the load
left, which is the point of the comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from mirrord_testing.localcluster import LocalCluster, wait_for
from mirrord.storage.pagestore import TEST_REDO_RATE_ENV
from mirrorctl.client import ServerError, Unreachable

DB = "bench"
MB = 1 << 20
ROW = 256 << 10
WRITERS = 2


def one_run(base: Path, first_ip: int, limit: str, redo_kb_s: int, load_seconds: float) -> dict:
    """One fresh cluster, load, SIGKILL of the principal: the figures of one table row."""
    os.environ[TEST_REDO_RATE_ENV] = str(redo_kb_s)
    cluster = LocalCluster(base, first_ip=first_ip)
    try:
        cluster.start_all()
        cluster.setup_session(DB, principal="a", mirror="b", witness="c")
        a, b = cluster["a"], cluster["b"]
        a.query("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)", db=DB)
        a.query(f"ALTER DATABASE {DB} SET PARTNER REDO_QUEUE {limit if limit == 'UNLIMITED' else f'{limit} MB'}")
        halt, acked = threading.Event(), []

        def load(first: int) -> None:
            key = first
            try:
                with a.client() as client:
                    while not halt.is_set():
                        key += 1
                        client.query(f"INSERT INTO t(id, v) VALUES (?, randomblob({ROW}))", db=DB, params=[key], timeout=30)
                        acked.append(key)
            except (ServerError, Unreachable, OSError):
                pass  # the principal was killed under it

        writers = [threading.Thread(target=load, args=(i * 10**9,), daemon=True) for i in range(WRITERS)]
        for w in writers:
            w.start()
        peak, started = 0, time.monotonic()
        while time.monotonic() - started < load_seconds:
            peak = max(peak, b.status(DB)["redo_queue_bytes"])
            halt.wait(0.1)
        queue_at_kill = b.status(DB)["redo_queue_bytes"]
        held = a.status(DB)["redo_queue_held_s"]
        committed = len(acked)
        a.kill()
        killed = time.monotonic()
        halt.set()

        def accepts() -> bool:
            try:
                b.query("INSERT INTO t(id, v) VALUES (-1, 'after')", db=DB, timeout=2)
                return True
            except (ServerError, Unreachable, OSError):
                return False

        wait_for(accepts, 170, "b accepts writes as principal", interval=0.01)
        failover = time.monotonic() - killed
        for w in writers:
            w.join(10)
        have = {r[0] for r in b.query("SELECT id FROM t", db=DB, timeout=30).rows}
        return {"limit": limit, "load_mb_s": committed * ROW / MB / load_seconds, "held_s": held,
                "peak_mb": peak / MB, "at_kill_mb": queue_at_kill / MB, "failover_s": failover,
                "bound_s": None if limit == "UNLIMITED" else int(limit) * 1024 / redo_kb_s,
                "lost": len(set(acked) - have)}
    finally:
        cluster.stop_all()
        os.environ.pop(TEST_REDO_RATE_ENV, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limits", default="UNLIMITED,2,8", help="comma-separated: UNLIMITED or MB")
    parser.add_argument("--redo-kb-s", type=int, default=2048, help="the mirror's redo rate cap, KB/s")
    parser.add_argument("--load-seconds", type=float, default=6.0)
    parser.add_argument("--first-ip", type=int, default=int(os.environ.get("MIRRORD_TEST_FIRST_IP") or 61))
    args = parser.parse_args()
    limits = [x.strip().upper() for x in args.limits.split(",") if x.strip()]
    print(f"$ {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"cores: {os.cpu_count()}; redo capped at {args.redo_kb_s} KB/s; {WRITERS} clients committing "
          f"{ROW >> 10} KB rows for {args.load_seconds:g} s; SAFETY FULL, witness; SIGKILL of the principal")
    rows = []
    for limit in limits:
        base = Path(tempfile.mkdtemp(prefix="redoq-bench-"))
        try:
            rows.append(one_run(base, args.first_ip, limit, args.redo_kb_s, args.load_seconds))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    header = ["REDO_QUEUE", "load MB/s", "held s", "peak queue MB", "queue at kill MB", "failover s",
              "limit/rate s", "lost"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        limit = r["limit"] if r["limit"] == "UNLIMITED" else f"{r['limit']} MB"
        bound = "-" if r["bound_s"] is None else f"{r['bound_s']:.1f}"
        print(f"| {limit} | {r['load_mb_s']:.1f} | {r['held_s']:.1f} | {r['peak_mb']:.1f} | {r['at_kill_mb']:.1f} | "
              f"{r['failover_s']:.2f} | {bound} | {r['lost']} |")
    return 1 if any(r["lost"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
