"""How long to wait before redialing: one rule, with jitter, for every link. Pure.

Used by the principal's link to its mirror, both partners' links to the
witness (mirrord/net/reconnect.py) and the client driver's connection rounds
(mirrorctl/dbapi/routing.py). The delay doubles from FIRST up to CAP, so a lost
peer is found again quickly and a long outage costs one dial per CAP.

Why jitter: one event (a node restarted, a link healed) breaks many links at
the same instant: every database's partner and witness link, every client.
With identical delays they would all redial in lockstep, again and again. Each
delay is drawn from [d/2, d] ("equal jitter"): the doubling still bounds the
wait, and the retries spread out. The random draw is passed in (`rand`, 0..1),
so this stays deterministic and testable.
"""

from __future__ import annotations

FIRST = 0.05  # seconds before the first redial
CAP = 1.0  # the longest wait between two dials


def jittered(delay: float, rand: float) -> float:
    """delay spread over [delay/2, delay] by rand in [0, 1]."""
    return delay * (0.5 + 0.5 * min(1.0, max(0.0, rand)))


def reconnect_delay(attempt: int, rand: float, first: float = FIRST, cap: float = CAP) -> float:
    """The wait before redial number attempt (0: the first after a loss)."""
    return jittered(min(cap, first * 2 ** min(max(attempt, 0), 32)), rand)
