"""The nemesis: a real three-node cluster, concurrent writers, a seeded fault schedule, a checker.

How a round runs: the writers (asyncio, one connection each, following the
principal of their database) write rows with unique ids while the round's
steps are applied one after the other, each followed by its dwell. Then the
runner heals everything (below), stops the writers, waits until every session
has converged by itself, and checks (checker.py).

Healing, in this order: thaw frozen nodes, restart dead ones, remove every
link cut, STARTED on every endpoint that was STOPPED. Then, while waiting for
convergence, on the principal of each database: SAFETY FULL if it is OFF, and
RESUME if the session is SUSPENDED — after a forced service, once the old
principal's loss report (`lost_lsn_range`, `salvage_path`) was read and the
salvage copy opened, since RESUME rolls that copy back. Nothing else is done
for the cluster: failover, reconnection and catch-up are the engine's own.

A forced service step (`force`) makes the loss it is allowed: it cuts the
principal from its mirror, lets the writers go on until the principal has logged
commits the mirror lacks (it acknowledges alone, exposed, once the witness
agrees), kills it, and forces service on the mirror. The checker then excuses
exactly the missing writes the loss report names and the salvage copy holds.

Converged means: one partner PRINCIPAL and the other MIRROR in the same role
sequence, both SYNCHRONIZED, the witness CONNECTED and recording that
principal and role sequence, and the mirror has hardened and redone the
principal's whole log.

Comparing copies (page for page): the mirror's page store is a plain file,
page N at (N-1)*page_size, written by redo; once its redo LSN equals the
principal's end of log it is final. The principal's database runs in WAL mode:
its current pages are the main file with the committed WAL frames on top (what
any SQLite reader sees, and what a checkpoint would write). The nemesis reads
both of the principal's files and overlays the WAL (`overlay_wal`, frames
validated by the same reader capture uses), reading twice until two reads
agree, so a checkpoint running meanwhile cannot tear the image. With the
writers stopped nothing commits, so the WAL does not restart under us. Then
logical content: both images are opened with SQLite (copies in a temporary
directory): integrity_check must say ok, and the ids in each must equal the
ids the principal serves to a client.

Writes are sent with the time-outs below and never retried under the same id;
a write that got no answer, or an error, is in doubt.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mirrord_testing.localcluster import LocalCluster, LocalNode, wait_for
from mirrord_testing.nemesis.checker import (Ack, Ledger, LossReport, SafetyBook, Violation, differing_pages,
                                     explained_by_forced_service, find_lost, find_lost_unprotected, find_phantoms,
                                     find_shared_tokens, find_split_brain, overlay_wal)
from mirrord_testing.nemesis.schedule import Round, Step
from mirrord.storage.wal import WalReader
from mirrorctl.client import AsyncClient, ServerError, Unreachable

WRITE_TIMEOUT = 5.0
ADMIN_TIMEOUT = 10.0
FAILOVER_TIMEOUT = 20.0
EXPOSED_COMMITS = 5  # a forced service waits until the cut-off principal logged this many commits the mirror lacks
FORCE_DEADLINE = 15.0
ERROR_BACKOFF = 0.05
INSERT = "INSERT INTO t(id, node, v) VALUES (?, ?, ?)"
PAYLOAD = "x" * 100


@dataclass(frozen=True)
class Layout:
    """One mirrored database: where its principal, mirror and witness start."""

    db: str
    principal: str
    mirror: str
    witness: str


def default_layouts(nodes: tuple[str, ...], count: int) -> list[Layout]:
    """count databases with the roles rotated, so every node is principal, mirror and witness of some."""
    n = len(nodes)
    return [Layout(f"d{i + 1}", nodes[i % n], nodes[(i + 1) % n], nodes[(i + 2) % n]) for i in range(count)]


@dataclass
class RoundReport:
    """What one round did and found."""

    number: int
    steps: list[str] = field(default_factory=list)
    acked: int = 0
    acked_full: int = 0
    in_doubt: int = 0
    convergence: float | None = None
    admin: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0
    power_cuts: int = 0  # nodes whose power was cut in this round
    disks_full: int = 0  # nodes whose disk filled up in this round


class Nemesis:
    """Runs rounds against a started cluster whose sessions were set up by `setup`."""

    def __init__(self, cluster: LocalCluster, layouts: list[Layout], *, writers_per_db: int = 2,
                 partner_timeout: int = 2, convergence_bound: float = 45.0,
                 out: Callable[[str], None] = print) -> None:
        self.cluster = cluster
        self.layouts = layouts
        self.writers_per_db = writers_per_db
        self.partner_timeout = partner_timeout
        self.convergence_bound = convergence_bound
        self.out = out
        self.ledger = Ledger()
        self.safety = SafetyBook(l.db for l in layouts)
        self.reports: list[RoundReport] = []
        self.steps_done: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.lost_unprotected: set[int] = set()
        self.power_cut_bytes = 0  # unsynced bytes the power cuts dropped
        self._reported_lost: set[int] = set()
        self._reported_split: set[tuple[str, int]] = set()
        self._reported_tokens: set[tuple[str, int, int, int]] = set()
        self._tracebacks_seen: dict[str, int] = {n.name: 0 for n in cluster}
        self._cuts: set[frozenset[str]] = set()
        self._endpoints_stopped: set[str] = set()
        self._full: set[str] = set()  # nodes whose disk is full (lazyfs)
        self._forced: dict[str, tuple[str, int]] = {}  # db -> (old principal, its role sequence): loss report not read yet
        # forced services whose vote went unanswered (in_doubt): db -> the mirror asked; settled by the witness's record
        self._forced_in_doubt: dict[str, LocalNode] = {}
        self.loss_reports: list[LossReport] = []
        self.forced_lost: set[int] = set()  # acknowledged writes a forced service lost, reported and salvaged
        self.aborted: str | None = None

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        """Start the nodes, create each database and its table, pair it, set the witness."""
        self.cluster.start_all()
        for lay in self.layouts:
            principal = self.cluster[lay.principal]
            principal.query(f"CREATE DATABASE {lay.db}")
            principal.query("CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT, v TEXT)", db=lay.db)
            self.cluster.setup_session(lay.db, lay.principal, lay.mirror, lay.witness,
                                       timeout=self.partner_timeout, sync_timeout=60)

    # ------------------------------------------------------------ rounds

    async def run(self, rounds: list[Round]) -> None:
        """Run every round; stop early only if the cluster cannot be brought back."""
        for rnd in rounds:
            report = await self.run_round(rnd)
            self.reports.append(report)
            self.out(self._describe(report))
            if self.aborted:
                self.out(f"aborting: {self.aborted}")
                break

    async def run_round(self, rnd: Round) -> RoundReport:
        report = RoundReport(rnd.number)
        started = time.monotonic()
        acks_before, doubt_before = len(self.ledger.acks), self._doubt_count()
        stop = asyncio.Event()
        writers = [asyncio.create_task(self._writer(lay, k, stop))
                   for lay in self.layouts for k in range(self.writers_per_db)]
        try:
            for step in rnd.steps:
                outcome = await asyncio.to_thread(self._apply, step)
                self.steps_done[step.kind] += 1
                self.outcomes[f"{step.kind} {outcome.split()[0].rstrip(':')}"] += 1
                report.steps.append(f"{step.describe()} [{outcome}]")
                report.power_cuts += step.kind == "power-cut" and outcome.startswith("done")
                report.disks_full += step.kind == "disk-full" and outcome.startswith("done")
                await asyncio.sleep(step.dwell)  # the fault's duration, while the writers write
            healed = await asyncio.to_thread(self._heal)
            report.violations += healed
            healed_at = time.monotonic()  # convergence is timed from here, writers still writing
        finally:
            stop.set()
            await asyncio.gather(*writers)
        new_acks = self.ledger.acks[acks_before:]
        report.acked = len(new_acks)
        report.acked_full = sum(a.full for a in new_acks)
        report.in_doubt = self._doubt_count() - doubt_before
        if not report.violations:
            try:
                report.convergence = await asyncio.to_thread(self._converge, report.admin, healed_at)
            except TimeoutError as exc:
                report.violations.append(Violation("convergence", str(exc)))
        if report.violations:
            self.aborted = "the cluster did not come back: " + "; ".join(v.kind for v in report.violations)
        else:
            try:
                report.violations += await asyncio.to_thread(self._check)
            except (ServerError, Unreachable, OSError, RuntimeError, sqlite3.Error) as exc:
                report.violations.append(Violation("check", f"the check itself failed: {exc!r}"))
        report.violations += self._check_tracebacks()
        report.seconds = time.monotonic() - started
        return report

    def _doubt_count(self) -> int:
        return sum(len(s) for s in self.ledger.in_doubt.values())

    # ------------------------------------------------------------ writers

    async def _writer(self, lay: Layout, k: int, stop: asyncio.Event) -> None:
        """Insert rows with fresh ids through the principal of lay.db until stop is set."""
        partners = [self.cluster[lay.principal], self.cluster[lay.mirror]]
        index = k % 2  # half the writers start at the mirror: they must find the principal
        client: AsyncClient | None = None
        while not stop.is_set():
            node = partners[index % 2]
            if client is None:
                try:
                    client = await AsyncClient.connect(node.address, timeout=1.0)
                except Unreachable:
                    index += 1
                    await _pause(stop)
                    continue
            write_id = self.ledger.new_id(lay.db)
            before = self.safety.snapshot(lay.db)
            try:
                result = await client.query(INSERT, db=lay.db, params=[write_id, node.name, PAYLOAD],
                                            timeout=WRITE_TIMEOUT)
            except (ServerError, Unreachable) as exc:
                self.ledger.doubt(lay.db, write_id)
                hint = _node_named_by(exc, partners) if isinstance(exc, ServerError) else None
                index = partners.index(hint) if hint is not None else index + 1
                await client.close()
                client = None
                await _pause(stop)
                continue
            role_sequence = result.role_sequence if result.role_sequence is not None else -1
            self.ledger.ack(Ack(write_id, lay.db, node.name, role_sequence, result.lsn or 0,
                                self.safety.full_throughout(lay.db, before), result.seq or 0))
        if client is not None:
            await client.close()

    # ------------------------------------------------------------ faults (run in a thread)

    def _apply(self, step: Step) -> str:
        """Apply one step; a short outcome (done, refused: why, skipped: why)."""
        try:
            return getattr(self, f"_do_{step.kind.replace('-', '_')}")(*step.target)
        except ServerError as exc:
            return f"refused: {exc.message[:100]}"
        except (Unreachable, OSError) as exc:
            return f"failed: {str(exc)[:100]}"

    def _do_kill(self, name: str) -> str:
        node = self.cluster[name]
        if not node.is_running():
            return "skipped: already down"
        node.kill()
        return "done"

    def _do_power_cut(self, name: str) -> str:
        node = self.cluster[name]
        if node.lazyfs is None:
            return "skipped: the node is not on lazyfs"
        if not node.is_running():
            return "skipped: already down"
        dropped = node.power_cut()
        self.power_cut_bytes += dropped["bytes_unsynced"]
        return f"done: dropped {dropped['bytes_unsynced'] // 1024} KiB unsynced in {dropped['files_unsynced']} files"

    def _do_disk_full(self, name: str) -> str:
        node = self.cluster[name]
        if node.lazyfs is None or not node.lazyfs.is_mounted():
            return "skipped: the node is not on lazyfs"
        node.lazyfs.fill()
        self._full.add(name)
        return "done"

    def _do_disk_space(self, name: str) -> str:
        node = self.cluster[name]
        if name not in self._full:
            return "skipped: not full"
        self._full.discard(name)
        if node.lazyfs is None or not node.lazyfs.is_mounted():
            return "skipped: not mounted (a power cut remounted it with room)"
        node.lazyfs.make_space()
        return "done"

    def _do_restart(self, name: str) -> str:
        node = self.cluster[name]
        if node.is_running():
            return "skipped: running"
        node.start()
        return "done"

    def _do_freeze(self, name: str) -> str:
        node = self.cluster[name]
        if not node.is_running() or node.frozen:
            return "skipped: down or frozen"
        node.freeze()
        return "done"

    def _do_thaw(self, name: str) -> str:
        node = self.cluster[name]
        if not node.frozen:
            return "skipped: not frozen"
        node.thaw()
        return "done"

    def _do_cut(self, x: str, y: str) -> str:
        pair = frozenset((x, y))
        if pair in self._cuts:
            return "skipped: already cut"
        self.cluster.cut(x, y)
        self._cuts.add(pair)
        return "done"

    def _do_heal(self, x: str, y: str) -> str:
        self.cluster.heal(x, y)
        self._cuts.discard(frozenset((x, y)))
        return "done"

    def _do_isolate(self, name: str) -> str:
        others = [n for n in self.cluster.nodes if n != name]
        done = [self._do_cut(*sorted((name, other))) for other in others]
        return "done" if "done" in done else "skipped: already cut off"

    def _do_rejoin(self, name: str) -> str:
        for other in self.cluster.nodes:
            if other != name:
                self._do_heal(*sorted((name, other)))
        return "done"

    def _do_endpoint_stop(self, name: str) -> str:
        node = self.cluster[name]
        if not _answers(node):
            return "skipped: node down or frozen"
        self._endpoints_stopped.add(name)
        node.query("ALTER ENDPOINT mirroring STATE = STOPPED", timeout=ADMIN_TIMEOUT)
        return "done"

    def _do_endpoint_start(self, name: str) -> str:
        node = self.cluster[name]
        if not _answers(node):
            return "skipped: node down or frozen"
        node.query("ALTER ENDPOINT mirroring STATE = STARTED", timeout=ADMIN_TIMEOUT)
        self._endpoints_stopped.discard(name)
        return "done"

    def _do_failover(self, db: str) -> str:
        principal = self._principal(db)
        if principal is None:
            return "skipped: no principal answers"
        principal.query(f"ALTER DATABASE {db} SET PARTNER FAILOVER", timeout=FAILOVER_TIMEOUT)
        return f"done on {principal.name}"

    def _do_safety_off(self, db: str) -> str:
        principal = self._principal(db)
        if principal is None:
            return "skipped: no principal answers"
        self.safety.mark_off(db)  # before: a write in flight now counts as unprotected
        principal.query(f"ALTER DATABASE {db} SET PARTNER SAFETY OFF", timeout=ADMIN_TIMEOUT)
        return f"done on {principal.name}"

    def _do_safety_full(self, db: str) -> str:
        principal = self._principal(db)
        if principal is None:
            return "skipped: no principal answers"
        principal.query(f"ALTER DATABASE {db} SET PARTNER SAFETY FULL", timeout=ADMIN_TIMEOUT)
        self.safety.mark_full(db)  # after: only once FULL is in force
        return f"done on {principal.name}"

    def _do_force(self, db: str) -> str:
        """Cut the principal from its mirror, let it acknowledge alone, kill it, force service on the mirror."""
        principal = self._principal(db)
        if principal is None:
            return "skipped: no principal answers"
        if db in self._forced:
            return "skipped: the last forced service's loss report is not read yet"
        lay = next(l for l in self.layouts if l.db == db)
        mirror = self.cluster[lay.mirror if principal.name == lay.principal else lay.principal]
        if not _answers(mirror):
            return "skipped: the mirror is down or frozen"
        role_sequence = principal.status(db)["role_sequence"]
        self._do_cut(*sorted((principal.name, mirror.name)))
        not_ready = (LookupError, ServerError, Unreachable, OSError)
        how = "not exposed"  # forced anyway if the principal never got to acknowledge alone: nothing is lost then
        try:
            # exposed: the witness recorded the mirror as not synchronized, so the principal acknowledges alone ...
            wait_for(lambda: (w := self._witness_row(lay)) is not None and w["mirror_synchronized"] is False,
                     FORCE_DEADLINE, "the witness to record the mirror behind", interval=0.1, retry_on=not_ready)
            # ... and it commits a few more, acknowledged to nobody but itself
            base = principal.status(db)["end_of_log_lsn"]
            wait_for(lambda: principal.status(db)["end_of_log_lsn"] >= base + EXPOSED_COMMITS, FORCE_DEADLINE,
                     "the exposed principal to commit alone", interval=0.05, retry_on=not_ready)
            how = "exposed"
        except TimeoutError:
            pass
        principal.kill()
        self._forced[db] = (principal.name, role_sequence)
        deadline = time.monotonic() + FORCE_DEADLINE
        while True:
            try:
                mirror.query(f"ALTER DATABASE {db} SET PARTNER FORCE_SERVICE_ALLOW_DATA_LOSS", timeout=FAILOVER_TIMEOUT)
                break
            except ServerError as exc:
                if exc.code == "in_doubt":  # the vote's answer was lost: the witness's record tells, at convergence
                    self._forced_in_doubt[db] = mirror
                    return f"in doubt on {mirror.name}: {exc.message[:100]}"
                if mirror.status(db)["role"] == "PRINCIPAL":  # automatic failover came first (the witness thought it synchronized)
                    del self._forced[db]
                    return f"superseded: {mirror.name} was promoted automatically ({how})"
                if time.monotonic() > deadline:
                    del self._forced[db]
                    return f"refused: {exc.message[:100]}"
                time.sleep(0.1)  # poll: the mirror has not yet seen the principal go
        fork = mirror.status(db)["fork_lsn"]
        return f"done on {mirror.name}: {principal.name} {how}, fork at LSN {fork}"

    def _forced_settled(self, lay: Layout) -> bool:
        """Whether a forced service is known to have happened or not (always, unless its vote went unanswered).

        In doubt, the witness's record decides: a role sequence past the old
        principal's, begun by forced service and naming the mirror asked, means
        it happened (its loss report is read as for any); anything else, that it
        did not. The vote was the last the mirror asked for, so the record no
        longer changes on its account.
        """
        mirror = self._forced_in_doubt.get(lay.db)
        if mirror is None:
            return True
        record = self._witness_row(lay)
        if record is None:
            return False  # the witness does not answer yet
        _, role_sequence = self._forced[lay.db]
        del self._forced_in_doubt[lay.db]
        if not (record["role_sequence"] > role_sequence and record.get("forced") and record["principal"] == mirror.endpoint_url):
            del self._forced[lay.db]  # it did not happen (or an automatic failover did): nothing to read
        return True

    def _read_loss_report(self, db: str, old: LocalNode, role_sequence: int) -> str | None:
        """The old principal's loss report and salvage copy, before RESUME rolls it back; None once read."""
        row = old.status(db)
        if row["role"] != "MIRROR":
            return f"{old.name} has not rejoined as mirror yet"
        lost_from, lost_to = 0, 0
        if row.get("lost_lsn_range"):
            lost_from, lost_to = (int(x) for x in row["lost_lsn_range"].split("-"))
        salvaged: frozenset[int] = frozenset()
        if lost_to:
            if not row.get("salvage_path"):
                return f"{old.name} reports lost LSNs {lost_from}-{lost_to} but no salvage copy (yet)"
            conn = sqlite3.connect(f"file:{row['salvage_path']}?mode=ro", uri=True)
            try:
                salvaged = frozenset(r[0] for r in conn.execute("SELECT id FROM t"))
            finally:
                conn.close()
        self.loss_reports.append(LossReport(db, old.name, role_sequence, lost_from, lost_to, salvaged))
        del self._forced[db]
        return None

    def _principal(self, db: str) -> LocalNode | None:
        lay = next(l for l in self.layouts if l.db == db)
        return self.cluster.principal_of(db, among=(lay.principal, lay.mirror))

    # ------------------------------------------------------------ heal and converge

    def _heal(self) -> list[Violation]:
        """Thaw, restart the dead, heal cuts, start stopped endpoints. A node that cannot start is a violation."""
        found: list[Violation] = []
        for name in sorted(self._full):
            self._do_disk_space(name)
        for node in self.cluster:
            if node.frozen:
                node.thaw()
        for node in self.cluster:
            if not node.is_running():
                try:
                    node.start()
                except (RuntimeError, TimeoutError) as exc:
                    found.append(Violation("crash", f"node {node.name} did not start: {exc}"))
        self.cluster.heal_all()
        self._cuts.clear()
        for name in sorted(self._endpoints_stopped):
            try:
                self.cluster[name].query("ALTER ENDPOINT mirroring STATE = STARTED", timeout=ADMIN_TIMEOUT)
            except (ServerError, Unreachable, OSError) as exc:
                found.append(Violation("convergence", f"ENDPOINT STARTED on {name} failed: {exc}"))
        self._endpoints_stopped.clear()
        return found

    def _converge(self, admin: list[str], since: float) -> float:
        """Wait until every session has converged; the seconds since `since`. Restores SAFETY FULL, RESUMEs."""
        last: dict[str, str] = {}

        def converged() -> bool:
            done = True
            for lay in self.layouts:
                state = self._session_state(lay, admin)
                last[lay.db] = state
                done = done and state == "converged"
            return done

        try:
            remaining = max(1.0, self.convergence_bound - (time.monotonic() - since))
            wait_for(converged, remaining, "every session to converge", interval=0.1)
        except TimeoutError:
            raise TimeoutError(f"not converged within {self.convergence_bound}s of the heal: {last}") from None
        return time.monotonic() - since

    def _session_state(self, lay: Layout, admin: list[str]) -> str:
        """'converged', or what is still missing (acting on SAFETY OFF and SUSPENDED)."""
        rows = {}
        for name in (lay.principal, lay.mirror):
            try:
                rows[name] = self.cluster[name].status(lay.db)
            except (LookupError, ServerError, Unreachable, OSError) as exc:
                return f"{name}: no status ({exc.__class__.__name__})"
        for name, row in rows.items():
            if row.get("role") is None:  # QUARANTINED: a database that failed to load at start
                return f"{name}: {row.get('status')} ({row.get('state_reason')})"
        roles = sorted(row["role"] for row in rows.values())
        if roles != ["MIRROR", "PRINCIPAL"]:
            return f"roles {roles}"
        p_name = next(n for n, r in rows.items() if r["role"] == "PRINCIPAL")
        p, m = rows[p_name], next(r for n, r in rows.items() if n != p_name)
        principal = self.cluster[p_name]
        if p["safety"] == "OFF":
            return self._admin(principal, lay.db, "SAFETY FULL", admin)
        self.safety.mark_full(lay.db)
        if p["state"] == "SUSPENDED":
            if lay.db in self._forced and not self._forced_settled(lay):
                return f"forced service on {lay.db} in doubt: waiting for the witness's record"
            if lay.db in self._forced:
                old_name, role_sequence = self._forced[lay.db]
                if (waiting := self._read_loss_report(lay.db, self.cluster[old_name], role_sequence)) is not None:
                    return waiting
            return self._admin(principal, lay.db, "RESUME", admin)
        if lay.db in self._forced and not self._forced_settled(lay):
            return f"forced service on {lay.db} in doubt: waiting for the witness's record"
        if lay.db in self._forced:  # a forced fork always rejoins SUSPENDED: its loss report is read first
            return f"forced service on {p_name}: waiting for the session to show SUSPENDED"
        fields = ("state", "role_sequence", "end_of_log_lsn", "witness_state")
        if not (p["state"] == m["state"] == "SYNCHRONIZED" and p["witness_state"] == "CONNECTED"
                and p["role_sequence"] == m["role_sequence"]
                and m["redo_lsn"] == m["hardened_lsn"] == p["end_of_log_lsn"]):
            return (f"principal {p_name} {[p[f] for f in fields]}, mirror "
                    f"{[m[f] for f in fields]} hardened {m['hardened_lsn']} redo {m['redo_lsn']}")
        witness = self._witness_row(lay)
        if witness is None or witness.get("role_sequence") != p["role_sequence"] \
                or witness.get("principal") != principal.endpoint_url:
            return f"the witness {lay.witness} records {witness}, the principal is {p_name} in role sequence {p['role_sequence']}"
        try:  # a commit SQLite took while the disk was full is logged by a retry: reads wait for it (disk_full)
            principal.query("SELECT 1", db=lay.db, timeout=ADMIN_TIMEOUT)
        except (ServerError, Unreachable, OSError) as exc:
            return f"the principal {p_name} does not answer a read yet: {exc}"
        return "converged"

    @staticmethod
    def _admin(principal: LocalNode, db: str, what: str, admin: list[str]) -> str:
        """Issue SET PARTNER <what> on the principal; what happened, as a state that is not converged."""
        try:
            principal.query(f"ALTER DATABASE {db} SET PARTNER {what}", timeout=ADMIN_TIMEOUT)
        except (ServerError, Unreachable, OSError) as exc:
            return f"{what} on {principal.name} failed: {exc}"
        admin.append(f"{db}: {what} on {principal.name}")
        return f"{what} done"

    def _witness_row(self, lay: Layout) -> dict | None:
        """The witness's record of lay.db, if it answers and has one."""
        try:
            rows = self.cluster[lay.witness].query("SELECT * FROM sys.database_mirroring_witnesses",
                                                   timeout=ADMIN_TIMEOUT).as_dicts()
        except (ServerError, Unreachable, OSError):
            return None
        return next((row for row in rows if row.get("database") == lay.db), None)

    # ------------------------------------------------------------ checks

    def _check(self) -> list[Violation]:
        found: list[Violation] = []
        for lay in self.layouts:
            found += self._check_database(lay)
        for key, nodes in sorted(find_split_brain(self.ledger.acks).items()):
            if key not in self._reported_split:
                self._reported_split.add(key)
                found.append(Violation("split_brain", f"{key[0]} role sequence {key[1]}: acknowledged by {sorted(nodes)}"))
        for token, ids in sorted(find_shared_tokens(self.ledger.acks).items()):
            if token not in self._reported_tokens:
                self._reported_tokens.add(token)
                found.append(Violation("token", f"{token[0]} role sequence {token[1]} LSN {token[2]} statement {token[3]}: "
                                                f"acknowledged for writes {ids[:10]}"))
        return found

    def _check_database(self, lay: Layout) -> list[Violation]:
        found: list[Violation] = []
        principal = self._principal(lay.db)
        if principal is None:
            return [Violation("convergence", f"{lay.db}: no principal after convergence")]
        mirror = self.cluster[lay.mirror if principal.name == lay.principal else lay.principal]
        present = principal.ids(lay.db, timeout=ADMIN_TIMEOUT)  # in pages: a long run holds more than one result may
        missing = [a for a in find_lost(self.ledger.acks, lay.db, present) if a.id not in self._reported_lost]
        self.forced_lost.update(a.id for a in missing if explained_by_forced_service(a, self.loss_reports))
        lost = [a for a in missing if a.id not in self.forced_lost]
        if lost:
            self._reported_lost.update(a.id for a in lost)
            sample = ", ".join(f"id {a.id} by {a.node} role_sequence {a.role_sequence} lsn {a.lsn}" for a in lost[:5])
            found.append(Violation("lost", f"{lay.db}: {len(lost)} acknowledged SAFETY FULL writes missing ({sample})"))
        self.lost_unprotected.update(a.id for a in find_lost_unprotected(self.ledger.acks, lay.db, present))
        phantoms = find_phantoms(self.ledger.sent.get(lay.db, set()), present)
        if phantoms:
            found.append(Violation("phantom", f"{lay.db}: ids never sent: {sorted(phantoms)[:10]}"))
        p_image = _principal_image(_db_path(principal, lay.db))
        m_image = _db_path(mirror, lay.db).read_bytes()
        bad = differing_pages(p_image, m_image)
        if bad:
            found.append(Violation("pages", f"{lay.db}: principal {principal.name} ({len(p_image)} bytes) and mirror "
                                            f"{mirror.name} ({len(m_image)} bytes) differ in pages {bad[:20]}"))
        for who, image in ((principal.name, p_image), (mirror.name, m_image)):
            problem = _content_problem(image, present)
            if problem:
                found.append(Violation("content", f"{lay.db} on {who}: {problem}"))
        return found

    def _check_tracebacks(self) -> list[Violation]:
        found = []
        for node in self.cluster:
            blocks = node.tracebacks()
            new = blocks[self._tracebacks_seen[node.name]:]
            self._tracebacks_seen[node.name] = len(blocks)
            for block in new:
                found.append(Violation("crash", f"{node.name} log ({node.log_path}): {block[:600]}"))
        return found

    # ------------------------------------------------------------ output

    def _describe(self, r: RoundReport) -> str:
        conv = f"{r.convergence:.1f}s" if r.convergence is not None else "-"
        lines = [f"round {r.number}: {'; '.join(r.steps)}",
                 f"  acked {r.acked} (SAFETY FULL {r.acked_full}), in doubt {r.in_doubt}, "
                 f"converged in {conv}, round {r.seconds:.1f}s"
                 + (f", admin: {'; '.join(r.admin)}" if r.admin else "")]
        lines += [f"  VIOLATION {v}" for v in r.violations]
        return "\n".join(lines)

    def summary(self) -> str:
        acks = self.ledger.acks
        times = [r.convergence for r in self.reports if r.convergence is not None]
        violations = [v for r in self.reports for v in r.violations]
        kinds = Counter(v.kind for v in violations)
        faults = ", ".join(f"{k} {n}" for k, n in sorted(self.steps_done.items()))
        lines = [
            f"rounds: {len(self.reports)}" + (f" (aborted: {self.aborted})" if self.aborted else ""),
            f"steps by kind: {faults}",
            "outcomes: " + ", ".join(f"{k} x{n}" for k, n in sorted(self.outcomes.items())),
            f"writes sent: {sum(len(s) for s in self.ledger.sent.values())}, acknowledged: {len(acks)} "
            f"(SAFETY FULL {sum(a.full for a in acks)}), in doubt: {self._doubt_count()}",
            f"lost (SAFETY FULL): {len(self._reported_lost)}, lost (SAFETY OFF, allowed): {len(self.lost_unprotected)}",
            f"forced service: {len(self.loss_reports)} with a loss report read, acknowledged writes lost to it "
            f"{len(self.forced_lost)} (each in the old principal's reported range and its salvage copy), "
            f"reported lost transactions {sum(r.lost_to - r.lost_from + 1 for r in self.loss_reports if r.lost_to)}",
            f"split-brain role sequences: {len(self._reported_split)}",
            f"role sequences with acknowledged writes: {len({(a.db, a.role_sequence) for a in acks})}",
        ]
        cut_rounds = [r for r in self.reports if r.power_cuts]
        lines.append(f"power cuts: {sum(r.power_cuts for r in cut_rounds)} in {len(cut_rounds)} rounds "
                     f"({self.power_cut_bytes // 1024} KiB unsynced dropped), "
                     f"survived (no violation in the round): {sum(not r.violations for r in cut_rounds)}")
        full_rounds = [r for r in self.reports if r.disks_full]
        lines.append(f"full disks: {sum(r.disks_full for r in full_rounds)} in {len(full_rounds)} rounds, "
                     f"survived (no violation in the round): {sum(not r.violations for r in full_rounds)}")
        if times:
            lines.append(f"convergence: median {statistics.median(times):.2f}s, max {max(times):.2f}s")
        lines.append("violations: " + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"))
        return "\n".join(lines)

    def violations(self) -> list[Violation]:
        return [v for r in self.reports for v in r.violations]


async def _pause(stop: asyncio.Event) -> None:
    """Back off briefly after an error (returns early when stopping)."""
    try:
        await asyncio.wait_for(stop.wait(), ERROR_BACKOFF)
    except asyncio.TimeoutError:
        pass


def _node_named_by(exc: ServerError, partners: list[LocalNode]) -> LocalNode | None:
    """The partner an error names as the principal (client address or endpoint), if any."""
    hint = exc.principal or ""
    for node in partners:
        if hint and (node.address in hint or node.endpoint_url in hint):
            return node
    return None


def _answers(node: LocalNode) -> bool:
    return node.is_running() and not node.frozen


def _db_path(node: LocalNode, db: str) -> Path:
    return node.data_dir / "databases" / db / "db.sqlite"


def _principal_image(path: Path, attempts: int = 10) -> bytes:
    """The principal's database as readers see it (main file + committed WAL), read until stable."""
    wal = WalReader(Path(f"{path}-wal"))
    previous = None
    for _ in range(attempts):
        transactions, _ = wal.read_committed(None)
        image = overlay_wal(path.read_bytes(), transactions)
        if image == previous:
            return image
        previous = image
    raise RuntimeError(f"the principal's database {path} kept changing while the writers were stopped")


def _content_problem(image: bytes, expected_ids: set[int]) -> str | None:
    """Open a copy of the image with SQLite: integrity_check must pass and hold exactly expected_ids."""
    directory = Path(tempfile.mkdtemp(prefix="nemesis-copy-"))
    try:
        path = directory / "copy.sqlite"
        path.write_bytes(image)
        conn = sqlite3.connect(path)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                return f"integrity_check: {check}"
            ids = {row[0] for row in conn.execute("SELECT id FROM t")}
        finally:
            conn.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if ids != expected_ids:
        return (f"{len(ids)} ids, the principal serves {len(expected_ids)}; only here: "
                f"{sorted(ids - expected_ids)[:5]}, missing: {sorted(expected_ids - ids)[:5]}")
    return None
