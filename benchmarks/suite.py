"""The benchmark suite: mirrord side by side with PostgreSQL, in one run on one machine.

    python benchmarks/suite.py [--quick] [--out benchmarks/results] [--skip pg,failover,catchup,memory]

What it measures (details in each module's docstring):

* commit throughput and p50/p99 latency of a one-row INSERT (~100-byte value)
  at 1, 8 and 32 clients: mirrord standalone, SAFETY OFF and SAFETY FULL
  (commit_bench: asyncio clients, one AsyncClient connection each), and
  PostgreSQL 15 with a synchronous and with an asynchronous streaming standby
  (pg_bench: pgbench, same INSERT); for each concurrency the mirrord modes and
  the PostgreSQL modes run back to back, both systems up, so they see the same
  machine load; ratios mirrord/PostgreSQL: SAFETY FULL against the synchronous
  standby, SAFETY OFF against the asynchronous one;
* failover time, SIGKILL of the principal (default PARTNER TIMEOUT) and
  SIGSTOP with PARTNER TIMEOUT 2, to the first write accepted on the new
  principal: median and max over N fresh clusters (failover_bench);
* redo catch-up in MB/s of log after a SUSPEND of 500 MB, lz4 ratio on the
  wire, peak RSS per node with 10 mirrored databases (log_bench).

It prints one table of commits (with the ratios) and one of everything else
with the issue's targets, and writes suite-<time>.json, .md and a PNG latency
plot under --out. --quick shortens everything for development: 2 s per cell,
3 failover runs per fault, 50 MB of catch-up, 2 s of load on the ten databases.

Numbers are only comparable within one run: the load generators and every
server share this machine's cores; the header records the core count and the
load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import commit_bench  # noqa: E402
import failover_bench  # noqa: E402
import log_bench  # noqa: E402
import pg_bench  # noqa: E402

from mirrord_testing.localcluster import LocalCluster  # noqa: E402

PARTS = ("pg", "failover", "catchup", "memory")
COUNTERPART = {"SAFETY FULL": "PG sync standby", "SAFETY OFF": "PG async standby"}
NO_TLS = "SAFETY FULL, no TLS"  # the same cluster started --insecure: what TLS and logins cost
SYSTEM_ORDER = ["standalone", "SAFETY OFF", "SAFETY FULL", NO_TLS, "PG async standby", "PG sync standby"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="mirrord benchmark suite, side by side with PostgreSQL")
    p.add_argument("--quick", action="store_true", help="short runs for development (2 s cells, 3 failovers, 50 MB)")
    p.add_argument("--seconds", type=float, help="measured seconds per commit cell (default 5, quick 2)")
    p.add_argument("--clients", default="1,8,32,128", help="comma-separated concurrencies (default 1,8,32,128)")
    p.add_argument("--failover-runs", type=int, help="runs per fault kind (default 10, quick 3)")
    p.add_argument("--catchup-mb", type=float, help="log written while SUSPENDED (default 500, quick 50)")
    p.add_argument("--databases", type=int, default=10, help="mirrored databases for the memory figure (default 10)")
    p.add_argument("--memory-clients", type=int, default=128, help="clients writing at once for the memory figure (default 128)")
    p.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {', '.join(PARTS)}")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="directory for JSON, Markdown, PNG")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.failover_runs = args.failover_runs or (3 if args.quick else 10)
    args.catchup_mb = args.catchup_mb or (50.0 if args.quick else 500.0)
    args.load_seconds = 2.0 if args.quick else 5.0
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        p.error(f"--clients wants integers like 1,8,32, got {args.clients!r}")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown := args.skip - set(PARTS):
        p.error(f"--skip knows {', '.join(PARTS)}; got {', '.join(sorted(unknown))}")
    if not args.client_counts or min(args.client_counts) < 1 or args.seconds <= 0 or args.failover_runs < 1:
        p.error("need positive concurrencies, --seconds and --failover-runs")
    return args


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- running


def run_commits(args, report: dict, base: Path) -> None:
    """mirrord and PostgreSQL cells, concurrency by concurrency."""
    pair = None
    if "pg" in args.skip:
        report["postgres"] = {"skipped": "left out with --skip pg"}
    else:
        try:
            bindir = pg_bench.ensure_installed(say)
            pg_base = Path(tempfile.mkdtemp(prefix="mirrord-bench-pg-"))  # its own: the server user must reach it
            pair = pg_bench.PgPair(bindir, pg_base)
            say(f"PostgreSQL: {pg_bench._version_of(bindir)} from {bindir}; primary {pg_bench.PRIMARY_HOST}, "
                f"standby {pg_bench.STANDBY_HOST}, fsync on, synchronous_commit=on")
            pair.start()
            report["postgres"] = {"version": pg_bench._version_of(bindir), "bindir": str(bindir)}
        except (pg_bench.Unavailable, OSError, subprocess.SubprocessError) as exc:
            report["postgres"] = {"skipped": str(exc)}
            say(f"PostgreSQL rows skipped: {exc}")
            if pair is not None:
                pair.stop()
                say(f"  PostgreSQL logs kept in {pair.base}")
            pair = None
    runs: list[dict] = []
    try:
        with LocalCluster(base / "commits", names=("a", "b"), first_ip=commit_bench.FIRST_IP) as cluster:
            cluster.start_all()
            commit_bench.prepare(cluster)
            for clients in args.client_counts:
                for mode in commit_bench.MODES:
                    say(f"  mirrord {mode}, {clients} client(s), {args.seconds:g} s ...")
                    pids = [cluster["a"].pid, cluster["b"].pid]
                    runs.append({"system": "mirrord", **asdict(commit_bench.run_one(cluster["a"].address, mode, clients, args.seconds, pids))})
                if pair is not None:
                    for mode, names in pg_bench.MODES.items():
                        say(f"  {mode}, {clients} client(s), {args.seconds:g} s ...")
                        try:
                            pair.set_mode(names)
                            runs.append({"system": "postgres", **asdict(pg_bench.run_pgbench(pair, mode, clients, args.seconds))})
                        except pg_bench.Unavailable as exc:
                            say(f"    skipped: {exc}")
                            runs.append({"system": "postgres", "mode": mode, "clients": clients, "skipped": str(exc)})
            report["lz4_commit_stream"] = commit_bench.compression(cluster)
        report["commit_tracebacks"] = cluster.tracebacks()
        runs += _commits_without_tls(args, base)
    finally:
        if pair is not None:
            pair.stop()
            shutil.rmtree(pair.base, ignore_errors=True)
    add_ratios(runs)
    report["commits"] = runs


def _commits_without_tls(args, base: Path) -> list[dict]:
    """SAFETY FULL on a cluster started --insecure (no TLS, no logins), next to the secured rows."""
    runs = []
    with LocalCluster(base / "commits-no-tls", names=("a", "b"), first_ip=commit_bench.FIRST_IP, secure=False) as cluster:
        cluster.start_all()
        commit_bench.prepare(cluster)
        for clients in args.client_counts:
            say(f"  mirrord {NO_TLS}, {clients} client(s), {args.seconds:g} s ...")
            pids = [cluster["a"].pid, cluster["b"].pid]
            run = asdict(commit_bench.run_one(cluster["a"].address, "SAFETY FULL", clients, args.seconds, pids))
            runs.append({"system": "mirrord", **run, "mode": NO_TLS})
    return runs


def add_ratios(runs: list[dict]) -> None:
    """mirrord/PostgreSQL for throughput, p50 and p99, SAFETY FULL vs sync and SAFETY OFF vs async."""
    cell = {(r["mode"], r["clients"]): r for r in runs if "skipped" not in r}
    for r in runs:
        other = cell.get((COUNTERPART.get(r["mode"]), r["clients"]))
        if other is None or r.get("skipped"):
            continue
        r["vs_pg"] = other["mode"]
        r["ratio_commits"] = _ratio(r["commits_per_s"], other["commits_per_s"])
        r["ratio_p50"] = _ratio(r["p50_ms"], other["p50_ms"])
        r["ratio_p99"] = _ratio(r["p99_ms"], other["p99_ms"])


def _ratio(a, b):
    return a / b if a is not None and b else None


def run_failover(args, report: dict, base: Path) -> None:
    results: dict[str, list] = {}
    for kind in ("sigkill", "sigstop"):
        results[kind] = []
        for n in range(1, args.failover_runs + 1):
            r = failover_bench.one_run(kind, n, base / "failover")
            results[kind].append(r)
            took = "-" if r.failover_s is None else f"{r.failover_s:.3f} s"
            say(f"  failover {kind} {n}/{args.failover_runs}: {took}, lost {r.missing}"
                + (f", ERROR {r.error}" if r.error else "") + (f", {'; '.join(r.notes)}" if r.notes else ""))
    report["failover"] = {k: {"summary": failover_bench.summarize(v), "runs": [asdict(r) for r in v]}
                          for k, v in results.items()}


def run_catchup(args, report: dict, base: Path) -> None:
    say(f"  redo catch-up: SUSPEND, {args.catchup_mb:g} MB of log, RESUME ...")
    report["catch_up"] = asdict(log_bench.catch_up(base, args.catchup_mb, say=say))


def run_memory(args, report: dict, base: Path) -> None:
    say(f"  memory: {args.databases} mirrored databases with a witness, {args.memory_clients} clients ...")
    report["memory"] = asdict(log_bench.memory(base, args.databases, args.load_seconds, say=say, clients=args.memory_clients))


# ---------------------------------------------------------------- verdicts and tables


def targets(report: dict) -> list[dict]:
    """The targets of the performance issue (and the failover one) with what this run measured."""
    cell = {(r["mode"], r["clients"]): r for r in report.get("commits", []) if "skipped" not in r}
    out = []

    def ratio_target(mode: str, pg_mode: str, clients: int, at_least: float) -> None:
        ours, pg = cell.get((mode, clients)), cell.get((pg_mode, clients))
        measured = (f"{ours['commits_per_s']:,.0f}/s vs {pg['commits_per_s']:,.0f}/s "
                    f"({ours['commits_per_s'] / pg['commits_per_s']:.2f}x)" if ours and pg else "no data")
        out.append({"target": f"{mode} commits/s >= {at_least:g}x {pg_mode} at {clients} client(s)", "measured": measured,
                    "met": None if not (ours and pg) else ours["commits_per_s"] >= at_least * pg["commits_per_s"]})

    for clients in (8, 32):
        ratio_target("SAFETY FULL", "PG sync standby", clients, 1.0)
    ratio_target("SAFETY FULL", "PG sync standby", 1, 0.7)
    full = cell.get(("SAFETY FULL", 1))
    out.append({"target": "SAFETY FULL p50 at 1 client <= 1.0 ms",
                "measured": f"{full['p50_ms']:.2f} ms" if full else "no data",
                "met": None if not full else full["p50_ms"] <= 1.0})
    ratio_target("SAFETY OFF", "PG async standby", 32, 1.0)
    cpu = [(c, cell[("SAFETY FULL", c)].get("server_cpu_ms")) for c in sorted({c for m, c in cell if m == "SAFETY FULL"})]
    cpu = [(c, ms) for c, ms in cpu if ms is not None]
    out.append({"target": "SAFETY FULL server CPU per commit falls as clients grow",
                "measured": " / ".join(f"{ms:.2f}" for _, ms in cpu) + " ms at " + " / ".join(str(c) for c, _ in cpu) + " clients"
                if cpu else "no data",
                "met": None if len(cpu) < 2 else all(b[1] < a[1] for a, b in zip(cpu, cpu[1:]))})
    m = report.get("memory")
    if m and not m.get("error") and m.get("nodes"):
        peak = max(n["VmHWM_kB"] for n in m["nodes"].values()) / 1024
        out.append({"target": f"{m.get('clients', 0)} clients over {m['databases']} databases: no errors, RSS per node <= 100 MB",
                    "measured": f"{m.get('errors', 0)} errors, peak RSS {peak:.1f} MB",
                    "met": m.get("errors", 0) == 0 and peak <= 100})
    else:
        out.append({"target": "128 clients over 10 databases: no errors, RSS per node <= 100 MB", "measured": "no data", "met": None})
    kill = report.get("failover", {}).get("sigkill", {}).get("summary")
    if kill and kill["median_s"] is not None:
        out.append({"target": "SIGKILL failover median <= 1 s, max <= 2 s",
                    "measured": f"median {kill['median_s']:.3f} s, max {kill['max_s']:.3f} s over {kill['runs'] - kill['failed_runs']} runs",
                    "met": kill["median_s"] <= 1.0 and kill["max_s"] <= 2.0 and not kill["failed_runs"]})
    else:
        out.append({"target": "SIGKILL failover median <= 1 s, max <= 2 s", "measured": "no data", "met": None})
    return out


def _f(v, spec: str, suffix: str = "") -> str:
    return "-" if v is None else format(v, spec) + suffix


COMMIT_HEADERS = ["clients", "system", "commits/s", "p50 ms", "p99 ms", "errors", "vs PG", "commits/s ratio",
                  "p50 ratio", "p99 ratio", "server CPU ms/commit", "loadgen CPU ms/commit"]


def commit_rows(report: dict) -> list[list[str]]:
    order = {m: i for i, m in enumerate(SYSTEM_ORDER)}
    rows = []
    for r in sorted(report.get("commits", []), key=lambda r: (r["clients"], order.get(r["mode"], 99))):
        label = r["mode"] if r["system"] == "postgres" else f"mirrord {r['mode']}"
        if r.get("skipped"):
            rows.append([str(r["clients"]), label, "skipped", "-", "-", "-", "-", "-", "-", "-", "-", r["skipped"][:60]])
            continue
        rows.append([str(r["clients"]), label, _f(r["commits_per_s"], ",.0f"), _f(r["p50_ms"], ".2f"),
                     _f(r["p99_ms"], ".2f"), str(r["errors"]), r.get("vs_pg", "-").replace(" standby", "") if r.get("vs_pg") else "-",
                     _f(r.get("ratio_commits"), ".2f", "x"), _f(r.get("ratio_p50"), ".2f", "x"), _f(r.get("ratio_p99"), ".2f", "x"),
                     _f(r.get("server_cpu_ms"), ".3f"), _f(r.get("loadgen_cpu_ms"), ".3f")])
    return rows


OTHER_HEADERS = ["measure", "result"]


def other_rows(report: dict) -> list[list[str]]:
    rows = []
    for kind, label in (("sigkill", "failover, SIGKILL principal (TIMEOUT 10)"),
                        ("sigstop", "failover, SIGSTOP principal (TIMEOUT 2)")):
        s = report.get("failover", {}).get(kind, {}).get("summary")
        if s:
            rows.append([label, f"median {_f(s['median_s'], '.3f')} s, max {_f(s['max_s'], '.3f')} s, "
                                f"min {_f(s['min_s'], '.3f')} s; {s['runs'] - s['failed_runs']}/{s['runs']} runs ok, "
                                f"{s['acked']:,} acked, {s['missing']} lost, {s['split_brain_runs']} split-brain, "
                                f"{s['rejoined']}/{s['runs']} rejoined"])
    c = report.get("catch_up")
    if c:
        if c.get("error"):
            rows.append(["redo catch-up after SUSPEND", f"ERROR {c['error']}"])
        else:
            rows.append(["redo catch-up after SUSPEND",
                         f"{c['queued_bytes'] / log_bench.MB:,.0f} MB of log ({c['queued_lsns']:,} transactions): "
                         f"redo done in {_f(c['redo_s'], '.2f')} s = {_f(c['redo_mb_per_s'], ',.1f')} MB/s "
                         f"(hardened after {_f(c['harden_s'], '.2f')} s = {_f(c['harden_mb_per_s'], ',.1f')} MB/s)"])
            rows.append(["lz4 on the wire, catch-up stream (~1 KB rows, half random)",
                         f"{_f(c['lz4_ratio'], '.2f')}x ({c['wire_raw'] or 0:,} raw -> {c['wire_bytes'] or 0:,} bytes)"])
    if "lz4_commit_stream" in report:
        rows.append(["lz4 on the wire, commit stream (one-row INSERTs)", report["lz4_commit_stream"]])
    m = report.get("memory")
    if m:
        if m.get("error"):
            rows.append([f"peak RSS, {m['databases']} mirrored databases", f"ERROR {m['error']}"])
        else:
            per = ", ".join(f"{n['role']} {n['VmHWM_kB'] / 1024:.1f} MB" for n in m["nodes"].values())
            rows.append([f"peak RSS (VmHWM), {m['databases']} mirrored databases, {m.get('clients', 0)} clients, "
                         f"{m['commits']:,} commits, {m.get('errors', 0)} errors", per])
    if "postgres" in report and report["postgres"].get("skipped"):
        rows.append(["PostgreSQL rows", f"skipped: {report['postgres']['skipped']}"])
    for t in report.get("targets", []):
        verdict = {True: "met", False: "NOT met", None: "no data"}[t["met"]]
        rows.append([f"target: {t['target']}", verdict if t["met"] is None else f"{verdict}: {t['measured']}"])
    return rows


def print_tables(report: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for headers, rows in ((COMMIT_HEADERS, commit_rows(report)), (OTHER_HEADERS, other_rows(report))):
            widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
            for line in [headers, ["-" * w for w in widths], *rows]:
                print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))
            print()
        return
    console = Console(width=max(200, Console().width))
    table = Table(title="commit throughput and latency: one-row INSERT (~100-byte value); ratios are mirrord / PostgreSQL")
    for i, h in enumerate(COMMIT_HEADERS):
        table.add_column(h, justify="left" if i in (1, 6) else "right")
    last = None
    for row in commit_rows(report):
        if last is not None and row[0] != last:
            table.add_section()
        last = row[0]
        table.add_row(*row)
    console.print(table)
    other = Table(title="failover, catch-up, compression, memory, targets")
    other.add_column("measure")
    other.add_column("result", overflow="fold")
    for row in other_rows(report):
        other.add_row(*row)
    console.print(other)


def markdown(report: dict) -> str:
    def table(headers, rows):
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(lines)

    h = report["header"]
    return "\n\n".join([
        f"# mirrord benchmark suite, {h['started']}",
        f"`{h['command']}`\n\n{h['machine']}; load average before {h['load_before']}, after {h['load_after']}; "
        f"{h['seconds']:g} s per commit cell; took {h['took_s']:.0f} s.",
        "## Commits\n\nOne-row INSERT of a ~100-byte value; ratios are mirrord / PostgreSQL "
        "(SAFETY FULL vs the synchronous standby, SAFETY OFF vs the asynchronous one).\n\n"
        + table(COMMIT_HEADERS, commit_rows(report)),
        "## Failover, catch-up, compression, memory, targets\n\n" + table(OTHER_HEADERS, other_rows(report)),
        "![latency](" + Path(report["files"]["png"]).name + ")\n" if report["files"].get("png") else "",
    ])


def plot(report: dict, path: Path) -> bool:
    """Throughput and p50/p99 latency per system against clients; False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = [r for r in report.get("commits", []) if not r.get("skipped") and r.get("p50_ms") is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, mode in enumerate(m for m in SYSTEM_ORDER if any(r["mode"] == m for r in runs)):
        mine = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["clients"])
        label = mode if mode.startswith("PG") else f"mirrord {mode}"
        color = f"C{i}"
        xs = [r["clients"] for r in mine]
        left.plot(xs, [r["commits_per_s"] for r in mine], "o-", color=color, label=label)
        right.plot(xs, [r["p50_ms"] for r in mine], "o-", color=color, label=f"{label} p50")
        right.plot(xs, [r["p99_ms"] for r in mine], "s--", color=color, alpha=0.6, label=f"{label} p99")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["clients"] for r in runs}) or [1])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent clients")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("commits/s")
    left.set_title("commit throughput")
    left.legend(fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("latency ms (log scale)")
    right.set_title("commit latency: p50 solid, p99 dashed")
    right.legend(fontsize=6, ncol=2)
    fig.suptitle(f"one-row INSERT, {report['header']['machine']}, {report['header']['started']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    header = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": f"nproc={nproc}, python {sys.version.split()[0]}, {sys.platform}",
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "load_before": load_before, "seconds": args.seconds, "quick": args.quick,
    }
    say(f"command: {header['command']}")
    say(f"machine: {header['machine']}; load average {load_before}; load generators and all servers share these cores")
    report: dict = {"header": header}
    base = Path(tempfile.mkdtemp(prefix="mirrord-suite-"))
    t0 = time.monotonic()
    steps = [("commits", run_commits)]
    steps += [(p, f) for p, f in (("failover", run_failover), ("catchup", run_catchup), ("memory", run_memory))
              if p not in args.skip]
    for name, step in steps:
        say(f"{name} ...")
        try:
            step(args, report, base)
        except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others' numbers
            report.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            say(f"  {name} FAILED: {type(exc).__name__}: {exc}")
    header["took_s"] = time.monotonic() - t0
    header["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report["targets"] = targets(report)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"suite-{started.strftime('%Y%m%d-%H%M%S')}"
    report["files"] = {"json": f"{stem}.json", "md": f"{stem}.md"}
    if plot(report, Path(f"{stem}-latency.png")):
        report["files"]["png"] = f"{stem}-latency.png"
    print_tables(report)
    Path(report["files"]["json"]).write_text(json.dumps(report, indent=2, default=str))
    Path(report["files"]["md"]).write_text(markdown(report))
    say(f"load average after: {header['load_after']}; took {header['took_s']:.0f} s")
    say("wrote " + ", ".join(report["files"].values()))

    bad = bool(report.get("errors")) or bool(report.get("commit_tracebacks"))
    for kind, f in report.get("failover", {}).items():
        s = f["summary"]
        bad = bad or bool(s["missing"] or s["split_brain_runs"] or s["failed_runs"])
    for part in ("catch_up", "memory"):
        bad = bad or bool(report.get(part, {}).get("error"))
    if bad:
        say(f"FAILED: a part failed, lost an acknowledged write or left tracebacks; node logs kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
