"""The principal's ack reader wakes the witness link only when the mirror becomes caught up.

Woken on every ack (as it was), the witness link sent a w_ping after each one: with a witness, every
commit batch cost a round trip to the witness besides the one to the mirror. The witness needs to hear
only that the mirror is synchronized now; its pings keep their own interval.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import Role, Safety
from mirrord.engine import principal_session
from mirrord.net import framing


class CountingEvent(asyncio.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


async def _acks_then_eof(hardened: list[int]) -> SimpleNamespace:
    session = Session(SessionConfig("shop", role=Role.PRINCIPAL, partner="tcp://b:5022", witness="tcp://w:5022",
                                    safety=Safety.FULL, role_sequence=3, timeout=10))
    session.note_log_end(10)
    session.note_partner_connected(4)  # behind: not caught up
    principal = SimpleNamespace(update_visible=lambda: None, truncate_log=lambda: None)
    database = SimpleNamespace(session=session, principal=principal, note_state=lambda: None, quorum_changed=CountingEvent())
    reader = asyncio.StreamReader()
    for lsn in hardened:
        reader.feed_data(framing.encode_frame({"t": "ack", "hardened_lsn": lsn, "redo_lsn": lsn}))
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await principal_session._read_acks(SimpleNamespace(), database, reader, {})
    return database


def test_acks_wake_the_witness_link_once_when_the_mirror_catches_up_and_not_for_each_ack_after():
    database = asyncio.run(_acks_then_eof([6, 10, 10, 10]))
    assert database.session.caught_up
    assert database.quorum_changed.sets == 1


def test_acks_that_leave_the_mirror_behind_do_not_wake_the_witness_link():
    database = asyncio.run(_acks_then_eof([5, 6, 7]))
    assert not database.session.caught_up and database.quorum_changed.sets == 0
