"""core.leases: the leases' and links' rows of the role machine, and next_timer, the one instant the shell waits for.

The rules are checked over every role and event in tests/core/test_roles.py (the world of the whole
table); here: that they are rows of the one table and listed where a newcomer reads it, what the shell
notes of them on a real Session, and next_timer for every role, with and without a witness, leases
running or run out, serves_from ahead or behind.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import pytest

from mirrord.core import leases, quorum, role_statements as rs, roles
from mirrord.core.session import Session, SessionConfig
from mirrord.core.timing import timing
from mirrord.core.types import Role
from mirrord.engine.database import Database

ME, PARTNER, WITNESS = "tcp://a:5022", "tcp://b:5022", "tcp://c:5022"
NOW = 1000.0


def test_every_row_of_the_table_is_listed_in_the_docstring_a_newcomer_reads():
    assert rs.STATEMENT_TRANSITIONS and leases.LEASE_TRANSITIONS  # both modules' rows are in the one table
    listed = set(re.findall(r"^    (PRINCIPAL|MIRROR|NONE|any)\s+(\w+)\s+(\w+)", roles.__doc__, re.M))
    for (role, event), rule in roles.TRANSITIONS.items():
        assert (role.value, event.__name__, rule.__name__) in listed or ("any", event.__name__, rule.__name__) in listed, \
            (role, event.__name__, rule.__name__)
    for role, event, rule in listed:  # and nothing listed that the table does not hold
        roles_meant = list(Role) if role == "any" else [Role(role)]
        assert any(roles.TRANSITIONS.get((r, t)).__name__ == rule for r in roles_meant for t in _event_types(event)
                   if (r, t) in roles.TRANSITIONS), (role, event, rule)


def _event_types(name: str) -> list[type]:
    return [t for (_, t) in roles.TRANSITIONS if t.__name__ == name]


def test_lease_rows_are_in_the_one_table():
    for key, rule in leases.LEASE_TRANSITIONS.items():
        assert roles.TRANSITIONS[key] is rule


def test_the_rules_read_no_clock_the_same_event_gives_the_same_actions():
    view = roles.RoleView(Role.PRINCIPAL, 3, ME, PARTNER, witness=WITNESS, timeout=10)
    event = leases.MirrorAnswered(sent_at=NOW)
    assert roles.handle(view, event) == roles.handle(view, event) == [leases.RenewMirrorLease(NOW + 8.0)]
    assert roles.handle(view, leases.WitnessAnswered(NOW, True)) == [leases.RenewWitnessLease(quorum.lease_until(NOW, 10))]


def principal_session(**observed) -> Session:
    return Session(SessionConfig("shop", role=Role.PRINCIPAL, partner=PARTNER, witness=WITNESS, timeout=10), **observed)


def test_a_lease_only_grows_while_its_link_lasts():
    s = principal_session()
    s.hear(leases.MirrorAnswered(NOW))
    s.hear(leases.MirrorAnswered(NOW - 5))  # a late pong for an older ping: it shortens nothing
    assert s.mirror_lease_until == NOW + 8.0
    s.hear(leases.WitnessAnswered(NOW, names_this_node=False))  # the witness names another principal: no lease
    assert s.witness_lease_until == 0.0
    s.hear(leases.WitnessAnswered(NOW + 1, names_this_node=True))
    assert s.witness_lease_until == NOW + 9.0


def test_the_witness_link_lost_ends_its_lease_at_once_and_the_mirrors_still_counts():
    s = principal_session(witness_connected=True, witness_lease_until=NOW + 8, mirror_lease_until=NOW + 8)
    s.hear(leases.WitnessLinkLost())
    assert (s.witness_lease_until, s.witness_connected, s.mirror_lease_until) == (0.0, False, NOW + 8)
    assert s.witness_state.value == "DISCONNECTED"
    s.hear(leases.WitnessLinked())
    assert s.witness_connected and s.witness_state.value == "CONNECTED"


def test_links_closed_on_purpose_end_both_leases():
    s = principal_session(witness_lease_until=NOW + 8, mirror_lease_until=NOW + 8)
    s.hear(leases.EndpointStopped())
    assert (s.mirror_lease_until, s.witness_lease_until) == (0.0, 0.0)
    assert not quorum.PrincipalView(s.config.safety, True, False, True, True, True, True, s.mirror_lease_until,
                                    s.witness_lease_until).has_quorum(NOW)


def test_a_mirror_notes_when_it_answered_its_principal_and_a_principal_does_not():
    mirror = Session(SessionConfig("shop", role=Role.MIRROR, partner=PARTNER, witness=WITNESS))
    mirror.hear(leases.AnsweredPrincipal(NOW))
    assert mirror.principal_answered_at == NOW
    principal = principal_session()
    principal.hear(leases.AnsweredPrincipal(NOW))
    assert principal.principal_answered_at == float("-inf")
    mirror.hear(leases.MirrorAnswered(NOW))  # a mirror holds no mirror lease
    assert mirror.mirror_lease_until == 0.0


# ------------------------------------------------------------------ next_timer

LEASE_STATES = {"none": 0.0, "running": NOW + 3.0, "run out": NOW - 1.0}


@pytest.mark.parametrize("mirror_lease, witness_lease, serves_from",
                         list(itertools.product(LEASE_STATES, LEASE_STATES, ("past", "ahead"))))
@pytest.mark.parametrize("witness", (WITNESS, None))
@pytest.mark.parametrize("partner", (PARTNER, None))
def test_a_principal_is_due_at_the_first_lease_end_or_serves_from_still_ahead(mirror_lease, witness_lease, serves_from, witness,
                                                                              partner):
    m, w = LEASE_STATES[mirror_lease], LEASE_STATES[witness_lease] + (0.5 if LEASE_STATES[witness_lease] > NOW else 0)
    start = NOW + 6.0 if serves_from == "ahead" else NOW - 2.0
    view = roles.RoleView(Role.PRINCIPAL, 3, ME, partner, witness=witness, mirror_lease_until=m, witness_lease_until=w,
                          serves_from=start)
    due = leases.next_timer(view, NOW)
    expected = [start] if start > NOW else []
    if partner is not None and witness is not None:  # has_quorum reads the leases only then
        expected += [t for t in (m, w) if t > NOW]
    assert due == (min(expected) if expected else None)
    if due is not None:
        # what it says is due is when has_quorum can change: never a later instant at which it changes first
        pv = quorum.PrincipalView(view.safety, partner is not None, False, True, True, witness is not None, True, m, w, start)
        assert all(pv.has_quorum(t) == pv.has_quorum(NOW) for t in (NOW, (NOW + due) / 2, due - 1e-9))


def test_a_principal_whose_leases_run_out_and_serves_from_passed_has_nothing_due():
    view = roles.RoleView(Role.PRINCIPAL, 3, ME, PARTNER, witness=WITNESS, mirror_lease_until=NOW - 1, witness_lease_until=NOW)
    assert leases.next_timer(view, NOW) is None  # a lease ending exactly now has run out (has_quorum: now < until)


@pytest.mark.parametrize("timeout", (1, 10, 60))
@pytest.mark.parametrize("answered_ago", (0.0, 0.5, 0.99, 1.0, 2.0, float("inf")))
@pytest.mark.parametrize("connected", (True, False))
@pytest.mark.parametrize("witness", (WITNESS, None))
def test_a_mirror_is_due_when_its_principal_has_been_silent_for_partner_timeout(timeout, answered_ago, connected, witness):
    answered = NOW - answered_ago * timeout
    view = roles.RoleView(Role.MIRROR, 3, ME, PARTNER, witness=witness, timeout=timeout, partner_connected=connected,
                          principal_answered_at=answered)
    due = leases.next_timer(view, NOW)
    silent_at = answered + timing(timeout).silence
    if connected and witness is not None and silent_at > NOW:
        assert due == silent_at  # then the link ends and PingDue asks the witness, when it may
    else:
        assert due is None  # no principal linked (PingDue comes at every ping), none silent yet, or no witness to ask


def test_a_copy_outside_a_session_has_nothing_due():
    view = roles.RoleView(Role.NONE, 3, ME, None, mirror_lease_until=NOW + 5, witness_lease_until=NOW + 5, serves_from=NOW + 5,
                          principal_answered_at=NOW, partner_connected=True, witness=WITNESS)
    assert leases.next_timer(view, NOW) is None


def test_the_role_view_of_a_session_carries_what_next_timer_reads():
    s = principal_session(mirror_lease_until=NOW + 2, witness_lease_until=NOW + 4, serves_from=NOW + 1)
    assert leases.next_timer(s.role_view(), NOW) == NOW + 1
    assert leases.next_timer(s.role_view(), NOW + 1) == NOW + 2
    assert leases.next_timer(s.role_view(), NOW + 3) == NOW + 4
    assert leases.next_timer(s.role_view(), NOW + 4) is None


# ------------------------------------------------------------------ the shell arms one timer from next_timer


class Principal:
    """Counts the re-evaluations of waiting commits, and what the quorum said at each."""

    def __init__(self, database) -> None:
        self.database, self.seen = database, []

    def update_visible(self) -> None:
        self.seen.append(self.database.quorum_refusal() is None)


def test_the_database_re_evaluates_its_quorum_when_a_lease_runs_out_with_no_frame_arriving(tmp_path):
    async def run() -> tuple[list, object]:
        now = time.monotonic()
        database = Database("shop", tmp_path, principal_session(witness_lease_until=now + 0.05, mirror_lease_until=now + 0.1), log=None)  # no log: the timer reads the session only
        database.principal = Principal(database)
        database.poke()
        assert database.timer is not None  # armed for the witness lease's end
        await asyncio.sleep(0.3)
        return database.principal.seen, database.timer

    seen, timer = asyncio.run(run())
    # served at the poke, still (the mirror's lease) at the witness lease's end, and no longer at the mirror lease's
    assert seen == [True, True, False]
    assert timer is None  # nothing more falls due


def test_a_renewed_lease_moves_the_timer_and_a_stopped_database_has_none(tmp_path):
    async def run() -> None:
        now = time.monotonic()
        database = Database("shop", tmp_path, principal_session(mirror_lease_until=now + 30), log=None)  # no log: the timer reads the session only
        database.poke()
        assert database.timer is not None and database.timer_due == now + 30
        database.session.hear(leases.MirrorAnswered(now + 10))  # a lease to now + 18: shorter, it changes nothing
        database.poke()
        assert database.timer_due == now + 30
        database.session.hear(leases.MirrorAnswered(now + 25))  # to now + 33: the timer moves with it
        database.poke()
        assert database.timer is not None and database.timer_due == pytest.approx(now + 33)
        database.disarm_timer()
        assert database.timer is None

    asyncio.run(run())
