"""The redo queue limit's pure decisions (mirrord.core.redo_queue): when writers wait, what is refused, what is shown."""

from __future__ import annotations

import pytest

from mirrord.core import redo_queue as rq
from mirrord.core.rules import refusal
from mirrord.core import statements as st
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import MirroringState, Role, Safety

MB = 1 << 20
S = MirroringState

# limit (MB, 0 UNLIMITED), redo queue (bytes), state -> writers wait
WAIT_TABLE = [
    # no limit: never, however long the queue
    (0, 0, S.SYNCHRONIZED, False),
    (0, 10**12, S.SYNCHRONIZED, False),
    (0, 10**12, S.SYNCHRONIZING, False),
    # a limit, the mirror redoing: strictly over it waits, at or under goes
    (10, 0, S.SYNCHRONIZED, False),
    (10, 10 * MB - 1, S.SYNCHRONIZED, False),
    (10, 10 * MB, S.SYNCHRONIZED, False),
    (10, 10 * MB + 1, S.SYNCHRONIZED, True),
    (10, 10 * MB + 1, S.SYNCHRONIZING, True),
    (1, 2 * MB, S.SYNCHRONIZING, True),
    (rq.MAX_REDO_QUEUE_MB, rq.MAX_REDO_QUEUE_MB * MB + 1, S.SYNCHRONIZED, True),
    # the mirror is not redoing what it is sent: the principal runs as it would without a limit
    (10, 100 * MB, S.DISCONNECTED, False),
    (10, 100 * MB, S.SUSPENDED, False),
    (10, 100 * MB, S.NONE, False),
    (10, 100 * MB, S.PENDING_FAILOVER, False),
]


@pytest.mark.parametrize("limit,queue,state,wait", WAIT_TABLE)
def test_must_wait(limit: int, queue: int, state: MirroringState, wait: bool) -> None:
    assert rq.must_wait(limit, queue, state) is wait


def test_every_state_is_decided() -> None:
    """Only the two states in which the mirror redoes what it is sent can hold writers."""
    waiting = {state for state in MirroringState if rq.must_wait(1, 2 * MB, state)}
    assert waiting == {S.SYNCHRONIZING, S.SYNCHRONIZED}


@pytest.mark.parametrize("safety", list(Safety))
def test_safety_does_not_matter(safety: Safety) -> None:
    """SAFETY OFF waits too: the limit bounds failover time (forced service redoes the queue as well)."""
    session = Session(SessionConfig("shop", role=Role.PRINCIPAL, partner="tcp://b:5022", safety=safety, redo_queue_mb=1),
                      partner_connected=True, caught_up=True, redo_queue_bytes=2 * MB)
    assert rq.must_wait(session.config.redo_queue_mb, session.redo_queue_bytes, session.state)


@pytest.mark.parametrize("mb,ok", [(0, False), (1, True), (100, True), (rq.MAX_REDO_QUEUE_MB, True),
                                   (rq.MAX_REDO_QUEUE_MB + 1, False), (-1, False)])
def test_limit_refusal(mb: int, ok: bool) -> None:
    why = rq.limit_refusal(mb)
    assert (why is None) is ok
    if not ok:
        assert "UNLIMITED" in why and f"found {mb} MB" in why


def test_limit_must_be_below_the_log_size_limit() -> None:
    assert rq.limit_over_log_refusal(1023, 1024 * MB) is None
    why = rq.limit_over_log_refusal(1024, 1024 * MB)
    assert "not below the log size limit (1024 MB" in why and "--log-size-limit-mb" in why


def test_shown_limit_follows_the_reference() -> None:
    """sys.database_mirroring: mirroring_redo_queue NULL and type UNLIMITED, or the MB and type MB."""
    assert rq.shown_limit(0) == (None, "UNLIMITED")
    assert rq.shown_limit(64) == (64, "MB")


def test_held_message_says_what_happened_and_what_to_do() -> None:
    text = rq.held_message("shop", 2000, 12 * MB, 8)
    assert "12.0 MB" in text and "REDO_QUEUE 8 MB" in text and "2000 ms" in text
    assert "not run" in text and "SET PARTNER REDO_QUEUE UNLIMITED" in text and "LOCK_TIMEOUT" in text


def test_config_persists_the_limit() -> None:
    cfg = SessionConfig("shop", redo_queue_mb=32)
    assert SessionConfig.from_dict(cfg.to_dict()) == cfg
    assert SessionConfig.from_dict({"db": "shop"}).redo_queue_mb == rq.UNLIMITED  # written before the setting existed


def test_statement_only_on_the_principal() -> None:
    mirror = Session(SessionConfig("shop", role=Role.MIRROR, partner="tcp://a:5022"))
    assert "must be issued on the principal" in refusal(mirror, st.SetRedoQueue("shop", 5))
    alone = Session(SessionConfig("shop", role=Role.PRINCIPAL))
    assert "needs a mirroring session" in refusal(alone, st.SetRedoQueue("shop", 5))


def test_a_lost_partner_forgets_the_reported_queue() -> None:
    session = Session(SessionConfig("shop", role=Role.PRINCIPAL, partner="tcp://b:5022", redo_queue_mb=1),
                      partner_connected=True, redo_queue_bytes=5 * MB)
    session.note_partner_lost()
    assert session.redo_queue_bytes == 0 and session.state is S.DISCONNECTED
