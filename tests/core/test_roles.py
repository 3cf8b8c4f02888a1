"""The role machine's rules (core.roles), exhaustively over a small world: every role, every relation of
role sequences, the principal named being this node or not, a failover of our own under way or not."""

from __future__ import annotations

import itertools

from mirrord.core import roles
from mirrord.core.types import Role

ME, PARTNER, OTHER = "tcp://a:5022", "tcp://b:5022", "tcp://c:5022"
SEQ = 5


def views():
    for role, changing, redo_error, partner, forked, doubt in itertools.product(
            Role, (False, True), (None, "redo failed at LSN 9"), (PARTNER, None), (False, True), (False, True)):
        yield roles.RoleView(role, SEQ, ME, partner=partner, changing=changing, redo_error=redo_error,
                             forced_fork=forked, failover_in_doubt=doubt)


def events():
    for seq in (SEQ - 1, SEQ, SEQ + 1, SEQ + 2):
        for principal, forced, synced in itertools.product((ME, PARTNER, OTHER), (False, True), (False, True)):
            yield roles.WitnessState(seq, principal, forced=forced, mirror_synchronized=synced)
        yield roles.PartnerIsPrincipal(seq, PARTNER)
        yield roles.PartnerWelcomed(seq)
        yield roles.FailoverAsked(seq)
        for granted, forced in itertools.product((False, True), (False, True)):
            yield roles.VoteAnswered(granted, seq, forced=forced)
    yield roles.RedoFailed("redo failed at LSN 9: disk I/O error")
    yield roles.MirrorSuspended("redo failed at LSN 9: disk I/O error")


WORLD = [(v, e) for v in views() for e in events()]


def test_every_action_obeys_the_invariants():
    for view, event in WORLD:
        _check_actions(view, event)


def _check_actions(view: roles.RoleView, event: roles.Event) -> None:
    actions = roles.handle(view, event)
    if isinstance(event, (roles.RedoFailed, roles.MirrorSuspended)):
        # whatever else holds, the session is suspended on the copy the failure concerns, and nothing else happens
        concerned = Role.MIRROR if isinstance(event, roles.RedoFailed) else Role.PRINCIPAL
        assert actions == ([roles.SuspendSession(event.why if isinstance(event, roles.RedoFailed) else event.reason,
                                                 roles.SuspendCause.REDO_FAILED if concerned is Role.MIRROR
                                                 else roles.SuspendCause.MIRROR_ASKED)] if view.role is concerned else [])
        return
    assert len(actions) <= 1 or all(isinstance(a, (roles.SuspendSession, roles.ServeAgain)) for a in actions)
    for action in actions:
        if isinstance(action, roles.Promote):
            # only a mirror becomes principal, only of a newer role sequence, only of the one the event names
            assert view.role is Role.MIRROR and action.role_sequence == event.role_sequence > view.role_sequence
            # the witness decides: its record names us, it granted our vote, or it is asked before acting
            assert (action.needs_witness or (isinstance(event, roles.WitnessState) and event.principal == ME)
                    or (isinstance(event, roles.VoteAnswered) and event.granted))
            assert action.forced == (isinstance(event, (roles.WitnessState, roles.VoteAnswered)) and event.forced)
            # only a promotion learned from the record waits out the old principal's lease from this node
            assert action.from_record == isinstance(event, roles.WitnessState)
        elif isinstance(action, roles.StepDown):
            assert view.role is Role.PRINCIPAL and action.role_sequence == event.role_sequence > view.role_sequence
            assert action.needs_witness or (isinstance(event, roles.WitnessState) and event.principal != ME)
            assert not action.needs_witness or action.claimant == event.partner
        elif isinstance(action, roles.AdoptRoleSequence):
            assert view.role is not Role.PRINCIPAL and action.role_sequence > view.role_sequence
        elif isinstance(action, (roles.SuspendSession, roles.ServeAgain)):
            # only the principal of the role sequence its partner welcomed it in, and only what it was waiting for
            assert view.role is Role.PRINCIPAL and isinstance(event, roles.PartnerWelcomed)
            assert event.role_sequence == view.role_sequence
            assert view.forced_fork if isinstance(action, roles.SuspendSession) else view.failover_in_doubt
        else:
            assert isinstance(action, roles.NoteWitnessSynchronized)
            assert view.role is Role.PRINCIPAL and event.role_sequence == view.role_sequence and event.principal == ME


def test_an_event_of_an_older_role_sequence_changes_nothing():
    for view, event in WORLD:
        if getattr(event, "role_sequence", view.role_sequence) < view.role_sequence:
            assert roles.handle(view, event) == [], (view, event)


def test_a_failover_of_our_own_is_left_to_switch_roles_itself():
    for view, event in WORLD:
        if view.changing and isinstance(event, roles.WitnessState):
            assert roles.handle(view, event) == [], (view, event)


def test_the_witness_naming_this_mirror_promotes_it_as_recorded():
    view = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    assert roles.handle(view, roles.WitnessState(SEQ + 1, ME)) == [
        roles.Promote(SEQ + 1, forced=False, why="the witness records this node as principal", from_record=True)]
    forced = roles.handle(view, roles.WitnessState(SEQ + 1, ME, forced=True))
    assert [a.forced for a in forced] == [True]  # a forced vote whose answer was lost is still a recovery fork


def test_the_witness_naming_another_principal_deposes_this_one_and_moves_a_mirror_on():
    principal = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    assert roles.handle(principal, roles.WitnessState(SEQ + 1, PARTNER)) == [
        roles.StepDown(SEQ + 1, f"the witness records {PARTNER} as principal")]
    mirror = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    assert roles.handle(mirror, roles.WitnessState(SEQ + 2, OTHER)) == [roles.AdoptRoleSequence(SEQ + 2)]
    assert roles.handle(principal, roles.WitnessState(SEQ + 1, ME)) == []  # already principal: nothing to take


def test_the_principal_notes_the_witness_view_of_its_mirror_in_its_own_role_sequence():
    principal = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    assert roles.handle(principal, roles.WitnessState(SEQ, ME, mirror_synchronized=True)) == [roles.NoteWitnessSynchronized(True)]
    assert roles.handle(principal, roles.WitnessState(SEQ, PARTNER, mirror_synchronized=True)) == []


def test_a_partner_claiming_a_newer_role_sequence_deposes_a_principal_only_through_the_witness():
    principal = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    [action] = roles.handle(principal, roles.PartnerIsPrincipal(SEQ + 1, PARTNER))
    assert isinstance(action, roles.StepDown) and action.needs_witness and action.claimant == PARTNER
    assert roles.handle(principal, roles.PartnerIsPrincipal(SEQ, PARTNER)) == []
    assert roles.handle(roles.RoleView(Role.PRINCIPAL, SEQ, ME, None), roles.PartnerIsPrincipal(SEQ + 1, PARTNER)) == []
    assert roles.handle(roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER), roles.PartnerIsPrincipal(SEQ + 1, PARTNER)) == []


def test_a_manual_failover_promotes_the_mirror_through_the_witness():
    mirror = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    assert roles.handle(mirror, roles.FailoverAsked(SEQ + 1)) == [
        roles.Promote(SEQ + 1, forced=False, why="manual failover", needs_witness=True)]
    assert roles.handle(mirror, roles.FailoverAsked(SEQ)) == []
    assert roles.handle(roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER), roles.FailoverAsked(SEQ + 1)) == []


def test_a_granted_vote_promotes_the_mirror_that_asked_even_while_its_own_failover_is_under_way():
    asking = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER, changing=True)  # it asked: failover_requested
    assert roles.handle(asking, roles.VoteAnswered(True, SEQ + 1)) == [
        roles.Promote(SEQ + 1, forced=False, why="witness vote granted")]
    [forced] = roles.handle(asking, roles.VoteAnswered(True, SEQ + 1, forced=True))
    assert forced.forced and "FORCE_SERVICE_ALLOW_DATA_LOSS" in forced.why and not forced.from_record
    assert roles.handle(asking, roles.VoteAnswered(False, SEQ)) == []  # refused: the caller says why
    assert roles.handle(asking, roles.VoteAnswered(True, SEQ)) == []  # the role moved on meanwhile
    assert roles.handle(roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER), roles.VoteAnswered(True, SEQ + 1)) == []


def test_the_table_names_a_rule_for_every_pair_it_handles_and_nothing_else_acts():
    handled = set(roles.TRANSITIONS)
    for view, event in WORLD:
        if (view.role, type(event)) not in handled:
            assert roles.handle(view, event) == []


def test_the_checks_at_the_instant_of_acting():
    mirror = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    assert roles.promotion_due(mirror, SEQ + 1) and not roles.promotion_due(mirror, SEQ)
    assert not roles.promotion_due(roles.RoleView(Role.PRINCIPAL, SEQ, ME), SEQ + 1)
    assert roles.promotion_refusal(mirror) is None
    assert roles.promotion_refusal(roles.RoleView(Role.MIRROR, SEQ, ME, redo_error="redo failed")) == "redo failed"
    principal = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    assert roles.step_down_due(principal, SEQ + 1) and not roles.step_down_due(principal, SEQ)
    assert not roles.step_down_due(mirror, SEQ + 1)


def test_the_partner_welcoming_this_principal_settles_a_forced_fork_and_a_failover_in_doubt():
    plain = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    assert roles.handle(plain, roles.PartnerWelcomed(SEQ)) == []
    forked = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER, forced_fork=True)
    assert [type(a) for a in roles.handle(forked, roles.PartnerWelcomed(SEQ))] == [roles.SuspendSession]
    doubt = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER, failover_in_doubt=True)
    assert [type(a) for a in roles.handle(doubt, roles.PartnerWelcomed(SEQ))] == [roles.ServeAgain]
    assert roles.handle(doubt, roles.PartnerWelcomed(SEQ - 1)) == []  # another role sequence's welcome settles nothing
    assert roles.handle(roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER, forced_fork=True), roles.PartnerWelcomed(SEQ)) == []
