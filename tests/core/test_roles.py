"""The role machine's rules (core.roles), exhaustively over a small world: every role, every relation of
role sequences, the principal named being this node or not, a failover of our own under way or not."""

from __future__ import annotations

import itertools

from mirrord.core import leases, quorum, redo_queue, role_statements as rs, roles
from mirrord.core.types import DatabaseStatus, Role, Safety

ME, PARTNER, OTHER = "tcp://a:5022", "tcp://b:5022", "tcp://c:5022"
SPELLINGS = {PARTNER: (PARTNER, "b:5022"), OTHER: (OTHER,)}  # the texts that name each endpoint
SEQ = 5


def views():
    for role, changing, redo_error, partner, forked, doubt, asking, mirror_open, ended_by_off in itertools.product(
            Role, (False, True), (None, "redo failed at LSN 9"), (PARTNER, None), (False, True), (False, True),
            (False, True), (True, False), (None, PARTNER, OTHER)):
        yield roles.RoleView(role, SEQ, ME, partner=partner, changing=changing or asking, redo_error=redo_error,
                             forced_fork=forked, failover_in_doubt=doubt, asking_witness=asking, mirror_open=mirror_open,
                             ended_by_off=ended_by_off)


def events():
    for seq in (SEQ - 1, SEQ, SEQ + 1, SEQ + 2):
        for principal, forced, synced in itertools.product((ME, PARTNER, OTHER), (False, True), (False, True)):
            yield roles.WitnessState(seq, principal, forced=forced, mirror_synchronized=synced)
        yield roles.PartnerIsPrincipal(seq, PARTNER)
        yield roles.PartnerWelcomed(seq)
        yield roles.FailoverAsked(seq)
        for granted, forced in itertools.product((False, True), (False, True)):
            yield roles.VoteAnswered(granted, seq, forced=forced)
        yield roles.PartnerIsPrincipal(seq, OTHER)
        for sender in (PARTNER, "b:5022", OTHER, "not an endpoint"):
            yield roles.PartnerHello("shop", "a", sender, seq)
        yield roles.PrincipalLinked(seq)
        for shared, has_copy in itertools.product((10, 12), (False, True)):
            yield roles.ForkFound(seq, 12, shared, log_end=12, log_role_sequence=SEQ - 1, has_copy=has_copy)
    yield roles.SettingsFromPrincipal("OFF", 20, True, redo_queue_mb=64, witness=OTHER)
    yield roles.SettingsFromPrincipal("FULL", 10, False)
    yield roles.SettingsFromPrincipal("FULL", 0, False)
    yield roles.PingDue()
    yield roles.RedoFailed("redo failed at LSN 9: disk I/O error")
    yield roles.MirrorSuspended("redo failed at LSN 9: disk I/O error")
    for sent_at in (0.0, 100.0):
        yield leases.MirrorAnswered(sent_at)
        yield leases.WitnessAnswered(sent_at, names_this_node=True)
        yield leases.WitnessAnswered(sent_at, names_this_node=False)
        yield leases.AnsweredPrincipal(sent_at)
    yield leases.WitnessLinked()
    yield leases.WitnessLinkLost()
    yield leases.EndpointStopped()


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
    if isinstance(event, roles.PartnerHello):
        _check_hello(view, event, actions)
        return
    if isinstance(event, (roles.ForkFound, roles.SettingsFromPrincipal)):
        # only a mirror hears its principal's history and settings; what it does is checked in worlds of their own below
        assert view.role is Role.MIRROR or actions == []
        kinds = ((roles.KeepSalvageCopy, roles.ReportLoss) if isinstance(event, roles.ForkFound)
                 else (roles.AdoptSettings, roles.RefuseSettings))
        assert all(isinstance(a, kinds) for a in actions)
        return
    if isinstance(event, roles.PingDue):
        assert actions in ([], [roles.AskForVote()]) and (view.role is Role.MIRROR or actions == [])
        return
    if isinstance(event, LEASE_EVENTS):
        _check_lease(view, event, actions)
        return
    assert len(actions) <= 1 or all(isinstance(a, (roles.SuspendSession, roles.ServeAgain)) for a in actions)
    for action in actions:
        assert not isinstance(action, (roles.RefuseHello, roles.ServePrincipal, roles.KeepSalvageCopy, roles.ReportLoss,
                                       roles.AdoptSettings, roles.RefuseSettings, roles.AskForVote))  # each from its own event
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
            assert not isinstance(event, roles.PartnerIsPrincipal) or event.partner == PARTNER == view.partner  # only its partner
        elif isinstance(action, roles.AdoptRoleSequence):
            assert view.role is not Role.PRINCIPAL and action.role_sequence > view.role_sequence
            assert action.role_sequence == event.role_sequence
            assert isinstance(event, roles.WitnessState) or (isinstance(event, roles.PrincipalLinked) and view.role is Role.MIRROR)
        elif isinstance(action, (roles.SuspendSession, roles.ServeAgain)):
            # only the principal of the role sequence its partner welcomed it in, and only what it was waiting for
            assert view.role is Role.PRINCIPAL and isinstance(event, roles.PartnerWelcomed)
            assert event.role_sequence == view.role_sequence
            assert view.forced_fork if isinstance(action, roles.SuspendSession) else view.failover_in_doubt
        else:
            assert isinstance(action, roles.NoteWitnessSynchronized)
            assert view.role is Role.PRINCIPAL and event.role_sequence == view.role_sequence and event.principal == ME
            assert event.mirror_synchronized  # an answer never lowers the belief: the action only raises it


LEASE_EVENTS = (leases.MirrorAnswered, leases.WitnessAnswered, leases.WitnessLinked, leases.WitnessLinkLost, leases.EndpointStopped,
                leases.AnsweredPrincipal)


def _check_lease(view: roles.RoleView, event, actions: list) -> None:
    """A lease or a link only notes what it says, whatever else holds: no role changes, no statement's actions."""
    assert all(isinstance(a, leases.Action.__args__) for a in actions), actions
    if isinstance(event, leases.MirrorAnswered):
        # only a principal holds a mirror lease, counted from when the ping was sent
        assert actions == ([leases.RenewMirrorLease(quorum.lease_until(event.sent_at, view.timeout))]
                           if view.role is Role.PRINCIPAL else [])
    elif isinstance(event, leases.WitnessAnswered):
        # the witness naming this node principal is a lease, whatever its role (a mirror it promotes hears so first)
        assert actions == ([leases.RenewWitnessLease(quorum.lease_until(event.sent_at, view.timeout))]
                           if event.names_this_node else [])
    elif isinstance(event, leases.AnsweredPrincipal):
        assert actions == ([leases.NotePrincipalAnswered(event.at)] if view.role is Role.MIRROR else [])
    elif isinstance(event, leases.WitnessLinkLost):
        assert actions == [leases.EndWitnessLease(), leases.NoteWitnessLink(False)]  # the lease ends at once
    elif isinstance(event, leases.EndpointStopped):
        assert actions == [leases.EndMirrorLease(), leases.EndWitnessLease()]  # no lease outlives links closed on purpose
    else:
        assert actions == [leases.NoteWitnessLink(True)]


def _check_hello(view: roles.RoleView, event: roles.PartnerHello, actions: list) -> None:
    """A hello is answered: served by a mirror of that principal, in its role sequence or a newer one; else refused."""
    [answer] = actions
    off_here = view.partner is None and event.sender in SPELLINGS.get(view.ended_by_off, ())
    serves = (view.role is Role.MIRROR and view.mirror_open and not view.asking_witness
              and event.sender in SPELLINGS.get(view.partner, ()) and event.role_sequence >= view.role_sequence)
    if serves:
        assert answer == roles.ServePrincipal(event.role_sequence)
    else:
        assert isinstance(answer, roles.RefuseHello) and answer.reason
        assert answer.partner_off == off_here  # only SET PARTNER OFF here tells the principal to end the session


def test_an_event_of_an_older_role_sequence_changes_nothing():
    for view, event in WORLD:
        if getattr(event, "role_sequence", view.role_sequence) < view.role_sequence:
            actions = roles.handle(view, event)
            if isinstance(event, roles.PartnerHello):  # a hello is answered: refused, saying why
                assert [type(a) for a in actions] == [roles.RefuseHello], (view, event)
            else:
                assert actions == [], (view, event)


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
    assert roles.handle(principal, roles.WitnessState(SEQ, ME, mirror_synchronized=True)) == [roles.NoteWitnessSynchronized()]
    assert roles.handle(principal, roles.WitnessState(SEQ, PARTNER, mirror_synchronized=True)) == []


def test_no_answer_of_the_witness_lowers_the_principals_belief_that_it_records_the_mirror_synchronized():
    # the answer may be to a request sent before a "synchronized" report the witness has recorded since; only the
    # acceptance of the latest report lowers it (test_witness_report_lost)
    principal = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    assert roles.handle(principal, roles.WitnessState(SEQ, ME, mirror_synchronized=False)) == []


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


def test_a_partner_claiming_to_be_principal_is_only_the_configured_partner_however_spelled():
    principal = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    assert [type(a) for a in roles.handle(principal, roles.PartnerIsPrincipal(SEQ + 1, "b:5022"))] == [roles.StepDown]
    assert roles.handle(principal, roles.PartnerIsPrincipal(SEQ + 1, OTHER)) == []  # not our partner: no claim on us


# ------------------------------------------------------------------ the principal's hello, as the old refusal_for_hello


def test_the_hello_of_its_partner_is_served_by_a_mirror_in_its_role_sequence_or_a_newer_one():
    mirror = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    for seq in (SEQ, SEQ + 1):
        assert roles.handle(mirror, roles.PartnerHello("shop", "a", PARTNER, seq)) == [roles.ServePrincipal(seq)]
    [older] = roles.handle(mirror, roles.PartnerHello("shop", "a", PARTNER, SEQ - 1))
    assert older == roles.RefuseHello(f"hello from role sequence {SEQ - 1}, older than this node's {SEQ}")


def test_a_hello_is_refused_saying_why():
    hello = roles.PartnerHello("shop", "a", PARTNER, SEQ)
    cases = {
        roles.RoleView(Role.NONE, SEQ, ME, None, ended_by_off=PARTNER):
            roles.RefuseHello("SET PARTNER OFF ended the mirroring of shop on a; end it on the principal too", partner_off=True),
        roles.RoleView(Role.NONE, SEQ, ME, None, ended_by_off=OTHER):
            roles.RefuseHello(f"database shop on a is not a mirror (role NONE, role sequence {SEQ})"),
        roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER):
            roles.RefuseHello(f"database shop on a is not a mirror (role PRINCIPAL, role sequence {SEQ})"),
        roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER, mirror_open=False):
            roles.RefuseHello(f"database shop on a is not a mirror (role MIRROR, role sequence {SEQ})"),
        roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER, changing=True, asking_witness=True):
            roles.RefuseHello("database shop on a is asking the witness to fail over; it takes no log meanwhile"),
        roles.RoleView(Role.MIRROR, SEQ, ME, OTHER):
            roles.RefuseHello(f"database shop on a mirrors {OTHER}, not {PARTNER}"),
        roles.RoleView(Role.MIRROR, SEQ, ME, None):
            roles.RefuseHello(f"database shop on a mirrors None, not {PARTNER}"),
    }
    for view, refusal in cases.items():
        assert roles.handle(view, hello) == [refusal], view
    # a manual failover of a principal that stepped down meanwhile is not a vote: the mirror it became takes log
    assert roles.handle(roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER, changing=True), hello) == [roles.ServePrincipal(SEQ)]


def test_a_newer_principal_linked_gives_its_role_sequence_to_its_mirror():
    mirror = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    assert roles.handle(mirror, roles.PrincipalLinked(SEQ + 2)) == [roles.AdoptRoleSequence(SEQ + 2)]
    assert roles.handle(mirror, roles.PrincipalLinked(SEQ)) == []
    assert roles.handle(roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER), roles.PrincipalLinked(SEQ + 2)) == []


# ------------------------------------------------------------------ the fork found, as the old _note_divergence

END, PATH = 14, "/data/shop.salvage-10.sqlite"


def fork_world():
    for role, view_seq, lost_to, path in itertools.product(Role, (SEQ, SEQ + 1), (0, END - 1, END), (None, PATH)):
        view = roles.RoleView(role, view_seq, ME, PARTNER, lost_lsn_to=lost_to, salvage_path=path)
        for log_seq, shared, has_copy in itertools.product((SEQ - 1, SEQ, SEQ + 1), (8, END - 1, END, END + 2), (False, True)):
            yield view, roles.ForkFound(SEQ, 12, shared, END, log_seq, has_copy)


def test_a_diverged_mirror_keeps_a_salvage_copy_then_records_its_loss_once():
    for view, event in fork_world():
        actions = roles.handle(view, event)
        diverged = event.role_sequence > event.log_role_sequence and event.log_end > event.shared_end
        assert roles.diverged_end(event) == (event.shared_end if diverged else None)
        recorded = view.lost_lsn_to == END and view.salvage_path is not None
        if view.role is not Role.MIRROR or not diverged or recorded or event.role_sequence < view.role_sequence:
            assert actions == [], (view, event)
            continue
        loss = roles.ReportLoss(event.shared_end + 1, END, SEQ, 12, salvaged=event.has_copy)
        # the copy is kept before the loss is recorded: a recorded loss names its salvage copy
        assert actions == ([roles.KeepSalvageCopy(event.shared_end)] if event.has_copy else []) + [loss], (view, event)


def test_the_nemesis_case_loses_from_where_the_copy_went_on_in_a_newer_role_sequence():
    # (tests/storage/test_divergence.py on a real log): the shared history ends at 10, the loss is 11..14
    event = roles.ForkFound(104, 12, 10, 14, 103, has_copy=True)
    assert roles.handle(roles.RoleView(Role.MIRROR, 104, ME, PARTNER), event) == [
        roles.KeepSalvageCopy(10), roles.ReportLoss(11, 14, 104, 12, salvaged=True)]


# ------------------------------------------------------------------ settings from the principal, as the old _adopt_settings

W, W2 = "tcp://w:5022", "tcp://v:5022"


def settings_world():
    for safety, timeout, limit, suspended, redo_error, witness in itertools.product(
            Safety, (10, 20), (0, 64), (False, True), (None, "redo failed"), (None, W)):
        view = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER, safety=safety, timeout=timeout, redo_queue_mb=limit,
                              suspended=suspended, redo_error=redo_error, witness=witness)
        for e_safety, e_timeout, e_suspended, e_limit, e_witness in itertools.product(
                ("FULL", "OFF", "full"), (0, 1, 20, 3600, 3601), (False, True), (None, 0, 64, 1 << 21), (None, "", W, W2)):
            yield view, roles.SettingsFromPrincipal(e_safety, e_timeout, e_suspended, redo_queue_mb=e_limit, witness=e_witness)


def test_the_principal_settings_become_the_mirrors_but_a_failed_redo_keeps_it_suspended():
    for view, event in settings_world():
        actions = roles.handle(view, event)
        limit = view.redo_queue_mb if event.redo_queue_mb is None else event.redo_queue_mb
        if event.safety not in ("FULL", "OFF") or not 1 <= event.timeout <= 3600 or limit > 1 << 20:
            [refused] = actions  # nothing is persisted of settings no session can have
            assert isinstance(refused, roles.RefuseSettings) and "bad settings from the principal" in refused.why
            continue
        changes = actions[0].as_dict() if actions else {}
        assert actions == ([roles.AdoptSettings(actions[0].changes)] if changes else []), (view, event)
        current = {"safety": view.safety, "timeout": view.timeout, "redo_queue_mb": view.redo_queue_mb,
                   "suspended": view.suspended, "witness": view.witness}
        assert all(current[name] != value for name, value in changes.items())  # only what differs is persisted
        after = {**current, **changes}
        assert after["safety"] is Safety(event.safety) and after["timeout"] == event.timeout and after["redo_queue_mb"] == limit
        assert after["witness"] == (view.witness if event.witness is None else event.witness or None)
        kept_suspended = view.suspended and view.redo_error is not None
        assert after["suspended"] == (True if kept_suspended else event.suspended), (view, event)


def test_settings_are_a_mirrors_only():
    event = roles.SettingsFromPrincipal("OFF", 20, True)
    for role in (Role.PRINCIPAL, Role.NONE):
        assert roles.handle(roles.RoleView(role, SEQ, ME, PARTNER), event) == []
    assert roles.handle(roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER), event) == [
        roles.AdoptSettings((("safety", Safety.OFF), ("timeout", 20), ("suspended", True)))]


# ------------------------------------------------------------------ the principal lost: a vote, as the old witness_link._maybe_request_failover


def test_a_mirror_that_lost_a_synchronized_principal_asks_the_witness_for_a_vote_when_automatic_failover_may():
    for role, connected, was_sync, safety, witness, suspended, redo_error, mirror_open in itertools.product(
            Role, (False, True), (False, True), Safety, (None, W), (False, True), (None, "redo failed"), (True, False)):
        view = roles.RoleView(role, SEQ, ME, PARTNER, partner_connected=connected, principal_was_synchronized=was_sync,
                              safety=safety, witness=witness, suspended=suspended, redo_error=redo_error, mirror_open=mirror_open)
        asks = (role is Role.MIRROR and not connected and was_sync and safety is Safety.FULL and witness is not None
                and not suspended and redo_error is None and mirror_open)
        assert roles.handle(view, roles.PingDue()) == ([roles.AskForVote()] if asks else []), view


# ------------------------------------------------------------------ the partner statements (core.role_statements)


def _statement_world():
    """Every statement event, and every manual failover outcome, against principals and mirrors with and without a witness."""
    outcomes = [rs.FailoverOutcome("shop", 20, hardened, witness, "TimeoutError()" if witness is rs.WitnessSwitch.SILENT else "",
                                   sent, answered)
                for hardened, witness, sent, answered in itertools.product(
                    (19, 20), (None, *rs.WitnessSwitch), (None, False, True), (None, False, True))
                if (witness is not None or sent is None) and (sent is not None or answered is None)
                and (sent is not False or not answered)]  # the fields fill in order; unsent is unanswered
    issued = [rs.PartnerOffIssued(), rs.SuspendIssued("a"), rs.ResumeIssued(), rs.FailoverIssued(), rs.ForceServiceIssued(),
              rs.PartnerOffHeard(Role.PRINCIPAL), rs.PartnerOffHeard(Role.MIRROR), rs.ResumeAskedByMirror(),
              rs.ForcedVoteFailed("shop", answered=True, reason="no"), rs.ForcedVoteFailed("shop", False, timeout=10, error="E"),
              *(rs.OffNoticeHeard(sender, seq) for sender in (PARTNER, OTHER) for seq in (SEQ - 1, SEQ, SEQ + 1)),
              *(rs.PartnerSet("shop", endpoint) for endpoint in (PARTNER, ME, "a:5022")),
              rs.WitnessSet(OTHER), rs.WitnessSet(None), rs.SafetySet(Safety.OFF), rs.SafetySet(Safety.FULL),
              *(rs.TimeoutSet(seconds) for seconds in (5, 10, 20)),
              *(rs.RedoQueueSet(mb, limit) for mb in (redo_queue.UNLIMITED, 64) for limit in (32 << 20, 1 << 30))]
    for role, witness, connected, suspended, status in itertools.product(
            Role, (None, OTHER), (False, True), (False, True), (DatabaseStatus.ONLINE, DatabaseStatus.RESTORING, None)):
        view = roles.RoleView(role, SEQ, ME, partner=PARTNER, witness=witness, witness_connected=connected, suspended=suspended,
                              status=status)
        for event in issued + outcomes:
            yield view, event


def test_a_statement_persists_before_it_tells_anyone_and_a_refusal_is_the_last_word():
    for view, event in _statement_world():
        actions = roles.handle(view, event)
        kinds = [type(a) for a in actions]
        for telling in (rs.TellPartner, rs.SendSettings, rs.StartPartnerLink, rs.StartWitnessLink):
            if rs.PersistConfig in kinds and telling in kinds:
                assert kinds.index(rs.PersistConfig) < kinds.index(telling), (view, event)
        # what asks before a change (the mirror's hello, the witness's longer TIMEOUT) comes before it is persisted
        for asking in (rs.ProbeMirror, rs.TellWitnessTimeout):
            if asking in kinds:
                assert kinds.index(asking) == 0 and rs.PersistConfig in kinds, (view, event)
        assert rs.RefuseStatement not in kinds[:-1], (view, event)  # nothing is carried out after a refusal
        if roles.StepDown in kinds:
            assert kinds[:kinds.index(roles.StepDown)] == [rs.StopServing], (view, event)  # no commit after the switch
        if (view.role, type(event)) not in rs.STATEMENT_TRANSITIONS:
            assert actions == [], (view, event)


def test_partner_off_on_the_principal_persists_standalone_then_tells_the_mirror_now_and_until_it_confirms():
    principal = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER, suspended=True)
    assert roles.handle(principal, rs.PartnerOffIssued()) == [
        rs.PersistConfig((("partner", None), ("role", Role.NONE), ("suspended", False), ("ended_by_off", PARTNER),
                          ("off_untold", PARTNER))),
        rs.TellPartner("partner_off", before_closing=True), rs.StopPartnerLink(), rs.StartOffNotice()]


def test_partner_off_on_the_mirror_persists_standalone_then_tells_the_principal_and_ends_its_link():
    mirror = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    # no off notice: the principal hears it now, or from the refusal of its next hello (ended_by_off)
    assert roles.handle(mirror, rs.PartnerOffIssued()) == [
        rs.PersistConfig((("partner", None), ("role", Role.NONE), ("suspended", False), ("ended_by_off", PARTNER))),
        rs.TellPartner("partner_off", before_closing=True), rs.StopInbound()]
    assert roles.handle(roles.RoleView(Role.NONE, SEQ, ME, PARTNER), rs.PartnerOffIssued()) == []


def test_suspend_and_resume_are_the_principals_and_a_mirror_asks_for_them():
    principal, mirror = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER), roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    assert roles.handle(principal, rs.SuspendIssued("a")) == [  # persisted, then the mirror hears the settings
        rs.PersistConfig((("suspended", True),)), rs.NoteSuspended(), rs.SendSettings(),
        rs.RecordEvent("SUSPEND", "SET PARTNER SUSPEND on this principal")]
    assert roles.handle(mirror, rs.SuspendIssued("a")) == [
        rs.TellPartner("suspend", reason="SET PARTNER SUSPEND on the mirror a"),
        rs.RecordEvent("SUSPEND", "SET PARTNER SUSPEND on this mirror: asked the principal")]
    assert roles.handle(principal, rs.ResumeIssued()) == [
        rs.ResumeSession(), rs.RecordEvent("RESUME", "SET PARTNER RESUME on this principal")]
    assert roles.handle(mirror, rs.ResumeIssued()) == [
        rs.TellPartner("resume"), rs.RecordEvent("RESUME", "SET PARTNER RESUME on this mirror: asked the principal")]


def test_manual_failover_hands_over_in_the_next_role_sequence_and_only_from_the_principal():
    assert roles.handle(roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER), rs.FailoverIssued()) == [rs.HandOver(SEQ + 1)]
    assert roles.handle(roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER), rs.FailoverIssued()) == []


ABANDONED = "manual failover abandoned: "
IN_DOUBT = ("a manual failover was sent and never confirmed: its outcome is unknown, so this node does not serve shop "
            "until the partner answers (it becomes the mirror if the failover happened, and serves again if not)")


def test_a_manual_failover_not_decided_changes_nothing_and_says_why_word_for_word():
    view = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER, witness=OTHER, timeout=10)
    outcome = rs.FailoverOutcome("shop", 20, 19)
    assert roles.handle(view, outcome) == [rs.RefuseStatement(
        ABANDONED + "the mirror hardened only up to LSN 19 of 20 within PARTNER TIMEOUT (10 s); nothing changed")]
    hardened = rs.FailoverOutcome("shop", 20, 20)
    assert roles.handle(view, hardened) == []  # the witness is asked next
    W = rs.WitnessSwitch
    for witness, error, text in (
            (W.GONE, "", ABANDONED + f"the witness {OTHER} went away; nothing changed"),
            (W.SILENT, "TimeoutError()", ABANDONED + "the witness did not answer (TimeoutError()); nothing changed"),
            (W.REFUSED, "", "manual failover refused by the witness (it holds a different role sequence)")):
        assert roles.handle(view, rs.FailoverOutcome("shop", 20, 20, witness, error)) == [rs.RefuseStatement(text)]
    for witness in (W.NOT_SET, W.RECORDED):
        assert roles.handle(view, rs.FailoverOutcome("shop", 20, 20, witness)) == []  # the mirror is sent the failover next
    unsent = rs.FailoverOutcome("shop", 20, 20, W.NOT_SET, sent=False, answered=False)
    assert roles.handle(view, unsent) == [rs.RefuseStatement(
        ABANDONED + "the connection to the mirror closed before the failover was sent; nothing changed. "
        "Retry once it is SYNCHRONIZED again")]


def test_a_manual_failover_sent_and_unanswered_without_the_witness_deciding_stops_serving_in_doubt():
    view = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    unanswered = rs.FailoverOutcome("shop", 20, 20, rs.WitnessSwitch.NOT_SET, sent=True, answered=False)
    assert roles.handle(view, unanswered) == [rs.StopServingInDoubt(IN_DOUBT), rs.RefuseStatement(IN_DOUBT)]


def test_a_manual_failover_decided_by_the_witness_or_the_mirror_stops_serving_then_steps_down():
    view = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    switched = [rs.StopServing(), roles.StepDown(SEQ + 1, f"manual failover to {PARTNER}")]
    W = rs.WitnessSwitch
    for witness, sent, answered in ((W.NOT_SET, True, True), (W.RECORDED, True, True), (W.RECORDED, True, False),
                                    (W.RECORDED, False, False)):  # recorded: the mirror takes over once its witness says
        assert roles.handle(view, rs.FailoverOutcome("shop", 20, 20, witness, sent=sent, answered=answered)) == switched


def test_forced_service_goes_through_the_witness_where_one_is_set():
    mirror = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    assert roles.handle(mirror, rs.ForceServiceIssued()) == [
        roles.Promote(SEQ + 1, forced=True, why="FORCE_SERVICE_ALLOW_DATA_LOSS")]
    witnessed = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER, witness=OTHER, witness_connected=True)
    assert roles.handle(witnessed, rs.ForceServiceIssued()) == [roles.AskForVote(forced=True)]
    unreachable = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER, witness=OTHER, witness_connected=False)
    assert roles.handle(unreachable, rs.ForceServiceIssued()) == [rs.RefuseStatement(
        "a witness is set and this mirror cannot reach it; forced service needs mirror and witness connected")]
    assert roles.handle(roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER), rs.ForceServiceIssued()) == []


def test_the_partners_off_ends_the_session_here_persisted_first_and_only_as_the_partner_of_the_role_that_said_it():
    principal, mirror = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER), roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    assert roles.handle(principal, rs.PartnerOffHeard(Role.MIRROR)) == [
        rs.PersistConfig((("partner", None), ("role", Role.NONE), ("suspended", False))),
        rs.SessionRemovedByPartner(Role.PRINCIPAL, PARTNER)]
    assert roles.handle(mirror, rs.PartnerOffHeard(Role.PRINCIPAL)) == [  # a SUSPENDED mirror is not SUSPENDED after
        rs.PersistConfig((("partner", None), ("role", Role.NONE), ("suspended", False))),
        rs.SessionRemovedByPartner(Role.MIRROR, PARTNER)]
    # heard on a link of the role this copy no longer has (a promotion or a step down ended it): nothing changes
    assert roles.handle(principal, rs.PartnerOffHeard(Role.PRINCIPAL)) == []
    assert roles.handle(mirror, rs.PartnerOffHeard(Role.MIRROR)) == []


def test_an_off_notice_ends_the_mirrors_session_with_that_principal_in_its_role_sequence_or_a_newer_one():
    mirror = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER)
    ended = [rs.StopInbound(), rs.PersistConfig((("partner", None), ("role", Role.NONE), ("suspended", False))),
             rs.SessionRemovedByPartner(Role.MIRROR, PARTNER)]
    for sender in SPELLINGS[PARTNER]:
        assert roles.handle(mirror, rs.OffNoticeHeard(sender, SEQ)) == ended
        assert roles.handle(mirror, rs.OffNoticeHeard(sender, SEQ + 1)) == ended
    assert roles.handle(mirror, rs.OffNoticeHeard(PARTNER, SEQ - 1)) == []  # an older session's notice
    assert roles.handle(mirror, rs.OffNoticeHeard(OTHER, SEQ)) == []  # not its principal
    assert roles.handle(roles.RoleView(Role.MIRROR, SEQ, ME, None), rs.OffNoticeHeard(PARTNER, SEQ)) == []
    assert roles.handle(roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER), rs.OffNoticeHeard(PARTNER, SEQ)) == []


def test_the_mirrors_resume_is_carried_out_by_a_principal_still_suspended():
    assert roles.handle(roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER, suspended=True), rs.ResumeAskedByMirror()) == [
        rs.ResumeSession()]
    assert roles.handle(roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER), rs.ResumeAskedByMirror()) == []
    assert roles.handle(roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER, suspended=True), rs.ResumeAskedByMirror()) == []


def test_a_forced_vote_not_granted_is_refused_with_the_witness_reason_or_in_doubt_saying_what_to_check():
    mirror = roles.RoleView(Role.MIRROR, SEQ, ME, PARTNER, witness=OTHER, witness_connected=True)
    assert roles.handle(mirror, rs.ForcedVoteFailed("shop", answered=True, reason="the principal is connected")) == [
        rs.RefuseStatement("the witness refused forced service: the principal is connected")]
    assert roles.handle(mirror, rs.ForcedVoteFailed("shop", answered=False, timeout=2.5, error="TimeoutError")) == [
        rs.StatementInDoubt("forced service on shop: the witness did not answer the vote within 2.5 s (TimeoutError); "
                            "whether it granted it is unknown. If its record names this node, this node becomes the principal "
                            "as soon as it hears so: check sys.database_mirroring (role) before trying again")]


def test_set_partner_creates_the_mirrors_copy_where_there_is_none_and_makes_a_restoring_copy_the_mirror():
    absent, restoring = roles.RoleView(Role.NONE, 0, ME, status=None), roles.RoleView(Role.NONE, SEQ, ME, status=DatabaseStatus.RESTORING)
    assert roles.handle(absent, rs.PartnerSet("shop", PARTNER)) == [rs.CreateMirrorCopy("shop", PARTNER)]
    assert roles.handle(restoring, rs.PartnerSet("shop", PARTNER)) == [
        rs.PersistConfig((("role", Role.MIRROR), ("partner", PARTNER), ("ended_by_off", None), ("off_untold", None)))]


def test_set_partner_on_an_online_database_probes_the_mirror_then_persists_the_principal_before_its_link_starts():
    for role_sequence, first in ((0, 1), (SEQ, SEQ)):  # the session's first role sequence is 1
        online = roles.RoleView(Role.NONE, role_sequence, ME, ended_by_off=PARTNER)
        assert roles.handle(online, rs.PartnerSet("shop", PARTNER)) == [
            rs.ProbeMirror(PARTNER, first), rs.StopOffNotice(),
            rs.PersistConfig((("role", Role.PRINCIPAL), ("role_sequence", first), ("partner", PARTNER), ("ended_by_off", None),
                              ("off_untold", None))),
            rs.StartPartnerLink()]


def test_set_partner_naming_this_nodes_own_endpoint_is_refused_however_spelled_and_wherever_issued():
    for status in (DatabaseStatus.ONLINE, DatabaseStatus.RESTORING, None):
        for spelled in (ME, "a:5022"):
            assert roles.handle(roles.RoleView(Role.NONE, 0, ME, status=status), rs.PartnerSet("shop", spelled)) == [
                rs.RefuseStatement(f"{spelled} is this node's own endpoint; name the other partner's endpoint")]


def test_the_probe_of_the_mirror_is_refused_with_the_statements_words():
    probe = rs.ProbeMirror(PARTNER, 1)
    assert probe.unreachable("ConnectionRefusedError(111)") == (
        "cannot reach the mirror's endpoint tcp://b:5022: ConnectionRefusedError(111); start it, or check the address")
    assert probe.unanswered("TimeoutError()") == "the mirror's endpoint tcp://b:5022 did not answer: TimeoutError()"
    assert probe.refused("database shop on b is not a mirror") == "the mirror refused: database shop on b is not a mirror"


def test_set_witness_stops_the_old_link_persists_tells_the_mirror_then_starts_the_new_one():
    principal = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER, witness=OTHER)
    assert roles.handle(principal, rs.WitnessSet("tcp://d:5022")) == [
        rs.StopWitnessLink(), rs.PersistConfig((("witness", "tcp://d:5022"),)), rs.SendSettings(), rs.StartWitnessLink()]
    assert roles.handle(principal, rs.WitnessSet(None)) == [
        rs.StopWitnessLink(), rs.PersistConfig((("witness", None),)), rs.SendSettings()]


def test_safety_is_persisted_then_the_mirror_told():
    principal = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    assert roles.handle(principal, rs.SafetySet(Safety.OFF)) == [rs.PersistConfig((("safety", Safety.OFF),)), rs.SendSettings()]


def test_a_longer_timeout_is_accepted_by_the_witness_before_it_is_persisted_and_a_shorter_one_is_not_asked():
    with_witness = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER, witness=OTHER, timeout=10)
    assert roles.handle(with_witness, rs.TimeoutSet(20)) == [
        rs.TellWitnessTimeout(20, OTHER), rs.PersistConfig((("timeout", 20),)), rs.SendSettings()]
    for seconds in (5, 10):
        assert roles.handle(with_witness, rs.TimeoutSet(seconds)) == [rs.PersistConfig((("timeout", seconds),)), rs.SendSettings()]
    no_witness = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER, timeout=10)
    assert roles.handle(no_witness, rs.TimeoutSet(20)) == [rs.PersistConfig((("timeout", 20),)), rs.SendSettings()]
    ask = rs.TellWitnessTimeout(20, OTHER)
    assert ask.unheard() == ("PARTNER TIMEOUT can be raised only while the witness tcp://c:5022 hears it first (it must wait "
                             "as long before it votes); nothing changed. Try again when witness_state is CONNECTED")
    assert ask.not_accepted(7) == "the witness did not accept the new TIMEOUT (it holds role sequence 7); nothing changed"


def test_a_redo_queue_limit_the_log_would_reach_first_is_refused_else_persisted_then_the_mirror_told():
    principal = roles.RoleView(Role.PRINCIPAL, SEQ, ME, PARTNER)
    assert roles.handle(principal, rs.RedoQueueSet(64, 32 << 20)) == [
        rs.RefuseStatement("REDO_QUEUE 64 MB is not below the log size limit (32 MB, --log-size-limit-mb): the log would be "
                           "full before the limit held anything back. Choose a smaller limit, or UNLIMITED")]
    assert roles.handle(principal, rs.RedoQueueSet(64, 1 << 30)) == [rs.PersistConfig((("redo_queue_mb", 64),)), rs.SendSettings()]
    assert roles.handle(principal, rs.RedoQueueSet(redo_queue.UNLIMITED, 1)) == [
        rs.PersistConfig((("redo_queue_mb", redo_queue.UNLIMITED),)), rs.SendSettings()]


def test_the_sessions_settings_are_the_principals_only():
    for role in (Role.MIRROR, Role.NONE):
        view = roles.RoleView(role, SEQ, ME, PARTNER, witness=OTHER)
        for event in (rs.WitnessSet(None), rs.SafetySet(Safety.OFF), rs.TimeoutSet(20), rs.RedoQueueSet(64, 1 << 30)):
            assert roles.handle(view, event) == [], (role, event)
