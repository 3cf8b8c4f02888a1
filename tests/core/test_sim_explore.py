"""Short runs of the simulation's random runner and bounded explorer (tests/core/sim_explore.py); the long ones
are commands: `python -m tests.core.sim_explore random --steps 1000000` and `... explore --depth 4`."""

from __future__ import annotations

import argparse

import pytest

from tests.core import sim_explore


def test_a_random_run_keeps_the_invariants_and_converges_after_every_fault():
    result = sim_explore.random_run(4_000, seed=2, report=lambda _: None)  # late, lost and doubled messages, drifting clocks
    assert result["steps"] == 4_000 and result["settles"] == 20
    assert result["role_sequences"] > 1 and result["acknowledged"] > 0  # failovers happened, commits were made
    assert result["messages"] > 1_000  # they went through the faulty network


def test_a_random_run_on_the_instant_network_keeps_the_invariants_too():
    result = sim_explore.random_run(2_000, seed=3, report=lambda _: None, network=sim_explore.Network(), drift=0.0)
    assert result["settles"] == 10 and result["messages"] == 0 and result["acknowledged"] > 0


def test_every_sequence_of_two_events_from_each_starting_state_keeps_the_invariants():
    result = sim_explore.explore(2, sim_explore.STARTS, report=lambda _: None)
    assert result["states"] > 5 * len(sim_explore.EVENTS)  # the depth was explored, not cut short


def test_the_state_key_forgets_absolute_time_and_commit_ids():
    a, b = sim_explore.Sim(), sim_explore.Sim()
    a.apply(("advance", 3.0))  # past the two timeouts the key still tells apart (time since a start, or heard)
    b.apply(("advance", 3.0))
    b.apply(("advance", 1.0))  # later, with more commits, in the same situation
    assert len(b.commits) > len(a.commits)
    assert sim_explore.state_key(a) == sim_explore.state_key(b)


def test_a_seed_range_names_each_seed_once_and_a_bad_one_is_refused_with_an_example():
    assert sim_explore.seed_range("3-5") == [3, 4, 5] and sim_explore.seed_range("7") == [7]
    for bad in ("x", "5-3", "1-"):
        with pytest.raises(argparse.ArgumentTypeError, match="1-12|empty"):
            sim_explore.seed_range(bad)


def test_the_state_key_takes_a_promotion_by_a_mirror_that_never_answered_its_principal():
    sim = sim_explore.Sim()
    sim.p["B"].session.serves_from = float("-inf")  # old_principal_lease_end of "never answered" (found at depth 4)
    assert sim_explore.state_key(sim)[0][1][-2] == 0
