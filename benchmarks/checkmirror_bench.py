"""What DBCC CHECKMIRROR costs the commits that go on while it runs.

    python benchmarks/checkmirror_bench.py [--mb 64] [--seconds 5] [--clients 8] [--rounds 6] [--rate-mb R] [--first-ip N]

How it works: start a 2-node LocalCluster (a principal, b mirror, SAFETY FULL)
in a temporary directory, fill the database to about --mb MB (rows of ~1 KB in
transactions of 500), wait until the mirror has redone it, then measure
--rounds pairs of two phases: --clients asyncio clients committing one-row
INSERTs (commit_bench.py's load) for --seconds alone ("off"), and the same
while another connection runs DBCC CHECKMIRROR back to back ("on").

Why pairs, in alternating order, and the median: on a shared machine the
throughput drifts (other processes, the disk's cache, the database growing),
and a drift between the two phases of a pair reads as the check's cost. Each
pair's phases are back to back, and every other pair runs "on" first, so a
steady drift pushes half the pairs' ratios up and half down; the median of
the pairs' ratios on/off is then the check's cost, and the spread of the
ratios (printed) says how far to trust it. The issue's target: a median of at
least 0.90. It also prints commits/s and p50/p99 of each phase, how many
checks completed during the "on" phases and how long one took. Every check
must answer IDENTICAL: a different answer fails the run.

Caveat worth printing with any number: the load generator and both daemons
share this machine's cores, and a check hashes the whole database on both
nodes (reads the file, blake2b per page), so on a small machine part of the
cost is CPU taken from the nodes themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from mirrord_testing.localcluster import LocalCluster, wait_for
from mirrorctl.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit_bench import _run_loop, measure, percentile  # noqa: E402 - the same load as the commit benchmark

DB = "bench_full"  # commit_bench's name for its SAFETY FULL database: measure() writes to it
FIRST_IP = 56  # 127.0.0.56-57: inside the benchmarks' 127.0.0.51-59 (seed_bench's pair: run one at a time)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="commit throughput with and without DBCC CHECKMIRROR running")
    p.add_argument("--mb", type=int, default=64, help="database size to fill before measuring (default 64)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per phase (default 5)")
    p.add_argument("--clients", type=int, default=8, help="committing clients (default 8)")
    p.add_argument("--rounds", type=int, default=6, help="off/on phase pairs, every other one on first (default 6)")
    p.add_argument("--rate-mb", dest="rate_mb", type=int, default=16,
                   help="the nodes' --checkmirror-rate-mb: MB/s each side hashes (default 16, the node's; 0: unlimited)")
    p.add_argument("--first-ip", dest="first_ip", type=int, default=FIRST_IP, help=f"nodes on 127.0.0.N and N+1 (default {FIRST_IP})")
    args = p.parse_args(argv)
    if args.rate_mb < 0 or args.mb < 1 or args.seconds <= 0 or args.clients < 1 or args.rounds < 1:
        p.error("--mb, --seconds, --clients and --rounds must be positive")
    return args


def fill(cluster: LocalCluster, mb: int) -> None:
    """The SAFETY FULL database with about mb MB of rows, redone on the mirror."""
    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b")
    a.query("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)", db=DB)
    rows, per_txn = mb * 1000, 500
    with a.client(timeout=60) as client:
        for start in range(0, rows, per_txn):
            client.query("INSERT INTO t(v) SELECT hex(randomblob(256)) || printf('%.488c', 'x') "
                         "FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) SELECT i FROM n)",
                         db=DB, params=[min(per_txn, rows - start)], timeout=60)
    wait_for(lambda: b.status(DB)["redo_lsn"] == a.status(DB)["end_of_log_lsn"], 300, "the mirror redone")


class Checker(threading.Thread):
    """DBCC CHECKMIRROR back to back on its own connection until stopped."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address, self.durations, self.results = address, [], []
        self.halt = threading.Event()

    def run(self) -> None:
        with Client.connect(self.address, timeout=10) as client:
            while not self.halt.is_set():
                started = time.perf_counter()
                row = client.query(f"DBCC CHECKMIRROR('{DB}')", timeout=300).as_dicts()[0]
                self.durations.append(time.perf_counter() - started)
                self.results.append(row)


def phase(address: str, clients: int, seconds: float) -> tuple[float, float | None, float | None]:
    """commits/s, p50 ms, p99 ms of one phase."""
    latencies, _errors, window = _run_loop(measure(address, DB, clients, seconds))
    ms = sorted(x * 1000 for x in latencies)
    return len(ms) / window, percentile(ms, 50), percentile(ms, 99)


def checked_phase(address: str, clients: int, seconds: float, checks: list) -> tuple[float, float | None, float | None]:
    """A phase with DBCC CHECKMIRROR running back to back beside it (from its first check on)."""
    checker = Checker(address)
    checker.start()
    wait_for(lambda: checker.durations or not checker.is_alive(), 300, "a first check")
    try:
        return phase(address, clients, seconds)
    finally:
        checker.halt.set()
        checker.join(300)  # the check under way ends before the next phase
        checks.append(checker)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, python {sys.version.split()[0]}; the load generator and both nodes share these cores")
    off, on, checks = [], [], []
    with tempfile.TemporaryDirectory(prefix="mirrord-bench-") as tmp:
        with LocalCluster(Path(tmp), names=("a", "b"), first_ip=args.first_ip) as cluster:
            for node in cluster:
                node.extra_args = ["--checkmirror-rate-mb", str(args.rate_mb)]
            cluster.start_all()
            print(f"  filling {DB} with about {args.mb} MB ...", flush=True)
            fill(cluster, args.mb)
            size = cluster["a"].status(DB)["log_bytes"]
            address = cluster["a"].address
            for n in range(args.rounds):
                on_first = n % 2 == 1
                print(f"  pair {n + 1}: {args.clients} clients, {args.seconds:g} s "
                      f"{'with, then without' if on_first else 'without, then with'} checks ...", flush=True)
                if not on_first:
                    off.append(phase(address, args.clients, args.seconds))
                on.append(checked_phase(address, args.clients, args.seconds, checks))
                if on_first:
                    off.append(phase(address, args.clients, args.seconds))
            pages = checks[-1].results[-1]["pages"] if checks[-1].results else None
        found = cluster.tracebacks()
    durations = [d for c in checks for d in c.durations]
    results = [r["result"] for c in checks for r in c.results]
    off_rate, on_rate = statistics.mean(r[0] for r in off), statistics.mean(r[0] for r in on)
    print(f"\ndatabase: {pages} pages, log {size:,} bytes; {len(durations)} checks, "
          f"mean {statistics.mean(durations):.2f} s, max {max(durations):.2f} s" if durations else "no check completed")
    print(f"{'phase':<22}{'commits/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for name, runs in (("without CHECKMIRROR", off), ("with CHECKMIRROR", on)):
        for rate, p50, p99 in runs:
            print(f"{name:<22}{rate:>12,.0f}{p50 or 0:>10.2f}{p99 or 0:>10.2f}")
    ratio = on_rate / off_rate if off_rate else 0.0
    # each pair's "on" against its own "off", back to back, in alternating order: steadier than the means
    ratios = [b[0] / a[0] for a, b in zip(off, on) if a[0]]
    paired = statistics.median(ratios)
    print(f"pairs' ratios with / without: {', '.join(f'{r:.3f}' for r in ratios)} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"throughput with / without: {paired:.3f} (median of the pairs' ratios), {ratio:.3f} (means); "
          f"target >= 0.90: {'met' if paired >= 0.9 else 'NOT met'}")
    bad = [r for r in results if r != "IDENTICAL"]
    if bad or found:
        print(f"FAILED: {len(bad)} check(s) not IDENTICAL; tracebacks: {found}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
