"""Where two copies' histories part: the last LSN at which both hold the same log record (pure).

Every record carries the role sequence it was written in, and only one principal writes in a role
sequence, so two copies hold the same record at an LSN exactly when they hold it in the same role
sequence; along one copy's log the role sequences never decrease.

A new principal forked its history at its failover LSN (`fork`): what it holds up to there, and
everything it wrote after. An old copy rejoining it shares that history up to `fork` only if its
own records up to `fork` are the new principal's. They are not when the old copy went on in a
newer role sequence than the one the new principal's record at `fork` was written in: the old copy
was promoted (or followed a principal that was) after the new principal last heard from it, and
its records of that newer role sequence are not in the new history. Found by the nemesis: a
principal cut off with two unacknowledged records stepped down, its partner (promoted in role
sequence 103) acknowledged two commits at those very LSNs, and a forced service then promoted the
first copy with its own records there; the loss report started after the fork and left those two
acknowledged commits out, and the rewind left those pages as they were.
"""

from __future__ import annotations

from typing import Callable


def shared_history_end(fork: int, fork_role_sequence: int | None, first: int, last: int,
                       role_sequence_at: Callable[[int], int | None]) -> int:
    """The last LSN (at most `fork`) whose record this copy shares with a new principal that forked at `fork`.

    `fork_role_sequence` is the role sequence of the new principal's record at `fork` (None when it
    did not say: `fork` is trusted, as before). `first`..`last` is the part of this copy's log it
    still holds, and `role_sequence_at(lsn)` the role sequence of its record there. Records below
    `first` are not known: if even the record at `first` is newer than the fork's, the histories
    parted at `first - 1` or earlier, and `first - 1` is returned (a bound: what is lost is at least
    everything from `first` on).
    """
    end = min(fork, last)
    if fork_role_sequence is None or end < first:
        return fork
    if (role_sequence_at(end) or 0) <= fork_role_sequence:
        return fork  # this copy holds the new principal's records up to its fork (and nothing past `last`)
    lo, hi = first, end  # the last LSN in [first, end] whose role sequence is not newer than the fork's, by halves
    if (role_sequence_at(lo) or 0) > fork_role_sequence:
        return first - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if (role_sequence_at(mid) or 0) <= fork_role_sequence:
            lo = mid
        else:
            hi = mid - 1
    return lo
