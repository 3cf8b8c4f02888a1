"""Failover time: from a fault on the principal to the first write accepted by the new principal.

    python benchmarks/failover_bench.py [--runs 10] [--json out.json] [--only sigkill|sigstop]

How it works: every run starts a fresh three-node LocalCluster (a, b, c on
127.0.0.51-53, in a temporary directory): database `bench` with session
a -> b, witness c, SAFETY FULL; a table and a few rows. A background writer
commits one-row INSERTs to the principal continuously (on an error it tries the
other partner, as an application with the failover partner's address would)
and records every acknowledged id and every id whose outcome is in doubt.
Then the fault:

* sigkill: SIGKILL a, with the default PARTNER TIMEOUT 10 (a killed process is
  a hard error: the connection is reset, nobody waits for the timeout);
* sigstop: PARTNER TIMEOUT 2, SIGSTOP a (silence: soft error, the timeout runs).

The clock starts just before the signal is sent. A prober then opens a fresh
client connection to b every ~10 ms and tries one INSERT; the failover time is
when the first one is acknowledged. Afterwards the old principal is restarted
(sigkill) or thawed (sigstop) and must come back as a SYNCHRONIZED mirror by
itself; then every acknowledged id (writer and prober) must be in b's table.
In-doubt ids (the connection broke or the server said "in doubt") are counted,
and how many of them did commit.

A fresh cluster per run costs a few seconds of start-up but keeps runs
independent (no failback between runs). The load generator, the prober and
the three nodes share this machine's cores, so numbers are only comparable on
the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mirrord_testing.localcluster import LocalCluster, wait_for
from mirrorctl.client import Client, ServerError, Unreachable

DB = "bench"
FIRST_IP = 51  # 127.0.0.51-53: away from the tests' 127.0.0.11-13 (their link cuts) and the demo's
PROBE_INTERVAL = 0.010
PROBE_BASE = 10_000_000  # prober ids live above the writer's
NOT_READY = (LookupError, Unreachable, ServerError, OSError)

TARGETS = {
    "sigkill": "median <= 1 s, max <= 2 s (issue 6); < 3 s (issue 3)",
    "sigstop": "none stated (>= TIMEOUT 2 s by design)",
}


@dataclass
class RunResult:
    """One fault, one fresh cluster."""

    kind: str
    run: int
    failover_s: float | None = None  # signal -> first INSERT acknowledged by b
    probes: int = 0  # INSERTs tried on b until the first was acknowledged
    role_sequence_after: int | None = None
    acked: int = 0  # acknowledged ids (writer + prober)
    acked_before_fault: int = 0
    missing: int = 0  # acknowledged but not on the new principal: must be 0
    in_doubt: int = 0
    in_doubt_committed: int = 0
    rejoined_s: float | None = None  # old principal back as a SYNCHRONIZED mirror, after restart/thaw
    split_brain: bool = False  # two nodes acknowledged in one role sequence
    error: str | None = None
    notes: list[str] = field(default_factory=list)


class Writer(threading.Thread):
    """Continuous one-row INSERTs to the principal, following a failover to the partner."""

    def __init__(self, addresses: list[tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        self.addresses = addresses  # (node name, client address), the principal first
        self.acked: list[tuple[int, str, int | None]] = []
        self.in_doubt: list[int] = []
        self._halt = threading.Event()
        self._next = 0

    def run(self) -> None:
        current, client = 0, None
        while not self._halt.is_set():
            name, address = self.addresses[current % len(self.addresses)]
            try:
                if client is None:
                    client = Client.connect(address, timeout=1.0)
            except Unreachable:
                current += 1
                self._halt.wait(0.01)
                continue
            self._next += 1
            key = self._next
            try:
                result = client.query("INSERT INTO t(id, v) VALUES (?, ?)", db=DB, params=[key, name], timeout=5)
                self.acked.append((key, name, result.role_sequence))
                continue
            except ServerError as exc:
                if "in doubt" in exc.message:
                    self.in_doubt.append(key)
            except (Unreachable, OSError):
                self.in_doubt.append(key)  # the request left; its outcome is unknown
            _close(client)
            client = None
            current += 1
            self._halt.wait(0.01)
        _close(client)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def _close(client: Client | None) -> None:
    if client is not None:
        try:
            client.close()
        except OSError:
            pass


def probe_until_accepted(address: str, started: float, limit: float, res: RunResult,
                         acked: list, in_doubt: list) -> float:
    """A fresh connection every ~10 ms, one INSERT each; seconds from `started` to the first acknowledged."""
    deadline = started + limit
    while True:
        tick = time.monotonic()
        if tick > deadline:
            raise TimeoutError(f"no INSERT accepted on {address} within {limit:g} s of the fault")
        res.probes += 1
        key = PROBE_BASE + res.probes
        try:
            with Client.connect(address, timeout=1.0) as client:
                try:
                    result = client.query("INSERT INTO t(id, v) VALUES (?, 'probe')", db=DB, params=[key], timeout=5)
                except ServerError as exc:
                    if "in doubt" in exc.message:
                        in_doubt.append(key)
                    raise
                except Unreachable:
                    in_doubt.append(key)
                    raise
            took = time.monotonic() - started
            acked.append((key, "b", result.role_sequence))
            return took
        except (ServerError, Unreachable, OSError):
            pass
        time.sleep(max(0.0, tick + PROBE_INTERVAL - time.monotonic()))


def one_run(kind: str, n: int, base: Path) -> RunResult:
    res = RunResult(kind, n)
    timeout = 2 if kind == "sigstop" else None  # None: the default PARTNER TIMEOUT 10
    cluster = LocalCluster(base / f"{kind}-{n}", names=("a", "b", "c"), first_ip=FIRST_IP)
    writer: Writer | None = None
    try:
        cluster.start_all()
        a, b = cluster["a"], cluster["b"]
        a.query(f"CREATE DATABASE {DB}")
        a.query("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)", db=DB)
        a.query("INSERT INTO t(id, v) VALUES (-3, 'seed'), (-2, 'seed'), (-1, 'seed')", db=DB)
        cluster.setup_session(DB, principal="a", mirror="b", witness="c", safety="FULL", timeout=timeout)
        writer = Writer([("a", a.address), ("b", b.address)])
        writer.start()
        wait_for(lambda: len(writer.acked) >= 100, 30, "100 acknowledged writes before the fault")
        probe_acked: list = []
        probe_doubt: list = []

        res.acked_before_fault = len(writer.acked)
        started = time.monotonic()
        if kind == "sigkill":
            a.kill()
        else:
            a.freeze()
        res.failover_s = probe_until_accepted(b.address, started, 60, res, probe_acked, probe_doubt)
        res.role_sequence_after = b.status(DB)["role_sequence"]
        wait_for(lambda: any(node == "b" for _, node, _ in writer.acked[-5:]), 20,
                 "the writer to commit on the new principal")

        rejoin_started = time.monotonic()
        if kind == "sigkill":
            a.start()
        else:
            a.thaw()
        wait_for(lambda: a.status(DB)["role"] == "MIRROR", 30, "the old principal to come back as mirror",
                 interval=0.05, retry_on=NOT_READY)
        cluster.wait_synchronized(DB, "b", "a", 30)
        res.rejoined_s = time.monotonic() - rejoin_started
        writer.stop()

        present = b.ids(DB)
        acked = writer.acked + probe_acked
        res.acked = len(acked)
        res.missing = len({key for key, _, _ in acked} - present)
        doubt = set(writer.in_doubt) | set(probe_doubt)
        res.in_doubt = len(doubt)
        res.in_doubt_committed = len(doubt & present)
        by_role_sequence: dict = {}
        for _, node, role_sequence in acked:
            by_role_sequence.setdefault(role_sequence, set()).add(node)
        res.split_brain = any(len(nodes) > 1 for nodes in by_role_sequence.values())
    except Exception as exc:  # noqa: BLE001 - a failed run is reported in the table, the others go on
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None and writer.is_alive():
            writer.stop()
        cluster.stop_all()
    found = cluster.tracebacks()
    if found:
        res.notes.append(f"tracebacks in logs of {sorted(found)}")
    return res


def summarize(results: list[RunResult]) -> dict:
    times = [r.failover_s for r in results if r.failover_s is not None and r.error is None]
    ok = [r for r in results if r.error is None]
    return {
        "runs": len(results),
        "failed_runs": len(results) - len(ok),
        "median_s": statistics.median(times) if times else None,
        "max_s": max(times) if times else None,
        "min_s": min(times) if times else None,
        "acked": sum(r.acked for r in ok),
        "missing": sum(r.missing for r in results),
        "in_doubt": sum(r.in_doubt for r in ok),
        "in_doubt_committed": sum(r.in_doubt_committed for r in ok),
        "split_brain_runs": sum(r.split_brain for r in results),
        "rejoined": sum(r.rejoined_s is not None for r in results),
        "rejoin_median_s": statistics.median([r.rejoined_s for r in ok if r.rejoined_s is not None] or [0]),
    }


def verdict(kind: str, s: dict, results: list[RunResult]) -> str:
    if s["median_s"] is None:
        return "no data"
    if kind == "sigkill":
        six = s["median_s"] <= 1.0 and s["max_s"] <= 2.0 and not s["failed_runs"]
        three = s["max_s"] < 3.0 and not s["failed_runs"]
        return f"issue 6: {'met' if six else 'NOT met'}; issue 3: {'met' if three else 'NOT met'}"
    return "-"


LABELS = {"sigkill": "SIGKILL principal, TIMEOUT 10 (default)", "sigstop": "SIGSTOP principal, TIMEOUT 2"}
HEADERS = ["fault", "runs ok", "median s", "max s", "min s", "acked", "lost", "in doubt (committed)",
           "rejoined as mirror", "target", "verdict"]


def print_table(summaries: dict[str, dict], results: dict[str, list[RunResult]]) -> None:
    rows = []
    for kind, s in summaries.items():
        f = (lambda v: "-" if v is None else f"{v:.3f}")
        rows.append([LABELS[kind], f"{s['runs'] - s['failed_runs']}/{s['runs']}", f(s["median_s"]), f(s["max_s"]),
                     f(s["min_s"]), f"{s['acked']:,}", str(s["missing"]),
                     f"{s['in_doubt']} ({s['in_doubt_committed']})",
                     f"{s['rejoined']}/{s['runs']} (median {s['rejoin_median_s']:.1f} s)",
                     TARGETS[kind], verdict(kind, s, results[kind])])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
        for line in [HEADERS, ["-" * w for w in widths], *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))
        return
    table = Table(title="failover: fault on the principal -> first INSERT acknowledged by the new principal")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i in (0, 9, 10) else "right", overflow="fold")
    for r in rows:
        table.add_row(*r)
    Console(width=200).print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="mirrord failover time (SIGKILL and SIGSTOP of the principal)")
    p.add_argument("--runs", type=int, default=10, help="runs per fault (default 10)")
    p.add_argument("--only", choices=("sigkill", "sigstop"), help="run one fault kind only")
    p.add_argument("--json", dest="json_out", help="also write every run and the summary to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the clusters' directories (node logs) afterwards")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={nproc}, python {sys.version.split()[0]}, {sys.platform}; "
          "the writer, the prober and three nodes share these cores")
    print("method: a fresh 3-node cluster per run (a principal, b mirror, c witness, SAFETY FULL), "
          "no failback between runs; clock from the signal to the first INSERT acknowledged by b, "
          f"probing b with a fresh connection every {PROBE_INTERVAL * 1000:.0f} ms", flush=True)
    kinds = [args.only] if args.only else ["sigkill", "sigstop"]
    base = Path(tempfile.mkdtemp(prefix="mirrord-failover-bench-"))
    results: dict[str, list[RunResult]] = {k: [] for k in kinds}
    for kind in kinds:
        for n in range(1, args.runs + 1):
            r = one_run(kind, n, base)
            results[kind].append(r)
            took = "-" if r.failover_s is None else f"{r.failover_s:.3f} s"
            rejoin = "-" if r.rejoined_s is None else f"{r.rejoined_s:.1f} s"
            print(f"  {kind} run {n}/{args.runs}: failover {took} ({r.probes} probes), role_sequence "
                  f"{r.role_sequence_after}, acked {r.acked}, lost {r.missing}, in doubt {r.in_doubt} "
                  f"({r.in_doubt_committed} committed), rejoined as SYNCHRONIZED mirror after {rejoin}"
                  + (f", ERROR {r.error}" if r.error else "") + (f", {'; '.join(r.notes)}" if r.notes else ""),
                  flush=True)
    summaries = {k: summarize(v) for k, v in results.items()}
    print_table(summaries, results)
    bad = any(s["missing"] or s["split_brain_runs"] or s["failed_runs"] for s in summaries.values())
    noisy = any(r.notes for v in results.values() for r in v)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "command": sys.argv, "nproc": nproc, "method": "fresh cluster per run",
            "targets": TARGETS, "summary": summaries,
            "runs": {k: [asdict(r) for r in v] for k, v in results.items()},
        }, indent=2))
    if args.keep or bad or noisy:
        print(f"node logs kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    if bad:
        print("FAILED: a run failed, lost an acknowledged write, or saw two writers in one role sequence",
              file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
