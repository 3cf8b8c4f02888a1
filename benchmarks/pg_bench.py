"""PostgreSQL with a streaming standby, measured with pgbench: the yardstick for mirrord.

    python benchmarks/pg_bench.py [--seconds 5] [--clients 1,8,32] [--json out.json]

How it works: a primary and a standby on loopback (127.0.0.58 and .59, free
ports), in a temporary directory, started with initdb, pg_basebackup and
pg_ctl. PostgreSQL refuses to run as root, so when we are root every server
command runs as the `postgres` user (created if missing) through runuser. The
standby streams from the primary with application_name `standby1`; the two
modes differ only in the primary's `synchronous_standby_names`:

* synchronous standby: 'standby1' with synchronous_commit=on (a commit returns
  once the standby has flushed its WAL: the counterpart of SAFETY FULL);
* asynchronous standby: '' (a commit returns after the primary's own flush:
  the counterpart of SAFETY OFF).

The load is pgbench with a custom script, the same one-row INSERT of a
~100-byte value as the mirrord benchmark, one connection per client
(`-c N -j min(N, cores)`), prepared statements, `--log` for per-transaction
latencies; the first WARMUP seconds of the log are dropped like mirrord's
warm-up. Server settings are the defaults except what replication needs, so
fsync is on and every commit waits for the primary's own WAL flush too.

When the binaries are missing the module tries `apt-get install postgresql-15`
(then `postgresql`) as root, and says so; when that is impossible it returns a
reason and the suite prints the rows as skipped.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import pwd
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit_bench import VALUE, WARMUP, Run, percentile, process_cpu  # noqa: E402

PRIMARY_HOST, STANDBY_HOST = "127.0.0.58", "127.0.0.59"  # inside the benchmarks' 127.0.0.51-59
STANDBY_NAME = "standby1"
MODES = {"PG sync standby": STANDBY_NAME, "PG async standby": ""}
SERVICE_USER = "postgres"
CANDIDATE_BINDIRS = ["/usr/lib/postgresql/15/bin"]


class Unavailable(Exception):
    """PostgreSQL cannot be benchmarked here; the message says why."""


# ---------------------------------------------------------------- finding / installing


def _version_of(bindir: Path) -> str | None:
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() or None


def find_bindir() -> Path | None:
    """A directory holding postgres, initdb, pg_ctl, pg_basebackup and pgbench (15 preferred)."""
    candidates = [Path(p) for p in CANDIDATE_BINDIRS]
    candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")), reverse=True)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    for d in candidates:
        if all((d / tool).exists() for tool in ("postgres", "initdb", "pg_ctl", "pg_basebackup", "pgbench")):
            return d
    return None


def ensure_installed(say=print) -> Path:
    """The binaries' directory, installing PostgreSQL from Debian packages when missing."""
    found = find_bindir()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable("PostgreSQL binaries not found and cannot install them (needs root and apt-get); "
                          "install postgresql-15 to get these rows")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for package in ("postgresql-15", "postgresql"):
        say(f"PostgreSQL not found: installing the Debian package {package} (apt-get install -y {package}) ...")
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        proc = subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, text=True)
        if proc.returncode == 0 and (found := find_bindir()):
            return found
        say(f"  apt-get install {package} failed: {proc.stderr.strip()[-300:]}")
    raise Unavailable("PostgreSQL is not installed and apt-get could not install postgresql-15 or postgresql")


# ---------------------------------------------------------------- the cluster


def _free_port(host: str) -> int:
    from mirrord_testing.localcluster import free_port
    return free_port(host)


class PgPair:
    """A primary and a streaming standby in a temporary directory."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base
        self.primary = base / "primary"
        self.standby = base / "standby"
        self.primary_port = _free_port(PRIMARY_HOST)
        self.standby_port = _free_port(STANDBY_HOST)
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            _ensure_user(SERVICE_USER)
            self.as_user = ["runuser", "-u", SERVICE_USER, "--"]
            pw = pwd.getpwnam(SERVICE_USER)
            os.chown(base, pw.pw_uid, pw.pw_gid)
        self.started: list[Path] = []

    def _run(self, tool: str, *args: str, timeout: float = 120) -> str:
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        if proc.returncode != 0:
            raise Unavailable(f"{tool} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc.stdout

    def psql(self, sql: str, port: int | None = None, host: str = PRIMARY_HOST) -> str:
        return self._run("psql", "-X", "-q", "-A", "-t", "-h", host, "-p", str(port or self.primary_port),
                         "-U", SERVICE_USER, "-d", "postgres", "-c", sql, timeout=60).strip()

    def start(self) -> None:
        """initdb, configure, start the primary; base backup, configure, start the standby."""
        self._run("initdb", "-D", str(self.primary), "-U", SERVICE_USER, "--auth=trust", "-E", "UTF8", "--no-instructions")
        with open(self.primary / "postgresql.conf", "a") as conf:
            conf.write(_conf(PRIMARY_HOST, self.primary_port, self.base)
                       + "wal_level = replica\nmax_wal_senders = 4\nsynchronous_commit = on\n"
                         f"synchronous_standby_names = '{STANDBY_NAME}'\n")
        with open(self.primary / "pg_hba.conf", "a") as hba:
            hba.write("host all all 127.0.0.0/8 trust\nhost replication all 127.0.0.0/8 trust\n")
        self._pg_ctl_start(self.primary)
        self._run("pg_basebackup", "-h", PRIMARY_HOST, "-p", str(self.primary_port), "-U", SERVICE_USER,
                  "-D", str(self.standby), "-X", "stream", "-c", "fast")
        (self.standby / "standby.signal").touch()
        with open(self.standby / "postgresql.auto.conf", "a") as conf:
            conf.write(f"primary_conninfo = 'host={PRIMARY_HOST} port={self.primary_port} user={SERVICE_USER} "
                       f"application_name={STANDBY_NAME}'\n")
        with open(self.standby / "postgresql.conf", "a") as conf:
            conf.write(_conf(STANDBY_HOST, self.standby_port, self.base))
        if self.as_user:
            pw = pwd.getpwnam(SERVICE_USER)
            for path in (self.standby / "standby.signal", self.standby / "postgresql.auto.conf"):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self._pg_ctl_start(self.standby)
        self.psql("CREATE TABLE t(id bigserial PRIMARY KEY, v text NOT NULL)")

    def _pg_ctl_start(self, datadir: Path) -> None:
        self._run("pg_ctl", "-D", str(datadir), "-l", str(datadir) + ".log", "-w", "-t", "60", "start")
        self.started.append(datadir)

    def postmaster_pids(self) -> list[int]:
        """The postmasters of primary and standby (first line of postmaster.pid)."""
        pids = []
        for datadir in self.started:
            try:
                pids.append(int((datadir / "postmaster.pid").read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return pids

    def set_mode(self, standby_names: str, timeout: float = 30) -> None:
        """Switch the primary between synchronous and asynchronous standby; wait until it took."""
        self.psql(f"ALTER SYSTEM SET synchronous_standby_names = '{standby_names}'")
        self.psql("SELECT pg_reload_conf()")
        want = "sync" if standby_names else "async"
        deadline = time.monotonic() + timeout
        while True:
            state = self.psql(f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}' "
                              "AND state = 'streaming'")
            if state == want:
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"the standby did not become {want} within {timeout:g} s (sync_state {state!r})")
            time.sleep(0.05)  # polling the server's view with a deadline

    def stop(self) -> None:
        for datadir in reversed(self.started):
            try:
                self._run("pg_ctl", "-D", str(datadir), "-m", "immediate", "-w", "stop", timeout=60)
            except (Unavailable, subprocess.TimeoutExpired):
                pass
        self.started.clear()


def _conf(host: str, port: int, base: Path) -> str:
    # max_connections: the suite's 128-client cell, plus the WAL senders and psql
    return (f"\n# mirrord benchmark\nlisten_addresses = '{host}'\nport = {port}\n"
            f"unix_socket_directories = '{base}'\nmax_connections = 300\n")


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)


# ---------------------------------------------------------------- pgbench


def run_pgbench(pair: PgPair, mode: str, clients: int, seconds: float) -> Run:
    """One pgbench run; throughput and percentiles from its per-transaction log."""
    work = Path(tempfile.mkdtemp(prefix=f"pgbench-{clients}-", dir=pair.base))
    script = work / "insert.sql"
    script.write_text(f"INSERT INTO t(v) VALUES ('{VALUE}');\n")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, min(clients, cores))
    total = seconds + WARMUP
    cmd = [str(pair.bindir / "pgbench"), "-n", "-h", PRIMARY_HOST, "-p", str(pair.primary_port), "-U", SERVICE_USER,
           "-M", "prepared", "-f", str(script), "-c", str(clients), "-j", str(threads),
           "-T", str(max(1, math.ceil(total))), "--log", "--log-prefix", str(work / "log"), "postgres"]
    postmasters = pair.postmaster_pids()
    servers = process_cpu(postmasters, children=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=total + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    servers = process_cpu(postmasters, children=True) - servers
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise Unavailable(f"pgbench failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    lines = [line for path in work.glob("log.*") for line in path.read_text().splitlines()]
    shutil.rmtree(work, ignore_errors=True)
    kept, errors, window = parse_pgbench_log(lines, WARMUP)
    if not kept:
        raise Unavailable(f"pgbench completed no transaction after the warm-up ({errors} failed); "
                          f"its output: {proc.stdout.strip()[-300:]}")
    # loadgen: pgbench itself; servers: every PostgreSQL process of primary and standby
    return Run(mode, clients, len(kept), errors, window, len(kept) / window,
               percentile(kept, 50), percentile(kept, 99), loadgen_cpu_ms=cpu * 1000 / max(1, len(lines)),
               server_cpu_ms=servers * 1000 / max(1, len(lines)))


def parse_pgbench_log(lines: list[str], warmup: float) -> tuple[list[float], int, float]:
    """Latencies (ms, ascending) of transactions started after the warm-up, failures, measured seconds.

    A line of `pgbench --log` is `client_id transaction_no time script_no
    time_epoch time_us [...]`: `time` is the latency in microseconds (or
    `failed`/`skipped`), `time_epoch.time_us` when the transaction ended.
    """
    done: list[tuple[float, float]] = []  # (start s, latency ms)
    errors = 0
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        if fields[2] in ("failed", "skipped"):
            errors += 1
            continue
        latency_ms = int(fields[2]) / 1000
        end = int(fields[4]) + int(fields[5]) / 1e6
        done.append((end - latency_ms / 1000, latency_ms))
    if not done:
        return [], errors, 0.0
    start = min(s for s, _ in done) + warmup
    stop = max(s + lat / 1000 for s, lat in done)
    kept = sorted(lat for s, lat in done if s >= start)
    return kept, errors, max(stop - start, 1e-9)


def run_all(client_counts: list[int], seconds: float, say=print) -> tuple[list[Run], str]:
    """Every (mode, clients) cell; (runs, description). Raises Unavailable with the reason."""
    bindir = ensure_installed(say)
    version = _version_of(bindir) or "unknown version"
    base = Path(tempfile.mkdtemp(prefix="mirrord-bench-pg-"))
    pair = PgPair(bindir, base)
    runs: list[Run] = []
    try:
        pair.start()
        for clients in client_counts:
            for mode, names in MODES.items():
                pair.set_mode(names)
                say(f"  running {mode}, {clients} client(s), {seconds:g} s ...")
                runs.append(run_pgbench(pair, mode, clients, seconds))
    finally:
        pair.stop()
        shutil.rmtree(base, ignore_errors=True)
    return runs, f"{version} ({bindir}), fsync on, synchronous_commit=on"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="PostgreSQL primary + standby commit throughput and latency (pgbench)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    try:
        runs, what = run_all(counts, args.seconds, say=lambda s: print(s, flush=True))
    except Unavailable as exc:
        print(f"PostgreSQL rows skipped: {exc}")
        return 1
    print(what)
    for r in runs:
        print(f"{r.clients:>3} {r.mode:<17} {r.commits_per_s:>9,.0f}/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  "
              f"errors {r.errors}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"postgres": what, "runs": [asdict(r) for r in runs]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
