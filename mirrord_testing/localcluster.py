"""Real `mirrord` processes on loopback: the one harness for tests, the demo and benchmarks.

How it works: each `LocalNode` owns one loopback address (127.0.0.x; on Linux
the whole 127/8 answers without setup), two free ports on it (the mirroring
endpoint and the client listener) and a data directory. `start` spawns
`python -m mirrord.node` with stdout and stderr appended to the node's log
file and returns once the client port answers a status query. Faults are
plain signals: `kill` (SIGKILL), `freeze`/`thaw` (SIGSTOP/SIGCONT),
`terminate` (SIGTERM, the clean shutdown). A node keeps its address, ports and
data directory across restarts, so partners find it again by itself.

Power cuts: a node made with `lazyfs=True` has its data directory mounted from
the power-cut file system (mirrord_testing/nemesis/lazyfs.py; the disk is the
directory `<name>.disk` beside it), mounted at its first start and unmounted
by `stop_all`. `power_cut` SIGKILLs it, drops every write it did not fsync,
and mounts the disk again; `start` (or `restart`) then boots it from what was
synced, as after a real power cut.

Secured like production: a LocalCluster makes a CA and one certificate per
node under `<base_dir>/tls` (`mirrord.certs`) and an admin password, starts
every node with `--tls-dir` and `--admin-password-file`, and its nodes'
`client()`/`query()` connect with TLS as `sa`. It also exports
MIRRORCTL_TLS_CA/USER/PASSWORD into this process's environment (the client
library's defaults), so code that dials `node.address` itself, and mirrorctl
run from here, get in too. `secure=False` starts the nodes with --insecure.

Why no sleeps: every wait is `wait_for`, which polls a predicate against a
deadline and, on timeout, says what it was waiting for and what it last saw.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

from mirrorctl.client import Client, Result, ServerError, Unreachable
from mirrord_testing.nemesis.lazyfs import LazyFS

T = TypeVar("T")

START_DEADLINE = 15.0
QUERY_TIMEOUT = 30.0
_PORT_FLOOR = 20000
_TRACEBACK_LEVELS = {"critical", "exception"}


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing ports (we pick listen ports below it)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _can_bind(host: str, port: int) -> bool:
    """True if nobody listens on host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A TCP port that is free on host now.

    Picked below the kernel's ephemeral range when possible, so that an outgoing
    connection cannot take it while a node is down between a kill and a restart.
    """
    low, _ = _ephemeral_range()
    if low - 1 > _PORT_FLOOR:
        for _ in range(200):
            port = random.randint(_PORT_FLOOR, low - 1)
            if _can_bind(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02,
             retry_on: tuple[type[BaseException], ...] = ()) -> T:
    """Poll predicate until it returns something truthy and return that; TimeoutError otherwise.

    Exceptions of the types in `retry_on` count as "not yet" (the last one is
    reported on timeout); any other exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            last, error = predicate(), None
            if last:
                return last  # type: ignore[return-value]
        except retry_on as exc:
            error = exc
        if time.monotonic() >= deadline:
            detail = f"; last error: {error!r}" if error is not None else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}{detail}")
        time.sleep(interval)


def iptables_available() -> bool:
    """Can this process add iptables rules (root and the iptables command)?"""
    if shutil.which("iptables") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True).returncode == 0


def _iptables(*args: str, check: bool = True) -> bool:
    """Run iptables; True if it succeeded (with check, a failure raises)."""
    proc = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.returncode == 0


def _traceback_blocks(lines: list[str]) -> Iterable[str]:
    """Python tracebacks printed raw, and JSON log events that carry one or are critical."""
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("{"):
            if _is_bad_event(line):
                yield line
        elif "Traceback (most recent call last)" in line or line.startswith("Fatal Python error"):
            block = [line]
            while i < len(lines) and (lines[i].startswith((" ", "\t")) or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            if i < len(lines) and not lines[i].startswith("{"):
                block.append(lines[i])  # the "SomeError: message" line that ends it
                i += 1
            yield "\n".join(block)


def _is_bad_event(line: str) -> bool:
    """A JSON log line at level critical/exception, or with a traceback attached."""
    try:
        event = json.loads(line)
    except ValueError:
        return False
    if not isinstance(event, dict):
        return False
    if str(event.get("level", "")).lower() in _TRACEBACK_LEVELS:
        return True
    return "Traceback (most recent call last)" in str(event.get("exception", ""))


ADMIN_LOGIN = "sa"


@dataclass(frozen=True)
class ClusterSecurity:
    """Where a local cluster's keys are, and how its clients log in."""

    tls_dir: Path
    password: str

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def password_file(self) -> Path:
        return self.tls_dir / "admin-password"

    @classmethod
    def create(cls, tls_dir: Path, nodes: dict[str, str], service_host: str | None = None) -> "ClusterSecurity":
        """A CA, a certificate per node (name -> host) and an admin password; reused if made before.

        service_host, if given, is in every node's certificate too: the address a proxy in front
        of the nodes listens on, as a service name or VIP would be in production.
        """
        from mirrord import certs

        tls_dir.mkdir(parents=True, exist_ok=True)
        if not (tls_dir / "ca.key").exists():
            certs.make_ca(tls_dir, name=f"mirrord local cluster CA {secrets.token_hex(4)}")
        for name, host in nodes.items():
            if not (tls_dir / f"{name}.crt").exists():
                certs.make_node(tls_dir, name, [host] + ([service_host] if service_host else []))
        pw_file = tls_dir / "admin-password"
        if not pw_file.exists():
            fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(18) + "\n")
        return cls(tls_dir, pw_file.read_text().strip())

    def environment(self) -> dict[str, str]:
        """The client library's and mirrorctl's settings for this cluster."""
        return {"MIRRORCTL_TLS_CA": str(self.ca_file), "MIRRORCTL_USER": ADMIN_LOGIN, "MIRRORCTL_PASSWORD": self.password}


_CLIENT_ENV = ("MIRRORCTL_TLS_CA", "MIRRORCTL_USER", "MIRRORCTL_PASSWORD")


class LocalNode:
    """One `mirrord` process on a loopback address, restartable with the same identity."""

    def __init__(self, name: str, host: str, data_dir: Path, log_path: Path,
                 endpoint_port: int | None = None, listen_port: int | None = None, lazyfs: bool = False,
                 security: ClusterSecurity | None = None) -> None:
        self.name = name
        self.host = host
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.endpoint_port = endpoint_port or free_port(host)
        self.listen_port = listen_port or free_port(host)
        while self.listen_port == self.endpoint_port:
            self.listen_port = free_port(host)
        self.proc: subprocess.Popen | None = None
        self.frozen = False
        self.extra_args: list[str] = []  # more mirrord flags, taken at the next start
        self.lazyfs: LazyFS | None = None
        if lazyfs:
            disk = self.data_dir.with_name(f"{self.data_dir.name}.disk")
            self.lazyfs = LazyFS(disk, self.data_dir, self.log_path.with_name(f"{self.name}.lazyfs.log"))
        self.security = security  # None: started with --insecure, clients in plaintext without a login

    def __repr__(self) -> str:
        return f"LocalNode({self.name!r}, {self.address}, pid={self.proc.pid if self.proc else None})"

    @property
    def endpoint_url(self) -> str:
        """The mirroring endpoint as partners name it: tcp://host:port."""
        return f"tcp://{self.host}:{self.endpoint_port}"

    @property
    def address(self) -> str:
        """The client port: host:port."""
        return f"{self.host}:{self.listen_port}"

    @property
    def pid(self) -> int | None:
        """The process id while a process exists."""
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        """The command line that starts this node."""
        if self.security is None:
            secured = ["--insecure"]
        else:
            secured = ["--tls-dir", str(self.security.tls_dir), "--admin-password-file", str(self.security.password_file)]
        return [sys.executable, "-m", "mirrord.node", "--name", self.name,
                "--data-dir", str(self.data_dir),
                "--endpoint", f"{self.host}:{self.endpoint_port}",
                "--listen", self.address, *secured, *self.extra_args]

    # ------------------------------------------------------------ lifecycle

    def start(self, wait: bool = True) -> None:
        """Spawn the process; with wait, return once its client port answers a status query."""
        if self.is_running():
            raise RuntimeError(f"node {self.name} is already running (pid {self.proc.pid})")
        if self.lazyfs is not None and not self.lazyfs.is_mounted():
            self.lazyfs.mount()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- localcluster: starting {self.name}: {' '.join(self.command())}\n".encode())
            log.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            # own session: a Ctrl-C meant for the test runner or the demo does not reach the node
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.frozen = False
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_DEADLINE) -> None:
        """Block until the client port accepts and answers a status query; fail fast if the process died."""
        try:
            wait_for(self._answers_status, timeout, f"node {self.name} to answer on {self.address}",
                     interval=0.05, retry_on=(Unreachable, ServerError, OSError))
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\nlog tail ({self.log_path}):\n{self.log_tail()}") from None

    def _answers_status(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"node {self.name} exited with status {code} while starting; "
                               f"log tail ({self.log_path}):\n{self.log_tail()}")
        with self.client(timeout=1.0) as client:
            client.query("SELECT * FROM sys.database_mirroring", timeout=2.0)
        return True

    def is_running(self) -> bool:
        """True while the process exists (frozen counts as running)."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap (no-op if not running)."""
        if self.is_running():
            self.proc.kill()
            self.proc.wait()
        self.frozen = False

    def power_cut(self) -> dict:
        """SIGKILL, drop every write the node did not fsync, mount its disk again; what was dropped.

        The node stays down: `start` boots it from what it had synced. Only for a
        node made with lazyfs=True.
        """
        if self.lazyfs is None:
            raise RuntimeError(f"node {self.name} has no power-cut file system (LocalCluster(..., lazyfs=...))")
        self.kill()
        return self.lazyfs.power_cut()

    def unmount(self) -> None:
        """Unmount the power-cut file system, if any (the node must be down)."""
        if self.lazyfs is not None:
            self.lazyfs.unmount()

    def freeze(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, nothing answers."""
        self._signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after freeze."""
        self._signal(signal.SIGCONT)
        self.frozen = False

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM and wait; the exit status (0 is a clean shutdown).

        If the process is still there after timeout it is SIGKILLed and the
        returned status is -9, so a test asserting a clean exit fails clearly.
        """
        if self.proc is None:
            raise RuntimeError(f"node {self.name} was never started")
        if self.is_running():
            if self.frozen:
                self.proc.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.frozen = False
        return self.proc.returncode

    def restart(self) -> None:
        """Kill if running, then start (and wait until it answers)."""
        self.kill()
        self.start()

    def _signal(self, sig: int) -> None:
        if not self.is_running():
            raise RuntimeError(f"node {self.name} is not running")
        self.proc.send_signal(sig)

    # ------------------------------------------------------------ talking to it

    def client(self, timeout: float = 5.0) -> Client:
        """A new blocking connection to the client port (caller closes it); with TLS, as sa, on a secured cluster."""
        return Client.connect(self.address, timeout=timeout, **self.connect_args())

    def connect_args(self) -> dict:
        """user, password and tls_ca for Client.connect / AsyncClient.connect."""
        if self.security is None:
            return {"user": "", "password": "", "tls_ca": ""}  # explicitly none, whatever the environment says
        return {"user": ADMIN_LOGIN, "password": self.security.password, "tls_ca": str(self.security.ca_file)}

    def query(self, sql: str, db: str | None = None, params=None,
              timeout: float | None = QUERY_TIMEOUT) -> Result:
        """Run one statement on a one-shot connection."""
        with self.client() as client:
            return client.query(sql, db=db, params=params, timeout=timeout)

    def ids(self, db: str, table: str = "t", timeout: float | None = QUERY_TIMEOUT, page: int = 100_000) -> set[int]:
        """Every id of a table, read in pages: one result may not outgrow the node's --max-result-mb."""
        found: set[int] = set()
        last = -(2**63)
        with self.client() as client:
            while True:
                rows = client.query(f"SELECT id FROM {table} WHERE id > ? ORDER BY id LIMIT {page}", db=db,
                                    params=[last], timeout=timeout).rows
                found.update(row[0] for row in rows)
                if len(rows) < page:
                    return found
                last = rows[-1][0]

    def statuses(self) -> list[dict]:
        """All rows of sys.database_mirroring on this node."""
        with self.client() as client:
            return client.query("SELECT * FROM sys.database_mirroring", timeout=QUERY_TIMEOUT).as_dicts()

    def status(self, db: str) -> dict:
        """The status row of db; LookupError naming what the node has if there is none."""
        rows = self.statuses()
        for row in rows:
            if row.get("database") == db:
                return row
        have = sorted(str(r.get("database")) for r in rows)
        raise LookupError(f"node {self.name} ({self.address}) has no status row for {db!r}; it has {have}")

    # ------------------------------------------------------------ logs

    def log_text(self) -> str:
        """Everything the node has written so far, across restarts."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def tracebacks(self) -> list[str]:
        """Python tracebacks in the log, and log events at level critical/exception or with a traceback."""
        return list(_traceback_blocks(self.log_text().splitlines()))


class LocalCluster:
    """Named LocalNodes on 127.0.0.<first_ip + i>, each with its own data directory and log.

    lazyfs: True puts every node's data directory on the power-cut file system,
    or name the nodes that get it; the others are plain directories.
    """

    def __init__(self, base_dir: Path, names: Iterable[str] = ("a", "b", "c"), first_ip: int = 11,
                 lazyfs: bool | Iterable[str] = False, secure: bool = True) -> None:
        self.base_dir = Path(base_dir)
        self._cuts: set[frozenset[str]] = set()
        self.nodes: dict[str, LocalNode] = {}
        names = tuple(names)
        on_lazyfs = set(names) if lazyfs is True else set(lazyfs or ())
        hosts = {name: f"127.0.0.{first_ip + i}" for i, name in enumerate(names)}
        # the next address: where a proxy in front of the nodes (HAProxy) listens, in every node's certificate
        self.service_host = f"127.0.0.{first_ip + len(names)}"
        self.security = ClusterSecurity.create(self.base_dir / "tls", hosts, self.service_host) if secure else None
        # the client defaults of this process while the cluster lives; stop_all puts back what was there
        self._saved_env = {key: os.environ.get(key) for key in _CLIENT_ENV}
        for key in _CLIENT_ENV:
            os.environ.pop(key, None)
        if self.security is not None:
            os.environ.update(self.security.environment())
        for name, host in hosts.items():
            self.nodes[name] = LocalNode(name, host, self.base_dir / name, self.base_dir / f"{name}.log",
                                         lazyfs=name in on_lazyfs, security=self.security)

    def __getitem__(self, name: str) -> LocalNode:
        return self.nodes[name]

    def __iter__(self):
        return iter(self.nodes.values())

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start_all(self) -> None:
        """Spawn every node, then wait for each (they start in parallel)."""
        self.clear_stale_cuts()
        for node in self.nodes.values():
            if not node.is_running():
                node.start(wait=False)
        for node in self.nodes.values():
            node.wait_ready()

    def stop_all(self, timeout: float = 10) -> None:
        """Stop every node (see _stop_all) and put back the client environment found at creation."""
        try:
            self.heal_all()
        except Exception:  # never raise from cleanup
            pass
        self._stop_all(timeout)
        for node in self.nodes.values():
            try:
                node.unmount()
            except Exception:  # noqa: BLE001 - never raise from cleanup
                pass
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _stop_all(self, timeout: float = 10) -> None:
        """SIGCONT the frozen, SIGTERM all, SIGKILL whoever is left after timeout; never raises."""
        running = [n for n in self.nodes.values() if n.is_running()]
        for node in running:
            try:
                if node.frozen:
                    node.proc.send_signal(signal.SIGCONT)
                node.proc.terminate()
            except OSError:
                pass  # already gone
        deadline = time.monotonic() + timeout
        for node in running:
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    node.proc.kill()
                    node.proc.wait()
                except OSError:
                    pass
            except Exception:  # noqa: BLE001 - teardown must not raise
                pass
            node.frozen = False

    # ------------------------------------------------------------ link cuts

    def cut(self, x: str, y: str) -> None:
        """Silently drop every packet between two nodes' addresses, both ways (iptables DROP)."""
        hx, hy = self[x].host, self[y].host
        for src, dst in ((hx, hy), (hy, hx)):
            _iptables("-I", "OUTPUT", "-s", src, "-d", dst, "-j", "DROP")
        self._cuts.add(frozenset((x, y)))

    def heal(self, x: str, y: str) -> None:
        """Remove the cut between two nodes."""
        hx, hy = self[x].host, self[y].host
        for src, dst in ((hx, hy), (hy, hx)):
            _iptables("-D", "OUTPUT", "-s", src, "-d", dst, "-j", "DROP", check=False)
        self._cuts.discard(frozenset((x, y)))

    def isolate(self, x: str) -> None:
        """Cut a node from every other node (its client port stays reachable from the test)."""
        for other in self.nodes:
            if other != x:
                self.cut(x, other)

    def clear_stale_cuts(self) -> None:
        """Remove DROP rules between this cluster's addresses that a run killed before its heal left behind."""
        if not iptables_available():
            return
        hosts = {node.host for node in self.nodes.values()}
        # one listing, and a delete only for a rule found (a start usually finds none): "-A OUTPUT -s A/32 -d B/32 -j DROP"
        listing = subprocess.run(["iptables", "-w", "-S", "OUTPUT"], capture_output=True, text=True).stdout
        for words in (line.split() for line in listing.splitlines()):
            if words[:2] != ["-A", "OUTPUT"] or words[-2:] != ["-j", "DROP"] or "-s" not in words or "-d" not in words:
                continue
            src = words[words.index("-s") + 1].removesuffix("/32")
            dst = words[words.index("-d") + 1].removesuffix("/32")
            if src in hosts and dst in hosts and src != dst:
                _iptables("-D", "OUTPUT", "-s", src, "-d", dst, "-j", "DROP", check=False)

    def heal_all(self) -> None:
        """Remove every cut this cluster made."""
        for pair in list(self._cuts):
            self.heal(*sorted(pair))

    def tracebacks(self) -> dict[str, list[str]]:
        """Tracebacks per node, only for nodes that have any."""
        found = {name: node.tracebacks() for name, node in self.nodes.items()}
        return {name: blocks for name, blocks in found.items() if blocks}

    def principal_of(self, db: str, among: Iterable[str] | None = None) -> LocalNode | None:
        """The running node that reports role PRINCIPAL for db, if any (asking the nodes named in among, in order)."""
        for node in (self.nodes.values() if among is None else (self.nodes[name] for name in among)):
            if node.is_running() and not node.frozen:
                try:
                    if node.status(db).get("role") == "PRINCIPAL":
                        return node
                except (LookupError, Unreachable, ServerError, OSError):
                    continue
        return None

    # ------------------------------------------------------------ sessions

    def setup_session(self, db: str, principal: str, mirror: str, witness: str | None = None,
                      safety: str = "FULL", timeout: int | None = None, sync_timeout: float = 30) -> None:
        """Create db on the principal if needed, pair it with the mirror, wait until SYNCHRONIZED.

        The order is the reference's: SET PARTNER on the mirror (which seeds
        itself from the principal), then on the principal, then SAFETY, TIMEOUT
        and WITNESS on the principal. With a witness it also waits until the
        principal sees the witness CONNECTED.
        """
        p, m = self.nodes[principal], self.nodes[mirror]
        self._ensure_database(p, db)
        m.query(f"ALTER DATABASE {db} SET PARTNER = '{p.endpoint_url}'", timeout=sync_timeout)
        p.query(f"ALTER DATABASE {db} SET PARTNER = '{m.endpoint_url}'", timeout=sync_timeout)
        if safety.upper() != "FULL":
            p.query(f"ALTER DATABASE {db} SET PARTNER SAFETY {safety.upper()}")
        if timeout is not None:
            p.query(f"ALTER DATABASE {db} SET PARTNER TIMEOUT {int(timeout)}")
        if witness is not None:
            p.query(f"ALTER DATABASE {db} SET WITNESS = '{self.nodes[witness].endpoint_url}'")
        self.wait_synchronized(db, principal, mirror, sync_timeout, witness_connected=witness is not None)

    def wait_synchronized(self, db: str, principal: str, mirror: str, timeout: float = 30,
                          witness_connected: bool = False) -> None:
        """Both partners report SYNCHRONIZED (and, if asked, the principal sees its witness)."""
        p, m = self.nodes[principal], self.nodes[mirror]

        def synchronized() -> bool:
            prow, mrow = p.status(db), m.status(db)
            ok = prow["state"] == mrow["state"] == "SYNCHRONIZED"
            return ok and (not witness_connected or prow.get("witness_state") == "CONNECTED")

        try:
            wait_for(synchronized, timeout, f"{db} SYNCHRONIZED on {principal} and {mirror}",
                     interval=0.05, retry_on=(LookupError, Unreachable, ServerError, OSError))
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self._describe(db, (p, m))}") from None

    @staticmethod
    def _ensure_database(node: LocalNode, db: str) -> None:
        """CREATE DATABASE unless the node already serves it."""
        try:
            node.query(f"CREATE DATABASE {db}")
        except ServerError:
            node.query("SELECT 1", db=db)  # exists and is served: fine; otherwise this raises why

    @staticmethod
    def _describe(db: str, nodes: Iterable[LocalNode]) -> str:
        """Status rows and log tails, for a failure message."""
        parts = []
        for node in nodes:
            try:
                row: object = node.status(db)
            except Exception as exc:  # noqa: BLE001 - this is diagnostics
                row = f"<no status: {exc!r}>"
            parts.append(f"--- {node.name} ({node.address}) status: {row}\n"
                         f"--- {node.name} log tail:\n{node.log_tail(20)}")
        return "\n".join(parts)
