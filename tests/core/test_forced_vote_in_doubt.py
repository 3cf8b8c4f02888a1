"""A forced vote whose answer never comes is in doubt, not an internal error (found by the 500-round nemesis)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from mirrord.engine import role_change
from mirrord.core.types import ActionInDoubt


class SilentWitness:
    async def request(self, msg: dict, timeout: float) -> dict:
        raise asyncio.TimeoutError()


def parts():
    async def stop_inbound(host):
        return None

    session = SimpleNamespace(failover_requested=False, config=SimpleNamespace(role_sequence=7))
    host = SimpleNamespace(name="shop", session=session, log=SimpleNamespace(last_lsn=42))
    return SimpleNamespace(stop_inbound=stop_inbound), host


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
