"""A principal's report to the witness whose answer is lost, and its witness connection ending (found by the
simulator's model of the code).

The witness may have recorded "synchronized" before the answer was lost. A principal still believing
"not synchronized" would go on alone once its mirror is lost, and the witness, recording the mirror
synchronized, could promote it without those commits. So the belief turns to "synchronized" when that
report is sent; only an accepted "not synchronized" turns it back.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from mirrord.core import roles
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import Role, Safety
from mirrord.engine import witness_link
from mirrord.net import framing


class Witness:
    def __init__(self, answer: dict | None) -> None:
        self.answer, self.sent = answer, []

    async def request(self, msg: dict, timeout: float) -> dict:
        self.sent.append(msg)
        if self.answer is None:
            raise asyncio.TimeoutError()  # recorded, perhaps; the answer never came
        return self.answer

    async def report(self, msg: dict, timeout: float) -> tuple[dict, bool]:
        return await self.request(msg, timeout), True


def principal(believes: bool, caught_up: bool):
    cfg = SessionConfig("shop", role=Role.PRINCIPAL, partner="tcp://b:5022", role_sequence=3, suspended=False, safety=Safety.FULL,
                        timeout=10)
    session = Session(cfg, partner_connected=True, caught_up=caught_up, witness_believes_synchronized=believes)
    return SimpleNamespace(session=session, poke=lambda: None)


def test_a_synchronized_report_whose_answer_is_lost_leaves_the_principal_believing_the_witness_has_it():
    database = principal(believes=False, caught_up=True)
    witness = Witness(None)
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(witness_link._report_if_changed(database, witness, None, 10))
    assert witness.sent[0]["synchronized"] is True
    assert database.session.witness_believes_synchronized is True


def test_a_not_synchronized_report_whose_answer_is_lost_changes_nothing():
    database = principal(believes=True, caught_up=False)
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(witness_link._report_if_changed(database, Witness(None), None, 10))
    assert database.session.witness_believes_synchronized is True  # must still wait for the witness


def test_an_accepted_not_synchronized_report_lets_the_principal_go_on_alone():
    database = principal(believes=True, caught_up=False)
    reported = asyncio.run(witness_link._report_if_changed(database, Witness({"accepted": True}), None, 10))
    assert database.session.witness_believes_synchronized is False and reported[1] is False


def test_a_principal_whose_witness_connection_ended_holds_no_witness_lease():
    session = Session(SessionConfig("shop", role=Role.PRINCIPAL, partner="tcp://b:5022", witness="tcp://c:5022"),
                      witness_lease_until=1e12, witness_connected=True)
    pokes = []
    database = SimpleNamespace(session=session, witness_conn=object(),
                               poke=lambda: pokes.append((session.witness_lease_until, session.witness_connected)))
    witness_link.witness_lost(database)
    assert session.witness_lease_until == 0.0 and not session.witness_connected and database.witness_conn is None
    # the quorum is evaluated again, once the lease has ended: it may serve on its mirror's lease alone, or not at all
    assert pokes == [(0.0, False)]


class Wire:
    """The principal's side of its witness connection: frames written, and answers fed as the witness sends them."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.decoder = framing.FrameDecoder()
        self.answers = asyncio.StreamReader()

    def write(self, data: bytes) -> None:
        self.decoder.feed(data)
        while (msg := self.decoder.next_message()) is not None:
            self.sent.append(msg)

    def is_closing(self) -> bool:
        return False

    async def drain(self) -> None:
        pass

    def answer(self, rid: int, synchronized: bool) -> None:
        self.answers.feed_data(framing.encode_frame({
            "t": "w_state", "rid": rid, "role_sequence": 3, "principal": "tcp://a:5022", "mirror": "tcp://b:5022",
            "mirror_synchronized": synchronized, "principal_connected": True, "mirror_connected": True, "accepted": True}))


def test_a_not_synchronized_report_crossed_by_a_later_synchronized_one_leaves_the_belief_synchronized():
    """The ping loop reports "not synchronized" and a TIMEOUT statement's report, carrying the belief "synchronized",
    follows it on the same connection. The witness records both in order and holds "synchronized"; neither the
    first answer nor its acceptance may let the principal believe otherwise and acknowledge alone."""

    async def run() -> tuple[Session, bool, object]:
        database = principal(believes=True, caught_up=False)
        wire = Wire()

        async def adopt(db, msg) -> None:  # role_change.adopt_witness_state, for the one action it can take here
            event = roles.WitnessState(msg["role_sequence"], msg["principal"], mirror_synchronized=msg["mirror_synchronized"])
            for action in roles.handle(db.session.role_view(node.endpoint_url), event):
                assert isinstance(action, roles.NoteWitnessSynchronized)
                db.session.note_witness_synchronized(True)

        node = SimpleNamespace(endpoint_url="tcp://a:5022", adopt_witness_state=adopt)
        conn = witness_link.WitnessConnection(node, database, wire.answers, wire)
        reader = asyncio.create_task(conn.read_answers())
        loop_report = asyncio.create_task(witness_link._report_if_changed(database, conn, None, 10))
        await asyncio.sleep(0)
        statement = asyncio.create_task(conn.report({"t": "w_report", "role_sequence": 3, "synchronized": True,
                                                      "safety": "FULL", "timeout": 20}, 10))
        await asyncio.sleep(0)
        assert [m["synchronized"] for m in wire.sent] == [False, True]
        wire.answer(wire.sent[0]["rid"], synchronized=False)  # the witness may have recorded the second report already
        reported = await loop_report
        believed_between = database.session.witness_believes_synchronized
        wire.answer(wire.sent[1]["rid"], synchronized=True)
        await statement
        reader.cancel()
        return database.session, believed_between, reported

    session, believed_between, reported = asyncio.run(run())
    assert believed_between is True and session.witness_believes_synchronized is True
    assert reported is None  # the loop reports again on its next round, and only that acceptance counts
