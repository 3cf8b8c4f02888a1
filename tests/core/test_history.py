"""core.history.shared_history_end: where an old copy's history parts from a new principal's."""

from __future__ import annotations

import itertools

from mirrord.core.history import shared_history_end


def log_of(segments: list[tuple[int, int]], first: int = 1):
    """A log from (role sequence, records) segments: its first and last LSN and its role sequence at each LSN."""
    seqs = [seq for seq, n in segments for _ in range(n)]
    return first, first + len(seqs) - 1, lambda lsn: seqs[lsn - first] if first <= lsn < first + len(seqs) else None


def test_an_old_principal_with_records_past_the_fork_shares_up_to_the_fork():
    first, last, at = log_of([(101, 10), (102, 5)])  # the new principal (role sequence 103) forked at 12, in 102
    assert shared_history_end(12, 102, first, last, at) == 12


def test_a_copy_that_went_on_in_a_newer_role_sequence_parts_where_that_began():
    # the nemesis's case: this copy was promoted to 103 at LSN 10 and wrote 11, 12, ...; the new principal
    # forked at 12 with its own records of 102 at 11 and 12
    first, last, at = log_of([(102, 10), (103, 8)])
    assert shared_history_end(12, 102, first, last, at) == 10


def test_without_the_forks_role_sequence_the_fork_is_trusted():
    first, last, at = log_of([(102, 10), (103, 8)])
    assert shared_history_end(12, None, first, last, at) == 12


def test_a_log_truncated_past_where_they_part_gives_a_bound():
    first, last, at = log_of([(103, 8)], first=11)  # records of 102 below 11 are gone
    assert shared_history_end(15, 102, first, last, at) == 10
    first, last, at = log_of([(103, 8)], first=11)
    assert shared_history_end(5, 102, first, last, at) == 5  # nothing of ours to judge below the fork


def test_every_small_history_matches_the_definition():
    """Exhaustive over small logs: the answer is the last LSN <= fork whose role sequence is not newer."""
    for lens in itertools.product(range(4), repeat=3):
        segments = [(100 + i, n) for i, n in enumerate(lens)]
        first, last, at = log_of(segments)
        for fork, fork_seq in itertools.product(range(1, last + 3), (99, 100, 101, 102, 103)):
            got = shared_history_end(fork, fork_seq, first, last, at)
            upto = min(fork, last)
            if upto < first or (at(upto) or 0) <= fork_seq:
                assert got == fork
            else:
                candidates = [lsn for lsn in range(first, upto + 1) if at(lsn) <= fork_seq]
                assert got == (candidates[-1] if candidates else first - 1), (segments, fork, fork_seq)
