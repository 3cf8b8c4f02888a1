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

from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import Role, Safety
from mirrord.engine import witness_link


class Witness:
    def __init__(self, answer: dict | None) -> None:
        self.answer, self.sent = answer, []

    async def request(self, msg: dict, timeout: float) -> dict:
        self.sent.append(msg)
        if self.answer is None:
            raise asyncio.TimeoutError()  # recorded, perhaps; the answer never came
        return self.answer


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
