"""Redo catch-up after a SUSPEND, lz4 on the wire, and peak memory with ten mirrored databases.

    python benchmarks/log_bench.py [--catchup-mb 500] [--databases 10] [--json out.json]

Catch-up (two nodes on 127.0.0.56-57): database `catchup`, a -> b, SAFETY
FULL, SYNCHRONIZED. SUSPEND on the principal, then commit transactions of
BATCH_ROWS rows with ~1 KB values (half random hex, half repeated text, so lz4
has something to find but not everything) until the principal's send queue
holds the wanted megabytes of log; then RESUME and poll both status rows
until the mirror's redo LSN reaches the principal's end of log. The rate is
the log queued while suspended (send_queue_bytes just before RESUME) divided
by the time from RESUME to redo done; the time until the mirror had hardened
everything (the send queue drained) is reported as well. The lz4 ratio is
that database's log_bytes_sent_raw / log_bytes_sent_wire afterwards.

Memory (three nodes on 127.0.0.51-53): DATABASES databases, each a -> b
with witness c, SAFETY FULL; one asyncio client per database commits one-row
INSERTs for a few seconds; then VmHWM (peak resident set) and VmRSS of each
node's process from /proc/<pid>/status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit_bench import VALUE, _run_loop  # noqa: E402

from mirrord_testing.localcluster import LocalCluster, wait_for  # noqa: E402
from mirrorctl.client import AsyncClient, ClientError, ServerError, Unreachable  # noqa: E402

CATCHUP_IP = 56
MEMORY_IP = 51
BATCH_ROWS = 500
MB = 1 << 20
NOT_READY = (LookupError, Unreachable, ServerError, OSError)
# ~1 KB per row: 512 random hex characters and 512 characters of repeated text
BATCH_SQL = (f"INSERT INTO t(v) WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {BATCH_ROWS}) "
             "SELECT hex(randomblob(256)) || printf('%.512c', 'r') FROM n")


@dataclass
class CatchUp:
    """Redo catch-up after SUSPEND."""

    target_mb: float
    queued_bytes: int = 0  # the principal's send queue at RESUME
    queued_lsns: int = 0
    write_s: float = 0.0  # time to write the log while suspended
    harden_s: float | None = None  # RESUME -> send queue empty (mirror hardened everything)
    redo_s: float | None = None  # RESUME -> mirror's redo LSN at the end of log
    redo_mb_per_s: float | None = None
    harden_mb_per_s: float | None = None
    wire_raw: int | None = None
    wire_bytes: int | None = None
    lz4_ratio: float | None = None
    error: str | None = None


@dataclass
class Memory:
    """Peak and current resident memory per node with many mirrored databases."""

    databases: int
    clients: int = 0  # writing at once, spread over the databases
    commits: int = 0
    errors: int = 0  # statements that failed (the target: none)
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {"role", "VmHWM_kB", "VmRSS_kB"}
    error: str | None = None


def catch_up(base: Path, target_mb: float, say=print) -> CatchUp:
    """Suspend, queue target_mb of log, resume, time the mirror's catch-up."""
    res = CatchUp(target_mb)
    db = "catchup"
    with LocalCluster(base / "catchup", names=("a", "b"), first_ip=CATCHUP_IP) as cluster:
        try:
            cluster.start_all()
            a, b = cluster["a"], cluster["b"]
            a.query(f"CREATE DATABASE {db}")
            a.query("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)", db=db)
            cluster.setup_session(db, principal="a", mirror="b", safety="FULL")
            a.query(f"ALTER DATABASE {db} SET PARTNER SUSPEND")
            wait_for(lambda: a.status(db)["state"] == "SUSPENDED", 30, "SUSPENDED on the principal", retry_on=NOT_READY)
            start = time.monotonic()
            with a.client(timeout=30) as client:
                queued, done = 0, 0
                while queued < target_mb * MB:
                    client.query(BATCH_SQL, db=db, timeout=120)
                    done += 1
                    if done % 20 == 0:
                        queued = client.query(f"SELECT send_queue_bytes FROM sys.database_mirroring WHERE database = '{db}'").rows[0][0]
                        if done % 100 == 0:
                            say(f"    {queued / MB:,.0f} MB of log queued ...")
            res.write_s = time.monotonic() - start
            before = a.status(db)
            res.queued_bytes = before["send_queue_bytes"]
            end_lsn = before["end_of_log_lsn"]
            res.queued_lsns = end_lsn - b.status(db)["hardened_lsn"]
            say(f"    {res.queued_bytes / MB:,.0f} MB queued in {res.write_s:.1f} s; RESUME ...")
            resumed = time.monotonic()
            a.query(f"ALTER DATABASE {db} SET PARTNER RESUME")
            while res.redo_s is None:
                row = b.status(db)
                now = time.monotonic() - resumed
                if res.harden_s is None and row["hardened_lsn"] >= end_lsn:
                    res.harden_s = now
                if row["redo_lsn"] >= end_lsn:
                    res.redo_s = now
                elif now > 600:
                    raise TimeoutError(f"the mirror did not catch up within 600 s; last status {row}")
                else:
                    time.sleep(0.02)  # polling the mirror's status against a deadline
            res.redo_mb_per_s = res.queued_bytes / MB / res.redo_s
            res.harden_mb_per_s = res.queued_bytes / MB / res.harden_s if res.harden_s else None
            after = a.status(db)
            res.wire_raw, res.wire_bytes = after["log_bytes_sent_raw"], after["log_bytes_sent_wire"]
            if res.wire_bytes:
                res.lz4_ratio = res.wire_raw / res.wire_bytes
            if a.log_text().count('"seeding_mirror"') > 1:
                res.error = "RESUME reseeded the mirror (a full copy) instead of sending it the queued log"
        except Exception as exc:  # noqa: BLE001 - reported in the table
            res.error = f"{type(exc).__name__}: {exc}"
    return res


async def _load(addresses: list[tuple[str, str]], seconds: float) -> tuple[int, int]:
    """One client per (address, database) entry, one-row INSERTs for `seconds`; (commits done, errors)."""
    end = time.monotonic() + seconds

    async def one(address: str, db: str) -> tuple[int, int]:
        n = errors = 0
        client = await AsyncClient.connect(address)
        try:
            while time.monotonic() < end:
                try:
                    await client.query("INSERT INTO t(v) VALUES (?)", db=db, params=[VALUE], timeout=30)
                    n += 1
                except ClientError:
                    errors += 1
                    if client._closed:  # noqa: SLF001 - reconnect after a broken connection
                        client = await AsyncClient.connect(address)
        finally:
            await client.close()
        return n, errors

    done = await asyncio.gather(*(one(addr, db) for addr, db in addresses))
    return sum(n for n, _ in done), sum(e for _, e in done)


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[f"{key}_kB"] = int(value.split()[0])
    return out


def memory(base: Path, databases: int, load_s: float, say=print, clients: int = 128) -> Memory:
    """Peak RSS of principal, mirror and witness with `databases` mirrored databases, `clients` writing at once."""
    res = Memory(databases, clients)
    with LocalCluster(base / "memory", names=("a", "b", "c"), first_ip=MEMORY_IP) as cluster:
        try:
            cluster.start_all()
            a = cluster["a"]
            names = [f"db{i:02d}" for i in range(databases)]
            for db in names:
                a.query(f"CREATE DATABASE {db}")
                a.query("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)", db=db)
                cluster.setup_session(db, principal="a", mirror="b", witness="c", safety="FULL")
            say(f"    {databases} databases SYNCHRONIZED with witness; {load_s:g} s of {clients} clients over them ...")
            res.commits, res.errors = _run_loop(_load([(a.address, names[i % databases]) for i in range(clients)], load_s))
            roles = {"a": "principal", "b": "mirror", "c": "witness"}
            for node in cluster:
                res.nodes[node.name] = {"role": roles[node.name], **_proc_status(node.pid)}
        except Exception as exc:  # noqa: BLE001 - reported in the table
            res.error = f"{type(exc).__name__}: {exc}"
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="mirrord redo catch-up after SUSPEND, lz4 ratio, peak RSS")
    p.add_argument("--catchup-mb", type=float, default=500)
    p.add_argument("--databases", type=int, default=10)
    p.add_argument("--clients", type=int, default=128, help="clients writing at once for the memory figure")
    p.add_argument("--load-seconds", type=float, default=5)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mirrord-bench-log-") as tmp:
        c = catch_up(Path(tmp), args.catchup_mb)
        print(json.dumps(asdict(c), indent=2))
        m = memory(Path(tmp), args.databases, args.load_seconds, clients=args.clients)
        print(json.dumps(asdict(m), indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"catch_up": asdict(c), "memory": asdict(m)}, indent=2))
    return 1 if c.error or m.error else 0


if __name__ == "__main__":
    sys.exit(main())
