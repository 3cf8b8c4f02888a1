"""What the witness knows of one database's session: pure and synchronous.

The record (`quorum.WitnessRecord`) is durable, and the shell
(engine/witness.py) writes each new one before an answer carrying it leaves:
so `vote` returns the record it would make and changes nothing until the shell
`adopt`s it. The rest is observed and forgotten at a restart:

* which partners are connected and when each was last heard from: the witness
  *sees* a partner whose connection is open and who spoke within the longer of
  its PARTNER TIMEOUT and the record's (a reset connection stops that at once);
* which partners it has met since it started: one it has not may be "not
  connected yet", so a vote without the principal waits a TIMEOUT of uptime;
* when it last answered each partner: an answer naming a partner principal is a
  lease that partner may still hold, which a forced vote waits out.

The simulator (tests/core/quorum_sim.py) drives this same class as its witness,
so these rules are written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mirrord.core import quorum
from mirrord.core.quorum import Vote, VoteRequest, WitnessRecord


@dataclass
class Heard:
    """One open connection of a partner: its PARTNER TIMEOUT, and when the witness last heard from it."""

    timeout: float
    last: float


@dataclass
class Witnessing:
    """One database as its witness knows it: the record, and what it has observed since it started."""

    record: WitnessRecord | None
    started: float  # when this witness (re)started, on its clock
    connected: dict[str, Heard] = field(default_factory=dict)  # endpoint -> its open connection
    met: set[str] = field(default_factory=set)  # endpoints connected since the start
    answered: dict[str, float] = field(default_factory=dict)  # endpoint -> when the witness last answered it

    def note_connected(self, endpoint: str, timeout: float, now: float) -> Heard:
        """A partner's connection opened (its hello): heard now; it replaces any older connection of that partner."""
        heard = self.connected[endpoint] = Heard(timeout, now)
        self.met.add(endpoint)
        return heard

    def note_heard(self, endpoint: str, now: float) -> None:
        """A message arrived on the partner's open connection."""
        if (heard := self.connected.get(endpoint)) is not None:
            heard.last = now

    def note_timeout(self, endpoint: str, timeout: float) -> None:
        """The partner reported another PARTNER TIMEOUT."""
        if (heard := self.connected.get(endpoint)) is not None:
            heard.timeout = timeout

    def note_answered(self, endpoint: str, now: float) -> None:
        """An answer left for the partner (noted before it is written: its lease cannot start earlier)."""
        self.answered[endpoint] = now

    def note_lost(self, endpoint: str, heard: Heard | None = None) -> None:
        """The partner's connection ended (heard: that connection, if a newer one may have replaced it)."""
        if heard is None or self.connected.get(endpoint) is heard:
            self.connected.pop(endpoint, None)

    def adopt(self, record: WitnessRecord) -> None:
        """The shell made this record durable: it is the record now."""
        self.record = record

    def sees(self, endpoint: str, now: float) -> bool:
        """Does the witness hear from this partner now: connected, and heard within the longer TIMEOUT?"""
        heard = self.connected.get(endpoint)
        if heard is None:
            return False
        return now - heard.last < max(heard.timeout, self.record.timeout if self.record is not None else 0)

    def vote(self, request: VoteRequest, now: float) -> tuple[Vote, WitnessRecord]:
        """The vote on a mirror's request (quorum.decide_vote), with what this witness observed; the record it would make."""
        rec = self.record
        # having met the principal since this start, it knows when it went; otherwise "not connected" may only mean
        # "not connected yet", and it waits out a TIMEOUT of its own uptime first
        uptime = math.inf if rec.principal in self.met else now - self.started
        return quorum.decide_vote(rec, request, principal_seen=self.sees(rec.principal, now), witness_uptime=uptime,
                                  principal_answered_ago=now - self.answered.get(rec.principal, -math.inf))
