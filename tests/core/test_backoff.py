"""core.backoff (the jittered redial delay) and net.reconnect.run_link (the one redial loop)."""

from __future__ import annotations

import asyncio

import pytest

from mirrord.core.backoff import CAP, FIRST, jittered, reconnect_delay
from mirrord.net.reconnect import Link, LinkRefused, run_link
from mirrorctl.dbapi.routing import RetrySchedule


def test_delays_double_to_the_cap_and_jitter_spreads_them_over_half_to_whole():
    assert [reconnect_delay(a, 1.0) for a in range(7)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert [reconnect_delay(a, 0.0) for a in range(7)] == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    for attempt in (0, 3, 10, 10_000):
        for rand in (0.0, 0.3, 0.999):
            d = reconnect_delay(attempt, rand)
            full = min(CAP, FIRST * 2 ** attempt) if attempt < 40 else CAP
            assert full / 2 <= d <= full
    assert jittered(1.0, -5) == 0.5 and jittered(1.0, 7) == 1.0  # a bad draw cannot escape the range


def test_client_rounds_are_jittered_too():
    backoff = RetrySchedule(timeout=30.0).start(now=0.0)
    assert [backoff.delay(0.0, 0.0) for _ in range(3)] == pytest.approx([0.025, 0.05, 0.1])


class FakeNode:
    async def wait_endpoint_started(self) -> None:
        return None


async def test_one_loop_redials_resets_after_success_and_survives_a_bug(caplog):
    outcomes = [OSError("refused"), None, LinkRefused("no such database"), RuntimeError("bug"), OSError("down")]
    calls, lost, refused = [], [], []
    connected = {"up": False}

    async def connect_once() -> None:
        calls.append(asyncio.get_running_loop().time())
        outcome = outcomes.pop(0)
        connected["up"] = outcome is None
        if outcome is not None:
            raise outcome

    link = Link(name="test", should_run=lambda: bool(outcomes), connect_once=connect_once,
                connected=lambda: connected["up"], on_lost=lambda: lost.append(1), on_refused=refused.append,
                context=lambda: {"database": "d"})
    await asyncio.wait_for(run_link(FakeNode(), link, rand=lambda: 0.0), 10)
    assert len(calls) == 5 and len(lost) == 5  # every outcome, the bug included, is followed by a redial
    assert [str(r) for r in refused] == ["no such database"]
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.025 and gaps[1] < 0.2  # the connection that came up reset the backoff
    assert gaps[2] >= 0.5  # a refusal waits the longest delay


def test_the_driver_jitters_its_rounds_by_default():
    from mirrorctl.dbapi.driver import Driver, Settings, Sleep, pump
    from mirrorctl.dbapi.routing import parse_url
    from mirrorctl.client import Unreachable

    now = [0.0]

    def perform(op):
        if isinstance(op, Sleep):
            now[0] += op.seconds
            return None
        raise Unreachable("down")

    drv = Driver(parse_url("mirror://a:1/shop"), Settings(failover_timeout=3), lambda: now[0], rand=lambda: 0.0)
    ops = []
    with pytest.raises(Exception):
        pump(drv.open(), lambda op: (ops.append(op), perform(op))[1])
    sleeps = [op.seconds for op in ops if isinstance(op, Sleep)]
    assert sleeps[:3] == pytest.approx([0.025, 0.05, 0.1])
