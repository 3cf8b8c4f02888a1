"""A narrated tour of mirrord: three nodes on 127.0.0.11-13, a mirrored database, real faults.

    bash deploy/demo.sh            install into .venv, run the tour, leave the nodes up
    bash deploy/demo.sh stop       stop the nodes the tour left up
    python deploy/demo.py [--stop-at-end | --stop]   (what demo.sh runs)

How it works: a LocalCluster (mirrord_testing.localcluster) with data under
./demo-data/ (wiped at start) runs nodes a, b and c. Each step prints the
`mirrorctl` command it runs and runs exactly that (the real CLI, so the output
is what you would see), or says what it does with the client library (bulk
inserts, polling). The tour: a session a -> b with witness c (SAFETY FULL),
1,000 commits, SIGKILL of the mirror (the principal runs exposed, the mirror
rejoins), SIGKILL of the principal (automatic failover to b, timed; a rejoins
as mirror), and a manual failover back to a. A step that does not come out as
expected stops the demo (and its nodes) with a non-zero exit. At the end the
nodes keep running, detached, and the demo prints how to talk to them and how to
stop them (their PIDs are in demo-data/pids.json); --stop-at-end stops them instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout even without `pip install -e .`

from mirrord_testing.localcluster import LocalCluster, LocalNode, wait_for  # noqa: E402
from mirrorctl.client import Client, ServerError, Unreachable  # noqa: E402

DATA = ROOT / "demo-data"
PIDS = DATA / "pids.json"
DB = "shop"
NOT_READY = (LookupError, Unreachable, ServerError, OSError)
WITNESS_SQL = "SELECT * FROM sys.database_mirroring_witnesses"
BRIEF_STATUS_SQL = ("SELECT database, role, state, role_sequence, partner, witness_state, "
                    "failover_lsn, end_of_log_lsn, redo_lsn FROM sys.database_mirroring")


class StepFailed(Exception):
    """A step did not come out as the demo expects."""


def say(text: str) -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n=== {title}")


def mirrorctl(node: LocalNode, *args: str, db: str | None = None, check: bool = True) -> int:
    """Print and run one mirrorctl command against node; its exit status."""
    argv = ["-S", node.address, *(["-d", db] if db else []), *args]
    say(f"$ mirrorctl {' '.join(_shell_word(a) for a in argv)}")
    code = subprocess.call([sys.executable, "-m", "mirrorctl.cli", *argv])
    sys.stdout.flush()
    if check and code != 0:
        raise StepFailed(f"mirrorctl exited with status {code}")
    return code


def _shell_word(arg: str) -> str:
    """arg as you would type it: bare if safe, else in double quotes when that needs no escaping."""
    if arg and shlex.quote(arg) == arg:
        return arg
    if not any(ch in arg for ch in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def sql(node: LocalNode, statement: str, db: str | None = DB, check: bool = True) -> int:
    return mirrorctl(node, "-Q", statement, db=db, check=check)


def status_of(node: LocalNode) -> dict | None:
    """node's status row for the demo database, or None if it cannot say now."""
    try:
        return node.status(DB)
    except NOT_READY:
        return None


def wait_until(predicate, timeout: float, what: str):
    """wait_for with a line of narration; StepFailed with the detail on timeout."""
    say(f"... waiting (up to {timeout:g} s) for {what}")
    started = time.monotonic()
    try:
        value = wait_for(predicate, timeout, what, interval=0.1, retry_on=NOT_READY)
    except TimeoutError as exc:
        raise StepFailed(str(exc)) from None
    say(f"    done after {time.monotonic() - started:.1f} s")
    return value


def synchronized(cluster: LocalCluster, principal: str, mirror: str) -> bool:
    p, m = status_of(cluster[principal]), status_of(cluster[mirror])
    return bool(p and m and p["role"] == "PRINCIPAL" and m["role"] == "MIRROR"
                and p["state"] == m["state"] == "SYNCHRONIZED")


def insert_rows(node: LocalNode, first: int, count: int) -> int:
    """count one-row commits through the client library; the number acknowledged."""
    say(f"(client library) {count:,} INSERTs into {DB}.items on {node.name}, one commit each")
    started = time.monotonic()
    with Client.connect(node.address) as client:
        for i in range(first, first + count):
            client.query("INSERT INTO items(id, name, qty) VALUES (?, ?, ?)", db=DB,
                         params=[i, f"item {i}", i % 10], timeout=30)
    elapsed = time.monotonic() - started
    say(f"    {count:,} commits acknowledged in {elapsed:.2f} s ({count / elapsed:,.0f}/s)")
    return count


def row_count(node: LocalNode) -> int:
    return node.query("SELECT count(*) FROM items", db=DB).rows[0][0]


def check_rows(node: LocalNode, expected: int) -> None:
    sql(node, "SELECT count(*) AS rows_in_items FROM items")
    found = row_count(node)
    if found != expected:
        raise StepFailed(f"{node.name} has {found} rows, {expected} were acknowledged")
    say(f"    all {expected:,} acknowledged rows are there")


# ------------------------------------------------------------------ the steps


def set_up(cluster: LocalCluster) -> None:
    """Database, table, session a -> b SAFETY FULL, witness c."""
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    step("Create the database and a table on node a")
    sql(a, f"CREATE DATABASE {DB}", db=None)
    sql(a, "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL)")
    sql(a, "INSERT INTO items(id, name, qty) VALUES (1, 'apple', 3), (2, 'pear', 5), (3, 'plum', 7)")
    sql(a, "SELECT * FROM items")

    step("Mirror it to node b: SET PARTNER on the mirror first (it seeds itself), then on the principal")
    sql(b, f"ALTER DATABASE {DB} SET PARTNER = '{a.endpoint_url}'", db=None)
    sql(a, f"ALTER DATABASE {DB} SET PARTNER = '{b.endpoint_url}'", db=None)
    sql(a, f"ALTER DATABASE {DB} SET PARTNER SAFETY FULL", db=None)
    wait_until(lambda: synchronized(cluster, "a", "b"), 60, "a and b to report SYNCHRONIZED")

    step("Add node c as the witness (high safety with automatic failover)")
    sql(a, f"ALTER DATABASE {DB} SET WITNESS = '{c.endpoint_url}'", db=None)
    wait_until(lambda: (status_of(a) or {}).get("witness_state") == "CONNECTED", 30,
               "a to see the witness CONNECTED")
    say("    the witness keeps, per database, the role sequence, who is principal, and whether the mirror "
        "is synchronized:")
    sql(c, WITNESS_SQL, db=None)


def show_status(cluster: LocalCluster, *names: str) -> None:
    for name in names:
        mirrorctl(cluster[name], "status")


def brief_status(*nodes: LocalNode) -> None:
    """The status columns that tell the failover story."""
    for node in nodes:
        sql(node, BRIEF_STATUS_SQL, db=None)


def lose_the_mirror(cluster: LocalCluster, acked: int) -> int:
    """SIGKILL b, write on the exposed principal, restart b and watch it catch up."""
    a, b = cluster["a"], cluster["b"]
    step("SIGKILL the mirror (b); the principal goes on alone, exposed")
    b.kill()
    say("    killed b (SIGKILL)")
    wait_until(lambda: (status_of(a) or {}).get("state") == "DISCONNECTED", 30, "a to report DISCONNECTED")
    acked += insert_rows(a, acked + 1, 200)
    mirrorctl(a, "status")

    step("Restart b: it rejoins by itself and catches up (no statement needed)")
    b.start()
    say(f"    b is back (pid {b.pid})")
    wait_until(lambda: synchronized(cluster, "a", "b"), 60, "a and b to report SYNCHRONIZED again")
    show_status(cluster, "a", "b")
    return acked


def lose_the_principal(cluster: LocalCluster, acked: int) -> int:
    """SIGKILL a; b and the witness c fail over automatically; b takes writes; a rejoins as mirror."""
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    step("SIGKILL the principal (a): the mirror (b) and the witness (c) fail over automatically")
    before = status_of(b) or {}
    killed = time.monotonic()
    a.kill()
    say("    killed a (SIGKILL)")
    say("... polling b's status until it reports role PRINCIPAL")
    try:
        wait_for(lambda: (status_of(b) or {}).get("role") == "PRINCIPAL", 30, "b to become PRINCIPAL",
                 interval=0.01, retry_on=NOT_READY)
    except TimeoutError as exc:
        raise StepFailed(str(exc)) from None
    say(f"    b is PRINCIPAL {time.monotonic() - killed:.2f} s after the kill "
        "(a killed process resets its connections: nobody waits for PARTNER TIMEOUT)")

    step("What the survivors say")
    brief_status(b)
    row = status_of(b) or {}
    if row.get("role_sequence") != (before.get("role_sequence") or 0) + 1:
        raise StepFailed(f"role_sequence went from {before.get('role_sequence')} to {row.get('role_sequence')}")
    say(f"    b: role {row.get('role')}, state {row.get('state')} (its partner is gone), role_sequence "
        f"{before.get('role_sequence')} -> {row.get('role_sequence')}, witness {row.get('witness_state')}")
    say("    and the witness (c) records who is principal now:")
    sql(c, WITNESS_SQL, db=None)

    step("The data is intact on the new principal (b), and it takes writes")
    check_rows(b, acked)
    acked += insert_rows(b, acked + 1, 100)
    check_rows(b, acked)

    step("Restart a: it rejoins as the mirror by itself (no statement needed) and catches up")
    a.start()
    say(f"    a is back (pid {a.pid})")
    wait_until(lambda: synchronized(cluster, "b", "a"), 60, "b PRINCIPAL and a MIRROR, both SYNCHRONIZED")
    brief_status(b, a)
    return acked


def fail_back(cluster: LocalCluster, acked: int) -> None:
    """Manual failover back to a, issued on the principal (b)."""
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    step("Manual failover back to a: SET PARTNER FAILOVER, issued on the principal (b)")
    wait_until(lambda: (status_of(b) or {}).get("witness_state") == "CONNECTED", 30,
               "b to see the witness CONNECTED")
    started = time.monotonic()
    sql(b, f"ALTER DATABASE {DB} SET PARTNER FAILOVER", db=None)
    say(f"    the roles switched in {time.monotonic() - started:.2f} s, with no data loss "
        "(b waited until a had hardened its whole log)")
    wait_until(lambda: synchronized(cluster, "a", "b"), 60, "a PRINCIPAL and b MIRROR, both SYNCHRONIZED")

    step("Final status: a is principal again, b mirror, c witness")
    brief_status(a, b)
    row = status_of(a) or {}
    say(f"    a: role {row.get('role')}, state {row.get('state')}, role_sequence {row.get('role_sequence')} "
        "(one more for each role change: the automatic failover and the manual one)")
    sql(c, WITNESS_SQL, db=None)
    check_rows(a, acked)


def goodbye(cluster: LocalCluster, principal: str, keep_running: bool) -> None:
    if not keep_running:
        step("Done")
        say("    the nodes are stopped now (--stop-at-end); run `bash deploy/demo.sh` to leave them up")
        return
    record_pids(cluster)
    p = cluster[principal]
    mirrorctl_path = Path(sys.executable).parent / "mirrorctl"
    ctl = os.path.relpath(mirrorctl_path) if mirrorctl_path.exists() else "mirrorctl"
    step("The cluster is still running: talk to it yourself")
    for node in cluster:
        say(f"    node {node.name} (pid {node.pid}): client {node.address}, endpoint {node.endpoint_url}, "
            f"log {os.path.relpath(node.log_path)}")
    say(f"    {node_roles(cluster)}")
    say("")
    tls = os.path.relpath(cluster.security.tls_dir)
    say(f"    export MIRRORCTL_TLS_CA={tls}/ca.crt MIRRORCTL_USER=sa MIRRORCTL_PASSWORD=$(cat {tls}/admin-password)")
    say(f"    {ctl} -S {p.address} status")
    say(f"    {ctl} -S {p.address} -d {DB} -Q \"SELECT count(*) FROM items\"")
    say(f"    {ctl} -S {p.address} -d {DB} -Q \"INSERT INTO items(name, qty) VALUES ('fig', 2)\"")
    say(f"    kill -9 {p.pid}    # SIGKILL the principal ({p.name}), then watch "
        f"{ctl} -S {cluster['b'].address} status")
    say("    from Python (.venv/bin/python):")
    say("      from mirrorctl.client import Client")
    say(f"      with Client.connect(\"{p.address}\") as c: print(c.query(\"SELECT * FROM items LIMIT 3\", "
        f"db=\"{DB}\").as_dicts())   # the login and CA from the MIRRORCTL_* variables above")
    say("")
    say(f"    stop the cluster:  bash deploy/demo.sh stop   (SIGTERMs the PIDs in {os.path.relpath(PIDS)})")


def node_roles(cluster: LocalCluster) -> str:
    """'shop: a PRINCIPAL, b MIRROR, c witness', as the nodes report it now."""
    parts = []
    for node in cluster:
        row = status_of(node)
        parts.append(f"{node.name} {row['role'] if row else 'witness'}")
    return f"{DB}: " + ", ".join(parts)


# ------------------------------------------------------------------ pids


def record_pids(cluster: LocalCluster) -> None:
    PIDS.write_text(json.dumps({n.name: n.pid for n in cluster if n.is_running()}, indent=2))


def _is_mirrord(pid: int) -> bool:
    """The PID still belongs to a mirrord node (not a recycled PID)."""
    try:
        return b"mirrord.node" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_recorded(timeout: float = 10) -> int:
    """SIGTERM the nodes in pids.json and wait for them to exit."""
    if not PIDS.exists():
        say(f"no {PIDS.relative_to(ROOT)}: nothing to stop")
        return 0
    pids = {name: pid for name, pid in json.loads(PIDS.read_text()).items() if _is_mirrord(pid)}
    for name, pid in pids.items():
        say(f"SIGTERM node {name} (pid {pid})")
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_is_mirrord(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids.values() if _is_mirrord(pid)]
    PIDS.unlink()
    if left:
        say(f"still running after {timeout:g} s: {left} (kill -9 them if you must)")
        return 1
    say("stopped")
    return 0


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stop-at-end", dest="keep_running", action="store_false",
                        help="stop the nodes at the end instead of leaving them up")
    parser.add_argument("--keep-running", dest="keep_running", action="store_true",
                        help="leave the nodes up at the end (the default)")
    parser.add_argument("--stop", action="store_true", help="stop the nodes an earlier run left up")
    parser.set_defaults(keep_running=True)
    args = parser.parse_args(argv)
    if args.stop:
        return stop_recorded()
    stop_recorded()  # a cluster an earlier run left up would hold the data directory
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    cluster = LocalCluster(DATA, names=("a", "b", "c"), first_ip=11)
    ok = False
    try:
        tls = cluster.security.tls_dir.relative_to(ROOT)
        step("Make the cluster's CA and one certificate per node (mutual TLS between nodes, TLS to clients)")
        say(f"$ mirrord certs ca --dir {tls}")
        for node in cluster:
            say(f"$ mirrord certs node --dir {tls} --name {node.name} --host {node.host}")
        say(f"    the first start gives login sa the password in {tls}/admin-password")
        step("Start three mirrord nodes on loopback")
        for node in cluster:
            say(f"$ mirrord --name {node.name} --data-dir {node.data_dir.relative_to(ROOT)} "
                f"--endpoint {node.host}:{node.endpoint_port} --listen {node.address} "
                f"--tls-dir {tls} --admin-password-file {tls}/admin-password")
        cluster.start_all()
        say("    all three answer: " + ", ".join(f"{n.name}={n.address} (pid {n.pid})" for n in cluster))
        set_up(cluster)
        step("Mirroring status on both partners")
        show_status(cluster, "a", "b")
        step("Write 1,000 rows; with SAFETY FULL each commit returns once b has hardened it")
        acked = 3 + insert_rows(cluster["a"], 4, 1000)
        check_rows(cluster["a"], acked)
        acked = lose_the_mirror(cluster, acked)
        acked = lose_the_principal(cluster, acked)
        fail_back(cluster, acked)
        goodbye(cluster, "a", args.keep_running)
        ok = True
    except StepFailed as exc:
        say(f"\nDEMO FAILED: {exc}")
    except (ServerError, Unreachable, RuntimeError, TimeoutError, OSError) as exc:
        say(f"\nDEMO FAILED: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        say("\ninterrupted")
    finally:
        if not (ok and args.keep_running):
            cluster.stop_all()
    if not ok:
        say(f"node logs are in {DATA.relative_to(ROOT)}/*.log")
        return 1
    if cluster.tracebacks():
        say(f"\nnote: node logs contain tracebacks: see {DATA.relative_to(ROOT)}/*.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
