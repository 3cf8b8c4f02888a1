"""Every duration a session derives from PARTNER TIMEOUT, in one place. Pure.

The reference defines PARTNER TIMEOUT as how long a partner or the witness
waits for a ping before it takes the other for disconnected. Everything else
that waits on the network is a policy built on it; `timing(timeout)` is the
one place that says which (in the manner of aioquic's `get_timer`), so a
change of TIMEOUT changes all of them at once and a reader sees how they
relate:

* `silence` — a peer silent this long is lost: the mirror asks for a vote,
  the witness stops seeing a partner, a link reader gives up. Also the deadline
  of one exchange (dialling, the first frame, a witness request).
* `ping_interval` — how often links ping: four pings per TIMEOUT (between
  0.1 and 1 s), so a live peer is never taken for a silent one.
* `lease` — how long an answered ping keeps a principal serving, counted from
  when it was *sent*: `LEASE_FRACTION` of TIMEOUT. Shorter than `silence`, so
  an old principal has stopped before its mirror can be promoted (`core.quorum`).
* `slow_answer` — what waits for a large piece of work on the other side (a
  seed or rewind installed, a manual failover's promotion): TIMEOUT, but never
  less than 30 s, since that work is disk-bound, not a ping.
"""

from __future__ import annotations

from dataclasses import dataclass

LEASE_FRACTION = 0.8  # principal lease as a fraction of PARTNER TIMEOUT
PINGS_PER_TIMEOUT = 4
PING_INTERVAL_BOUNDS = (0.1, 1.0)  # seconds
SLOW_ANSWER_FLOOR = 30.0  # seconds


@dataclass(frozen=True)
class Timing:
    """The durations of one session, in seconds (see the module docstring)."""

    silence: float
    ping_interval: float
    lease: float
    slow_answer: float


def timing(timeout: float) -> Timing:
    """The durations a PARTNER TIMEOUT of `timeout` seconds implies."""
    low, high = PING_INTERVAL_BOUNDS
    return Timing(
        silence=float(timeout),
        ping_interval=max(low, min(high, timeout / PINGS_PER_TIMEOUT)),
        lease=LEASE_FRACTION * timeout,
        slow_answer=max(float(timeout), SLOW_ANSWER_FLOOR),
    )
