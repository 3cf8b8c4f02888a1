"""core.witnessing: what the witness observes of one session, and its vote on what it observed."""

from __future__ import annotations

import math

from mirrord.core.quorum import VoteRequest, WitnessRecord
from mirrord.core.types import Safety
from mirrord.core.witnessing import Witnessing

P, M = "tcp://p:5022", "tcp://m:5022"
TIMEOUT = 10


def witnessing(started: float = 0.0, synchronized: bool = True) -> Witnessing:
    return Witnessing(WitnessRecord("shop", 3, P, M, synchronized, Safety.FULL, TIMEOUT), started)


def test_a_partner_is_seen_while_connected_and_heard_within_the_longer_timeout():
    w = witnessing()
    assert not w.sees(P, 0.0)  # never connected
    heard = w.note_connected(P, 5, now=100.0)
    assert w.sees(P, 109.9) and not w.sees(P, 110.0)  # the record's 10 s outlasts the partner's 5
    w.note_heard(P, 108.0)
    assert w.sees(P, 117.9)
    w.note_timeout(P, 30)
    assert w.sees(P, 137.9) and not w.sees(P, 138.0)
    newer = w.note_connected(P, 10, now=120.0)  # a reconnection replaces the connection
    w.note_lost(P, heard)  # the old connection's end does not end the new one
    assert w.sees(P, 121.0) and w.connected[P] is newer
    w.note_lost(P, newer)  # a reset: not seen at once
    assert not w.sees(P, 121.0) and P in w.met


def test_a_vote_is_granted_to_a_synchronized_mirror_once_the_principal_is_not_seen():
    w = witnessing()
    w.note_connected(P, TIMEOUT, 0.0)
    w.note_connected(M, TIMEOUT, 0.0)
    vote, _ = w.vote(VoteRequest("shop", M, 3, 50, False), now=5.0)
    assert not vote.granted  # the principal is heard from
    w.note_lost(P)
    vote, after = w.vote(VoteRequest("shop", M, 3, 50, False), now=5.0)
    assert vote.granted and after.principal == M and w.record.principal == P  # nothing changes until adopted
    w.adopt(after)
    assert w.record.principal == M


def test_a_fresh_witness_that_never_met_the_principal_waits_a_timeout_of_uptime():
    w = witnessing(started=1000.0)
    w.note_connected(M, TIMEOUT, 1000.0)
    assert not w.vote(VoteRequest("shop", M, 3, 50, False), now=1005.0)[0].granted  # "not connected" may be "not yet"
    assert w.vote(VoteRequest("shop", M, 3, 50, False), now=1010.0)[0].granted


def test_a_forced_vote_waits_until_the_last_answer_to_the_principal_is_a_timeout_old():
    w = witnessing(synchronized=False)
    w.note_connected(P, TIMEOUT, 0.0)
    w.note_answered(P, 0.0)
    w.note_lost(P)
    forced = VoteRequest("shop", M, 3, 50, True)
    refused, _ = w.vote(forced, now=4.0)
    assert not refused.granted and "6" in refused.reason  # seconds left
    assert w.vote(forced, now=10.0)[0].granted
    assert w.answered.get(M, -math.inf) == -math.inf
