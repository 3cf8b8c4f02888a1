"""The benchmark suite's pure parts: pgbench log parsing, ratios, targets, tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pg_bench  # noqa: E402
import suite  # noqa: E402


def test_pgbench_log_drops_the_warm_up_and_counts_failures():
    # client tx latency_us script end_s end_us
    lines = [
        "0 0 2000 0 100 2000",      # started 100.000: warm-up
        "0 1 1000 0 100 600000",    # started 100.599: kept
        "1 0 3000 0 101 3000",      # started 101.000: kept
        "1 1 failed 0 101 5000",
        "garbage",
    ]
    kept, errors, window = pg_bench.parse_pgbench_log(lines, warmup=0.5)
    assert kept == [1.0, 3.0]
    assert errors == 1
    assert window == pytest.approx(101.003 - 100.5)


def test_pgbench_log_empty():
    assert pg_bench.parse_pgbench_log([], warmup=0.5) == ([], 0, 0.0)


def run(system, mode, clients, tps, p50, p99):
    return {"system": system, "mode": mode, "clients": clients, "commits": int(tps), "errors": 0, "seconds": 1.0,
            "commits_per_s": tps, "p50_ms": p50, "p99_ms": p99}


def report():
    runs = [
        run("mirrord", "SAFETY FULL", 1, 400, 2.0, 8.0), run("postgres", "PG sync standby", 1, 2000, 0.5, 1.0),
        run("mirrord", "SAFETY OFF", 1, 1000, 1.0, 2.0), run("postgres", "PG async standby", 1, 3000, 0.25, 0.5),
        run("mirrord", "standalone", 1, 1500, 0.7, 1.0),
        run("mirrord", "SAFETY FULL", 8, 3000, 2.0, 8.0), run("postgres", "PG sync standby", 8, 2000, 4.0, 8.0),
        {"system": "postgres", "mode": "PG async standby", "clients": 8, "skipped": "pgbench failed"},
    ]
    suite.add_ratios(runs)
    return {"commits": runs, "failover": {"sigkill": {"summary": {
        "runs": 10, "failed_runs": 0, "median_s": 0.2, "max_s": 2.5, "min_s": 0.1, "acked": 5, "missing": 0,
        "split_brain_runs": 0, "rejoined": 10}}}}


def test_ratios_pair_full_with_sync_and_off_with_async():
    runs = {(r["mode"], r["clients"]): r for r in report()["commits"]}
    full = runs[("SAFETY FULL", 1)]
    assert full["vs_pg"] == "PG sync standby"
    assert (full["ratio_commits"], full["ratio_p50"], full["ratio_p99"]) == (0.2, 4.0, 8.0)
    assert runs[("SAFETY OFF", 1)]["ratio_commits"] == pytest.approx(1 / 3)
    assert "ratio_commits" not in runs[("standalone", 1)]
    assert runs[("SAFETY FULL", 8)]["ratio_commits"] == 1.5


def test_targets_say_met_not_met_or_no_data():
    verdicts = {t["target"]: t["met"] for t in suite.targets(report())}
    assert verdicts["SAFETY FULL commits/s >= 1x PG sync standby at 8 client(s)"] is True
    assert verdicts["SAFETY FULL commits/s >= 1x PG sync standby at 32 client(s)"] is None
    assert verdicts["SAFETY FULL commits/s >= 0.7x PG sync standby at 1 client(s)"] is False  # 400 vs 2000
    assert verdicts["SAFETY FULL p50 at 1 client <= 1.0 ms"] is False
    assert verdicts["SAFETY OFF commits/s >= 1x PG async standby at 32 client(s)"] is None
    assert verdicts["SAFETY FULL server CPU per commit falls as clients grow"] is None  # no CPU figures
    assert verdicts["128 clients over 10 databases: no errors, RSS per node <= 100 MB"] is None
    assert verdicts["SIGKILL failover median <= 1 s, max <= 2 s"] is False  # max 2.5 s


def test_cpu_and_memory_targets():
    r = report()
    cells = {(x["mode"], x["clients"]): x for x in r["commits"]}
    cells[("SAFETY FULL", 1)]["server_cpu_ms"], cells[("SAFETY FULL", 8)]["server_cpu_ms"] = 2.0, 1.0
    r["memory"] = {"databases": 10, "clients": 128, "commits": 5000, "errors": 0,
                   "nodes": {"a": {"role": "principal", "VmHWM_kB": 90 * 1024}, "b": {"role": "mirror", "VmHWM_kB": 80 * 1024}}}
    by = {t["target"]: t for t in suite.targets(r)}
    assert by["SAFETY FULL server CPU per commit falls as clients grow"]["met"] is True
    assert by["SAFETY FULL server CPU per commit falls as clients grow"]["measured"] == "2.00 / 1.00 ms at 1 / 8 clients"
    assert by["128 clients over 10 databases: no errors, RSS per node <= 100 MB"]["met"] is True
    r["memory"]["nodes"]["b"]["VmHWM_kB"] = 101 * 1024
    by = {t["target"]: t for t in suite.targets(r)}
    assert by["128 clients over 10 databases: no errors, RSS per node <= 100 MB"]["met"] is False
    cells[("SAFETY FULL", 8)]["server_cpu_ms"] = 2.5
    by = {t["target"]: t for t in suite.targets(r)}
    assert by["SAFETY FULL server CPU per commit falls as clients grow"]["met"] is False


def test_tables_show_skipped_rows_with_the_reason():
    r = report()
    r["targets"] = suite.targets(r)
    rows = suite.commit_rows(r)
    assert all(len(row) == len(suite.COMMIT_HEADERS) for row in rows)
    skipped = [row for row in rows if row[2] == "skipped"]
    assert skipped and skipped[0][-1] == "pgbench failed"
    other = dict(suite.other_rows(r))
    assert other["target: SIGKILL failover median <= 1 s, max <= 2 s"].startswith("NOT met")
    r["header"] = {"started": "now", "command": "suite.py", "machine": "m", "load_before": "1", "load_after": "1",
                   "seconds": 1.0, "took_s": 1.0}
    r["files"] = {}
    text = suite.markdown(r)
    assert "| 8 | PG async standby | skipped |" in text
