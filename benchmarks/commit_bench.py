"""Commit throughput and latency: standalone vs SAFETY OFF vs SAFETY FULL.

    python benchmarks/commit_bench.py [--seconds 5] [--clients 1,8,32] [--json out.json] [--insecure] [--first-ip N]

How it works: start a 2-node LocalCluster (a, b) in a temporary directory; on
node a create one database per mode (`bench_standalone` with no partner,
`bench_off` mirrored to b with SAFETY OFF, `bench_full` with SAFETY FULL); for
each concurrency and mode run that many asyncio clients, one AsyncClient
connection each, every one committing one-row INSERTs (a ~100-byte value) in
a loop for --seconds after a short warm-up. Throughput is commits/s over the
measured window; latency is per commit, from send to answer. The nodes run
secured (mutual TLS between them, TLS and a login per client connection) as
LocalCluster starts them; --insecure starts them with --insecure instead, for
the cost of TLS.

Caveat worth printing with any number: the load generator and both daemons
share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mirrord_testing.localcluster import LocalCluster
from mirrorctl.client import AsyncClient, ClientError, Unreachable

MODES = {"standalone": "bench_standalone", "SAFETY OFF": "bench_off", "SAFETY FULL": "bench_full"}
VALUE = "v" * 100
WARMUP = 0.5
FIRST_IP = 54  # 127.0.0.54-55: inside the benchmarks' 127.0.0.51-59, away from the tests' 127.0.0.11-13


@dataclass
class Run:
    """The outcome of one (mode, clients) run."""

    mode: str
    clients: int
    commits: int
    errors: int
    seconds: float
    commits_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    ratio_to_standalone: float | None = None
    loadgen_cpu_ms: float | None = None  # CPU the load generator itself spent per commit (it shares the cores)
    server_cpu_ms: float | None = None  # CPU of the servers (principal + mirror) per commit: steadier than time on a busy machine
    principal_cpu_ms: float | None = None  # of which the principal's (node a), per commit
    mirror_cpu_ms: float | None = None  # and the mirror's (node b)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pids: list[int], children: bool = False) -> float:
    """CPU seconds (user + system, all threads) of these processes; with children, also of their
    live child processes and of the children they reaped (PostgreSQL's backends)."""
    total = 0.0
    wanted = set(pids)
    for entry in Path("/proc").iterdir() if children else [Path(f"/proc/{p}") for p in pids]:
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, ppid = int(entry.name) if entry.name.isdigit() else -1, int(fields[1])
        if pid in wanted:
            total += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
        elif children and ppid in wanted:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="mirrord commit throughput and latency per SAFETY mode")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    p.add_argument("--clients", default="1,8,32", help="comma-separated concurrencies (default 1,8,32)")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.add_argument("--insecure", action="store_true", help="nodes without TLS and logins (to measure what TLS costs)")
    p.add_argument("--first-ip", dest="first_ip", type=int, default=FIRST_IP,
                   help=f"nodes on 127.0.0.N and N+1, and N+2 with --witness (default {FIRST_IP})")
    p.add_argument("--witness", action="store_true",
                   help="a third node witnesses the mirrored databases, as automatic failover needs (its CPU counts as the servers')")
    args = p.parse_args(argv)
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        p.error(f"--clients wants integers like 1,8,32, got {args.clients!r}")
    if not args.client_counts or min(args.client_counts) < 1 or args.seconds <= 0:
        p.error("need at least one positive concurrency and positive --seconds")
    return args


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None if empty)."""
    if not sorted_values:
        return None
    rank = max(1, int(round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def one_client(address: str, db: str, warm_until: float, end: float, latencies: list[float]) -> int:
    """Commit one-row inserts until `end`; record latencies after warm-up; return the error count."""
    errors = 0
    client = await AsyncClient.connect(address)
    try:
        while (start := time.perf_counter()) < end:
            try:
                await client.query("INSERT INTO t(v) VALUES (?)", db=db, params=[VALUE], timeout=30)
            except ClientError as exc:
                errors += 1
                if isinstance(exc, Unreachable):  # the connection is closed: open a new one
                    client = await AsyncClient.connect(address)
                continue
            if start >= warm_until:
                latencies.append(time.perf_counter() - start)
    finally:
        await client.close()
    return errors


async def measure(address: str, db: str, clients: int, seconds: float) -> tuple[list[float], int, float]:
    """Latencies (s) of commits started in the measured window, errors, and the window length."""
    latencies: list[float] = []
    warm_until = time.perf_counter() + WARMUP
    end = warm_until + seconds
    errors = await asyncio.gather(*(one_client(address, db, warm_until, end, latencies) for _ in range(clients)))
    return latencies, sum(errors), seconds


def _run_loop(coro):
    """uvloop when installed (the daemon uses it too), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_one(address: str, mode: str, clients: int, seconds: float, server_pids: list[int] | None = None) -> Run:
    """One (mode, clients) cell of the table."""
    cpu = time.process_time()
    each = [process_cpu([pid]) for pid in server_pids or []]
    latencies, errors, window = _run_loop(measure(address, MODES[mode], clients, seconds))
    cpu = time.process_time() - cpu
    each = [process_cpu([pid]) - before for pid, before in zip(server_pids or [], each)]
    servers = sum(each) if server_pids else None
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    done = len(ms) * (window + WARMUP) / window  # commits in the whole run, warm-up included (estimated)
    return Run(mode, clients, len(ms), errors, window, len(ms) / window, percentile(ms, 50), percentile(ms, 99),
               loadgen_cpu_ms=cpu * 1000 / done if ms else None,
               server_cpu_ms=servers * 1000 / done if ms and servers is not None else None,
               principal_cpu_ms=each[0] * 1000 / done if ms and len(each) >= 2 else None,
               mirror_cpu_ms=each[1] * 1000 / done if ms and len(each) >= 2 else None)


def prepare(cluster: LocalCluster, witness: str | None = None) -> None:
    """The three databases with their table; the mirrored ones SYNCHRONIZED (and witnessed by `witness`, if given)."""
    a = cluster["a"]
    a.query(f"CREATE DATABASE {MODES['standalone']}")
    cluster.setup_session(MODES["SAFETY OFF"], principal="a", mirror="b", safety="OFF", witness=witness)
    cluster.setup_session(MODES["SAFETY FULL"], principal="a", mirror="b", safety="FULL", witness=witness)
    for db in MODES.values():
        a.query("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)", db=db)


def compression(cluster: LocalCluster) -> str:
    """raw/wire bytes of the log stream from a, if the status rows carry the counters."""
    raw = wire = 0
    for row in cluster["a"].statuses():
        if row.get("database") not in (MODES["SAFETY OFF"], MODES["SAFETY FULL"]):
            continue
        if row.get("log_bytes_sent_raw") is None or row.get("log_bytes_sent_wire") is None:
            return "n/a"
        raw += row["log_bytes_sent_raw"]
        wire += row["log_bytes_sent_wire"]
    if not wire:
        return "n/a"
    return f"{raw / wire:.2f}x ({raw:,} raw bytes -> {wire:,} on the wire)"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(runs: list[Run]) -> list[list[str]]:
    return [[str(r.clients), r.mode, _fmt(r.commits_per_s, ",.0f"), _fmt(r.p50_ms, ".2f"),
             _fmt(r.p99_ms, ".2f"), _fmt(r.ratio_to_standalone, ".2f"), str(r.errors),
             _fmt(r.server_cpu_ms, ".3f"), _fmt(r.loadgen_cpu_ms, ".3f")] for r in runs]


HEADERS = ["clients", "mode", "commits/s", "p50 ms", "p99 ms", "vs standalone", "errors", "server CPU ms/commit",
           "loadgen CPU ms/commit"]


def print_table(runs: list[Run]) -> None:
    """One table, with rich when it is installed."""
    rows = table_rows(runs)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
        for line in [HEADERS, ["-" * w for w in widths], *rows]:
            print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))
        return
    table = Table(title="commit throughput and latency (one-row INSERT, ~100-byte value)")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i == 1 else "right")
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, python {sys.version.split()[0]}, {sys.platform}; "
          "the load generator and both nodes share these cores")
    print(f"nodes: {'INSECURE (no TLS, no logins)' if args.insecure else 'secured (mutual TLS, TLS + login per client)'}")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="mirrord-bench-") as tmp:
        names = ("a", "b", "w") if args.witness else ("a", "b")
        with LocalCluster(Path(tmp), names=names, first_ip=args.first_ip, secure=not args.insecure) as cluster:
            cluster.start_all()
            prepare(cluster, witness="w" if args.witness else None)
            for clients in args.client_counts:
                for mode in MODES:
                    print(f"  running {mode}, {clients} client(s), {args.seconds:g} s ...", flush=True)
                    runs.append(run_one(cluster["a"].address, mode, clients, args.seconds,
                                        server_pids=[node.pid for node in cluster]))
                base = runs[-len(MODES)].commits_per_s
                for run in runs[-len(MODES):]:
                    run.ratio_to_standalone = run.commits_per_s / base if base else None
            ratio = compression(cluster)
        found = cluster.tracebacks()  # after stop_all, so shutdown is checked too
    print_table(runs)
    print(f"lz4 compression of the log stream: {ratio}")
    if found:
        print(f"WARNING: node logs contain tracebacks: {found}", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"command": sys.argv, "nproc": os.cpu_count(),
                                                   "seconds": args.seconds, "compression": ratio, "secured": not args.insecure,
                                                   "runs": [asdict(r) for r in runs]}, indent=2))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
