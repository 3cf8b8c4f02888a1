"""Persist before send: the shell (engine/role_change.py) writes a role change's new configuration
(meta.json, through Database.update_config) before it starts the links that tell anyone of it.

A crash between the two leaves a node that knows its new role and has told no one, never one that told
its partner or the witness a role it does not remember. The node's links start in `activate`; the fakes
journal both, in order.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from mirrord.core import role_statements as rs, roles
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import Role, Safety, StatementRefused
from mirrord.engine import mirror_session, role_change
from mirrord.net import framing

ME, PARTNER, WITNESS = "tcp://a:5022", "tcp://b:5022", "tcp://c:5022"


class Node:
    endpoint_url = ME

    def __init__(self, journal: list) -> None:
        self.journal = journal

    async def stop_inbound(self, database) -> None:
        self.journal.append(("stop", "inbound"))

    async def stop_partner_link(self, database) -> None:
        self.journal.append(("stop", "partner link"))

    async def activate(self, database) -> None:
        # the node opens the role's engine and starts the links: the partner and the witness hear from here on
        self.journal.append(("send", database.session.config.role.value, database.session.config.role_sequence))
        database.principal = object() if database.session.config.role is Role.PRINCIPAL else None


class Database:
    def __init__(self, role: Role, journal: list) -> None:
        self.name = "shop"
        self.journal = journal
        self.session = Session(SessionConfig("shop", role=role, partner=PARTNER, witness=WITNESS, role_sequence=4))
        self.role_change = asyncio.Lock()
        self.log = SimpleNamespace(last_lsn=17)
        self.mirror = None
        self.principal = None
        self.failover_in_doubt = False
        self.witness_conn = None

    def update_config(self, **changes) -> None:
        self.session.config = self.session.config.with_(**changes)
        self.journal.append(("persist", self.session.config.role.value, self.session.config.role_sequence))

    def record_event(self, *args, **kwargs) -> None:
        pass


def run(role: Role, event: roles.Event) -> list:
    journal: list = []
    asyncio.run(role_change.on_event(Node(journal), Database(role, journal), event))
    return journal


def test_a_promotion_is_persisted_before_the_new_principal_speaks():
    journal = run(Role.MIRROR, roles.WitnessState(5, ME))
    assert journal.index(("persist", "PRINCIPAL", 5)) < journal.index(("send", "PRINCIPAL", 5))


def test_a_promotion_on_a_granted_vote_is_persisted_before_the_new_principal_speaks():
    journal = run(Role.MIRROR, roles.VoteAnswered(True, 5, forced=True))
    assert journal.index(("persist", "PRINCIPAL", 5)) < journal.index(("send", "PRINCIPAL", 5))


def test_a_step_down_is_persisted_before_the_new_mirror_speaks():
    journal = run(Role.PRINCIPAL, roles.WitnessState(5, PARTNER))
    assert journal.index(("persist", "MIRROR", 5)) < journal.index(("send", "MIRROR", 5))
    assert journal.index(("stop", "partner link")) < journal.index(("persist", "MIRROR", 5))  # the old principal is silent first


def test_nothing_is_sent_in_a_role_sequence_that_was_not_persisted_first():
    for role, event in ((Role.MIRROR, roles.WitnessState(5, ME)), (Role.MIRROR, roles.VoteAnswered(True, 5)),
                        (Role.PRINCIPAL, roles.WitnessState(5, PARTNER)), (Role.MIRROR, roles.WitnessState(6, PARTNER))):
        persisted: set = set()
        for entry in run(role, event):
            if entry[0] == "persist":
                persisted.add(entry[1:])
            elif entry[0] == "send":
                assert entry[1:] in persisted, (role, event, entry)


# ------------------------------------------------------------------ the mirror's side of the principal's link


class MirrorCopy(Database):
    """A mirror whose witness link and salvage copy are journalled too (engine/mirror_session.py's actions)."""

    def __init__(self, journal: list) -> None:
        super().__init__(Role.MIRROR, journal)
        self.session.config = self.session.config.with_(witness=None)
        self.on_witness_changed = lambda database: journal.append(("send", "witness link", database.session.config.witness))
        journal_ = journal

        class Mirror:
            path = SimpleNamespace(exists=lambda: True)

            async def wait_redone(self) -> None:
                journal_.append(("redo", "finished"))

        self.mirror = Mirror()

    def update_config(self, **changes) -> None:
        self.session.config = self.session.config.with_(**changes)
        self.journal.append(("persist", *sorted(changes)))

    def keep_salvage_copy(self, fork_lsn: int) -> str:
        self.journal.append(("salvage", fork_lsn))
        return f"/data/shop.salvage-{fork_lsn}.sqlite"


def hear(event: roles.Event) -> tuple[list, MirrorCopy]:
    journal: list = []
    database = MirrorCopy(journal)
    asyncio.run(mirror_session._hear(Node(journal), database, event))
    return journal, database


def test_a_new_witness_from_the_principal_is_persisted_before_the_witness_link_starts():
    journal, database = hear(roles.SettingsFromPrincipal("FULL", 10, False, witness=WITNESS))
    assert journal == [("persist", "witness"), ("send", "witness link", WITNESS)]
    assert database.session.config.witness == WITNESS


def test_a_diverged_mirror_keeps_its_salvage_copy_before_it_records_the_loss():
    journal, database = hear(roles.ForkFound(5, 12, 10, 14, 4, has_copy=True))
    assert journal == [("redo", "finished"), ("salvage", 10), ("persist", "lost_lsn_from", "lost_lsn_to", "salvage_path")]
    cfg = database.session.config
    assert (cfg.lost_lsn_from, cfg.lost_lsn_to, cfg.salvage_path) == (11, 14, "/data/shop.salvage-10.sqlite")


# ------------------------------------------------------------------ the partner statements (core.role_statements)


class Writer:
    """The partner's link: every frame written is journalled as ("send", its kind)."""

    def __init__(self, journal: list) -> None:
        self.journal = journal
        self.decoder = framing.FrameDecoder()
        self.on_frame = lambda msg: None

    def is_closing(self) -> bool:
        return False

    def write(self, frame: bytes) -> None:
        self.decoder.feed(frame)
        while (msg := self.decoder.next_message()) is not None:
            self.journal.append(("send", msg["t"]))
            self.on_frame(msg)

    async def drain(self) -> None:
        self.journal.append(("drained",))

    def close(self) -> None:
        self.journal.append(("close", "probe"))


class StatementNode(Node):
    name = "a"
    answer: dict | None = None  # what the mirror answers a probe's hello; None: its endpoint cannot be reached

    def start_off_notice(self, database) -> None:
        self.journal.append(("start", "off notice"))

    def start_partner_link(self, database) -> None:
        self.journal.append(("start", "partner link"))

    async def stop_witness_link(self, database) -> None:
        self.journal.append(("stop", "witness link"))

    def sync_witness_link(self, database) -> None:
        self.journal.append(("start", "witness link", database.session.config.witness))

    def hello(self, database) -> dict:
        return {"t": "hello", "db": database.name}

    async def connect_endpoint(self, endpoint):
        if self.answer is None:
            raise ConnectionRefusedError(111, "Connection refused")
        reader = asyncio.StreamReader()
        reader.feed_data(framing.encode_frame(self.answer))
        return reader, Writer(self.journal)


class Witness:
    """The witness's connection: a request is journalled as ("send", its kind), and answered with `answer`."""

    def __init__(self, journal: list, answer: dict) -> None:
        self.journal, self.answer = journal, answer

    async def request(self, msg: dict, timeout: float) -> dict:
        self.journal.append(("send", msg["t"], msg.get("timeout")))
        return self.answer

    async def report(self, msg: dict, timeout: float) -> tuple[dict, bool]:
        return await self.request(msg, timeout), True


class Principal:
    """The principal engine's part in a statement: serving, its write lock, its commits made visible."""

    def __init__(self, journal: list) -> None:
        self.journal = journal
        self.write_lock = asyncio.Lock()
        self.serving = True

    def update_visible(self) -> None:
        pass

    async def mark_transactions_aborted(self) -> None:
        self.journal.append(("abort", "transactions"))

    def stop_serving(self) -> None:
        assert self.write_lock.locked()  # no write waiting for the lock commits here
        self.serving = False
        self.journal.append(("stop", "serving"))

    def fail_waiters(self, exc) -> None:
        pass

    async def close(self) -> None:
        async with self.write_lock:  # as PrincipalDatabase.close: a step down waits until the failover left the lock
            self.journal.append(("close", "principal"))


class StatementDatabase(Database):
    def __init__(self, role: Role, journal: list) -> None:
        super().__init__(role, journal)
        self.session.config = self.session.config.with_(witness=None)
        self.partner_writer = Writer(journal)
        self.principal = Principal(journal) if role is Role.PRINCIPAL else None
        self.failover_reply = None

    def update_config(self, **changes) -> None:
        self.session.config = self.session.config.with_(**changes)
        self.journal.append(("persist", *sorted(changes)))

    def poke(self) -> None:
        pass

    def note_state(self) -> None:
        pass


def issue(database: StatementDatabase, event, node: StatementNode | None = None) -> list:
    # bounded: a step down carried out inside the failover's write lock would wait for that lock forever
    asyncio.run(asyncio.wait_for(role_change.on_event(node or StatementNode(database.journal), database, event), 30))
    return database.journal


def test_partner_off_on_the_principal_persists_then_tells_the_mirror_then_ends_the_link_and_starts_its_notice():
    database = StatementDatabase(Role.PRINCIPAL, [])
    assert issue(database, rs.PartnerOffIssued()) == [
        ("persist", "ended_by_off", "off_untold", "partner", "role", "suspended"), ("send", "partner_off"), ("drained",),
        ("stop", "partner link"), ("start", "off notice")]
    cfg = database.session.config
    assert (cfg.role, cfg.partner, cfg.ended_by_off, cfg.off_untold) == (Role.NONE, None, PARTNER, PARTNER)


def test_suspend_on_the_principal_is_persisted_before_the_mirror_hears_the_settings():
    database = StatementDatabase(Role.PRINCIPAL, [])
    database.session.caught_up = True
    assert issue(database, rs.SuspendIssued("a")) == [("persist", "suspended"), ("send", "settings")]
    assert database.session.config.suspended and not database.session.caught_up  # the mirror takes no more log


def test_a_manual_failover_the_mirror_answers_stops_serving_then_steps_down_once_the_write_lock_is_left():
    database = StatementDatabase(Role.PRINCIPAL, [])
    database.session.hardened_lsn = database.log.last_lsn
    database.partner_writer.on_frame = lambda msg: msg["t"] == "failover" and database.failover_reply.set_result(5)
    journal = issue(database, rs.FailoverIssued())
    assert journal[:3] == [("abort", "transactions"), ("send", "failover"), ("stop", "serving")]
    assert journal.index(("close", "principal")) < journal.index(("persist", "forced_fork", "role", "role_sequence", "status"))
    assert database.session.config.role is Role.MIRROR and database.session.config.role_sequence == 5
    assert not database.failover_in_doubt and not database.session.failover_pending and database.failover_reply is None


def test_a_manual_failover_sent_and_never_answered_stops_serving_in_doubt_and_changes_no_role():
    database = StatementDatabase(Role.PRINCIPAL, [])
    database.session.hardened_lsn = database.log.last_lsn
    database.partner_writer.on_frame = lambda msg: database.failover_reply.set_exception(ConnectionError("link lost"))
    with pytest.raises(StatementRefused, match="a manual failover was sent and never confirmed"):
        issue(database, rs.FailoverIssued())
    assert database.journal == [("abort", "transactions"), ("send", "failover"), ("stop", "serving")]
    assert database.failover_in_doubt and database.session.config.role is Role.PRINCIPAL
    assert "never confirmed" in database.session.state_reason


def test_a_manual_failover_the_mirror_has_not_hardened_sends_nothing_and_changes_nothing():
    database = StatementDatabase(Role.PRINCIPAL, [])
    database.session.hardened_lsn = database.log.last_lsn - 1  # and the mirror is not connected: no wait
    with pytest.raises(StatementRefused, match="manual failover abandoned: the mirror hardened only up to LSN 16 of 17"):
        issue(database, rs.FailoverIssued())
    assert database.journal == [("abort", "transactions")]
    assert database.principal.serving and not database.failover_in_doubt


def test_the_mirrors_off_ends_the_principals_session_persisted_and_its_commits_stop_waiting():
    database = StatementDatabase(Role.PRINCIPAL, [])
    database.session.partner_connected = True
    assert issue(database, rs.PartnerOffHeard(Role.MIRROR)) == [("persist", "partner", "role", "suspended")]
    assert database.session.config.role is Role.NONE and not database.session.partner_connected


def test_an_off_notice_ends_the_principals_link_before_the_mirror_persists_the_end():
    database = StatementDatabase(Role.MIRROR, [])
    assert issue(database, rs.OffNoticeHeard(PARTNER, 4)) == [("stop", "inbound"), ("persist", "partner", "role", "suspended")]
    assert (database.session.config.role, database.session.config.partner) == (Role.NONE, None)


# ------------------------------------------------------------------ starting a session, and its settings


WELCOME = {"t": "welcome", "db": "shop", "role_sequence": 1, "hardened_lsn": 0, "hardened_role_sequence": 0, "redo_lsn": 0,
           "needs_seed": True}


def standalone(journal: list) -> StatementDatabase:
    database = StatementDatabase(Role.NONE, journal)
    database.session.config = database.session.config.with_(partner=None, role_sequence=0, ended_by_off=PARTNER)
    database.partner_writer = None
    return database


def test_set_partner_on_an_online_database_persists_the_principal_after_the_mirror_answered_and_before_the_link_starts():
    database, node = standalone([]), StatementNode([])
    node.journal, node.answer = database.journal, WELCOME
    assert issue(database, rs.PartnerSet("shop", PARTNER), node) == [
        ("send", "hello"), ("close", "probe"), ("stop", "partner link"),
        ("persist", "ended_by_off", "off_untold", "partner", "role", "role_sequence"), ("start", "partner link")]
    cfg = database.session.config
    assert (cfg.role, cfg.partner, cfg.role_sequence, cfg.ended_by_off) == (Role.PRINCIPAL, PARTNER, 1, None)


def test_set_partner_refused_by_the_mirror_or_unreachable_changes_nothing():
    for answer, text in (({"t": "refuse", "reason": "database shop on b is not a mirror"},
                          "the mirror refused: database shop on b is not a mirror"),
                         (None, "cannot reach the mirror's endpoint tcp://b:5022: ConnectionRefusedError(111, "
                                "'Connection refused'); start it, or check the address")):
        database, node = standalone([]), StatementNode([])
        node.journal, node.answer = database.journal, answer
        with pytest.raises(StatementRefused) as refused:
            issue(database, rs.PartnerSet("shop", PARTNER), node)
        assert refused.value.message == text
        assert all(entry[0] not in ("persist", "start", "stop") for entry in database.journal), database.journal
        assert database.session.config.role is Role.NONE and database.session.config.partner is None


def test_set_witness_persists_the_new_witness_before_the_mirror_or_the_witness_hears_of_it():
    database = StatementDatabase(Role.PRINCIPAL, [])
    database.session.witness_believes_synchronized = False
    assert issue(database, rs.WitnessSet(WITNESS)) == [
        ("stop", "witness link"), ("persist", "witness"), ("send", "settings"), ("start", "witness link", WITNESS)]
    assert database.session.witness_believes_synchronized and database.session.witness_lease_until == 0.0


def test_a_longer_timeout_is_heard_by_the_witness_first_then_persisted_then_the_mirror_told():
    database = StatementDatabase(Role.PRINCIPAL, [])
    database.session.config = database.session.config.with_(witness=WITNESS, timeout=10)
    database.witness_conn = Witness(database.journal, {"accepted": True})
    assert issue(database, rs.TimeoutSet(20)) == [("send", "w_report", 20), ("persist", "timeout"), ("send", "settings")]
    assert database.session.config.timeout == 20


def test_a_longer_timeout_the_witness_does_not_accept_changes_nothing():
    database = StatementDatabase(Role.PRINCIPAL, [])
    database.session.config = database.session.config.with_(witness=WITNESS, timeout=10)
    database.witness_conn = Witness(database.journal, {"accepted": False, "role_sequence": 7})
    with pytest.raises(StatementRefused) as refused:
        issue(database, rs.TimeoutSet(20))
    assert refused.value.message == "the witness did not accept the new TIMEOUT (it holds role sequence 7); nothing changed"
    assert database.journal == [("send", "w_report", 20)] and database.session.config.timeout == 10


def test_safety_and_redo_queue_are_persisted_before_the_mirror_hears_the_settings():
    for event, changed in ((rs.SafetySet(Safety.OFF), "safety"), (rs.RedoQueueSet(64, 1 << 30), "redo_queue_mb")):
        database = StatementDatabase(Role.PRINCIPAL, [])
        assert issue(database, event) == [("persist", changed), ("send", "settings")]
