"""A forced vote whose answer never comes is in doubt, not an internal error (found by the 500-round nemesis)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import ActionInDoubt, Role, StatementRefused
from mirrord.engine import role_change


class SilentWitness:
    async def request(self, msg: dict, timeout: float) -> dict:
        raise asyncio.TimeoutError()


def parts():
    async def stop_inbound(host):
        return None

    # a mirror with a witness, as the role machine reads it (engine.database.role_view)
    session = Session(SessionConfig("shop", role=Role.MIRROR, partner="tcp://b:5022", witness="tcp://c:5022", role_sequence=7))
    host = SimpleNamespace(name="shop", session=session, log=SimpleNamespace(last_lsn=42), failover_in_doubt=False,
                           mirror=None, witness_conn=object())
    return SimpleNamespace(stop_inbound=stop_inbound, endpoint_url="tcp://a:5022"), host


def test_a_forced_vote_the_witness_never_answers_is_in_doubt_and_says_what_to_check():
    node, host = parts()
    with pytest.raises(ActionInDoubt) as info:
        asyncio.run(role_change.request_promotion(node, host, SilentWitness(), forced=True, timeout=2))
    assert info.value.code == "in_doubt" and "sys.database_mirroring" in info.value.message
    assert host.session.failover_requested is False  # log from the principal is taken again


def test_an_automatic_vote_that_times_out_fails_as_before_for_its_caller_to_retry():
    node, host = parts()
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(role_change.request_promotion(node, host, SilentWitness(), forced=False, timeout=2))


class RefusingWitness:
    async def request(self, msg: dict, timeout: float) -> dict:
        return {"t": "w_vote_answer", "granted": False, "reason": "the principal is connected to the witness"}


def test_a_forced_vote_the_witness_refuses_is_refused_saying_why_and_changes_nothing():
    node, host = parts()
    with pytest.raises(StatementRefused) as info:
        asyncio.run(role_change.request_promotion(node, host, RefusingWitness(), forced=True, timeout=2))
    assert info.value.message == "the witness refused forced service: the principal is connected to the witness"
    assert host.session.failover_requested is False and host.session.config.role is Role.MIRROR
