"""core.timing: every duration derived from PARTNER TIMEOUT, and how they must relate."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as hs

from mirrord.core import quorum
from mirrord.core.timing import LEASE_FRACTION, timing


def test_examples():
    t = timing(10)
    assert (t.silence, t.ping_interval, t.lease, t.slow_answer) == (10.0, 1.0, 8.0, 30.0)
    assert timing(2).ping_interval == 0.5 and timing(1).ping_interval == 0.25
    assert timing(60).slow_answer == 60.0


@given(hs.integers(min_value=1, max_value=3600))
def test_relations_hold_for_every_timeout(timeout):
    t = timing(timeout)
    assert t.lease < t.silence  # an old principal stops before its mirror may be promoted
    assert t.ping_interval <= t.silence / 4 or t.ping_interval == 0.1  # several pings per TIMEOUT
    assert 0.1 <= t.ping_interval <= 1.0
    assert t.slow_answer >= max(t.silence, 30)
    assert quorum.lease_until(5.0, timeout) == 5.0 + t.lease
    assert quorum.LEASE_FRACTION == LEASE_FRACTION
