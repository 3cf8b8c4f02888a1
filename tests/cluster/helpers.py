"""Shared pieces of the cluster tests: a background writer and copy comparison."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mirrord_testing.localcluster import LocalCluster, LocalNode, wait_for
from mirrorctl.client import Client, ServerError, Unreachable


class Writer(threading.Thread):
    """Inserts rows with unique ids in a loop, recording which were acknowledged.

    A row is "acknowledged" only when the server answered the INSERT with
    success; an error or a dropped connection leaves it in doubt (not counted).
    """

    def __init__(self, node: LocalNode | None, db: str, table: str = "t", start: int = 0, address: str | None = None) -> None:
        super().__init__(daemon=True)
        self.node, self.db, self.table = node, db, table
        self.address = address or node.address  # another address: a proxy in front of the nodes
        self.next_id = start
        self.acked: list[int] = []
        self.acked_at: list[float] = []  # time.monotonic() of each acknowledgement
        self.acked_role_sequence: list[int] = []  # the role sequence each was committed in
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        client = None
        deadline = time.monotonic() + 120
        while not self._halt.is_set() and time.monotonic() < deadline:
            try:
                if client is None:
                    client = Client.connect(self.address, timeout=2.0)
                self.next_id += 1
                result = client.query(f"INSERT INTO {self.table}(id, v) VALUES (?, ?)", db=self.db, params=[self.next_id, "x" * 100])
                self.acked.append(self.next_id)
                self.acked_at.append(time.monotonic())
                self.acked_role_sequence.append(result.role_sequence)
            except (ServerError, Unreachable, OSError, ConnectionError) as exc:
                self.errors.append(repr(exc))
                if client is not None:
                    try:
                        client.close()
                    except OSError:
                        pass
                client = None
                self._halt.wait(0.02)  # a node is down: don't spin

    def acked_count_reaches(self, n: int) -> bool:
        return len(self.acked) >= n

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def ids_on(node: LocalNode, db: str, table: str = "t") -> set[int]:
    """Every id in the table on a node serving the database."""
    return node.ids(db, table)


def wait_synchronized(cluster: LocalCluster, db: str, principal: str, mirror: str, timeout: float = 30) -> None:
    """Both partners SYNCHRONIZED and the mirror redone up to the principal's end of log."""

    def caught_up():
        p, m = cluster[principal].status(db), cluster[mirror].status(db)
        ok = p["state"] == m["state"] == "SYNCHRONIZED" and m["redo_lsn"] == p["end_of_log_lsn"] == m["hardened_lsn"]
        return ok or None

    wait_for(caught_up, timeout, f"{db} SYNCHRONIZED and redone on {mirror}")


def assert_identical_copies(cluster: LocalCluster, db: str, principal: str, mirror: str) -> None:
    """Invariant I3: the mirror's page store equals the principal's database, page for page.

    The principal is stopped cleanly (SQLite checkpoints its WAL into the file
    on close) and started again afterwards.
    """
    wait_synchronized(cluster, db, principal, mirror)
    p_node, m_node = cluster[principal], cluster[mirror]
    assert p_node.terminate() == 0
    p_bytes = db_file(p_node, db).read_bytes()
    m_bytes = db_file(m_node, db).read_bytes()
    assert len(p_bytes) == len(m_bytes), f"sizes differ: principal {len(p_bytes)}, mirror {len(m_bytes)}"
    page = int.from_bytes(p_bytes[16:18], "big")
    bad = [i // page + 1 for i in range(0, len(p_bytes), page) if p_bytes[i:i + page] != m_bytes[i:i + page]]
    assert not bad, f"pages differ: {bad[:20]}"
    p_node.start()


def db_file(node: LocalNode, db: str) -> Path:
    return node.data_dir / "databases" / db / "db.sqlite"


def create_table(node: LocalNode, db: str, table: str = "t") -> None:
    node.query(f"CREATE TABLE {table}(id INTEGER PRIMARY KEY, v TEXT)", db=db)


class FailoverWriter(threading.Thread):
    """Writes unique ids through whichever node is principal, following failovers.

    For every acknowledged insert it records (id, node, role sequence), so a
    test can check I1 (every acknowledged id survives) and I2 (no two nodes
    acknowledged in one role sequence). An error leaves the id in doubt.
    """

    def __init__(self, nodes: list[LocalNode], db: str, table: str = "t") -> None:
        super().__init__(daemon=True)
        self.nodes, self.db, self.table = nodes, db, table
        self.acked: list[tuple[int, str, int]] = []
        self.in_doubt: list[int] = []
        self._halt = threading.Event()
        self._next = 0
        self.failure: BaseException | None = None  # what ended the thread early, if anything

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:
            self.failure = exc  # kept for the test's failure message; the thread still reports it
            raise

    def _write(self) -> None:
        clients: dict[str, Client] = {}
        current = 0
        deadline = time.monotonic() + 300
        while not self._halt.is_set() and time.monotonic() < deadline:
            node = self.nodes[current % len(self.nodes)]
            try:
                client = clients.get(node.name) or Client.connect(node.address, timeout=2.0)
                clients[node.name] = client
                self._next += 1
                result = client.query(f"INSERT INTO {self.table}(id, v) VALUES (?, ?)", db=self.db, params=[self._next, node.name], timeout=5)
                self.acked.append((self._next, node.name, result.role_sequence))
            except ServerError as exc:
                if exc.code not in ("not_principal", "refused", "unknown_database", "not_serving", "in_doubt"):
                    raise
                self.in_doubt.append(self._next)
                current += 1
                self._halt.wait(0.01)
            except (Unreachable, OSError, ConnectionError):
                self.in_doubt.append(self._next)
                stale = clients.pop(node.name, None)
                if stale is not None:
                    try:
                        stale.close()
                    except OSError:
                        pass
                current += 1
                self._halt.wait(0.01)

    def acked_count(self) -> int:
        return len(self.acked)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def ids(self) -> set[int]:
        return {i for i, _, _ in self.acked}

    def assert_single_writer_per_role_sequence(self) -> None:
        """I2: in each role sequence, one node at most acknowledged writes."""
        writers: dict[int, set[str]] = {}
        for _, node, role_sequence in self.acked:
            writers.setdefault(role_sequence, set()).add(node)
        split = {e: n for e, n in writers.items() if len(n) > 1}
        assert not split, f"two nodes acknowledged writes in one role sequence: {split}"
