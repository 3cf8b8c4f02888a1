"""The client port's loop over an in-memory connection: statements interrupted when their client goes away."""

from __future__ import annotations

import asyncio

import pytest

from mirrord.core import messages
from mirrord.net import framing
from mirrord.net.client_port import ClientLimits, ClientPort, ClientReader
from mirrord.storage.statement_guard import CURRENT
from mirrord_testing.fuzz import MemoryWriter


class _Session:
    """Answers each query; a query for "wait" runs until its guard is cancelled (the client went away)."""

    statement_timeout_ms = None

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.guards = []

    async def answer(self, msg: dict) -> dict:
        guard = CURRENT.get()
        self.guards.append(guard)
        if msg["sql"] == "wait":
            self.started.set()
            while not guard.cancelled:
                await asyncio.sleep(0)  # a statement that runs on, as SQLite's progress handler would see it
        return messages.result(msg["id"], [], [], 0)

    def holds_transaction(self) -> bool:
        return False

    async def abort_idle_transaction(self, seconds: float) -> None:
        return None


def _frames(writer: MemoryWriter) -> list[dict]:
    decoder = framing.FrameDecoder()
    decoder.feed(bytes(writer.data))
    out = []
    while (frame := decoder.next_message()) is not None:
        out.append(frame)
    return out


def _query(i: int, sql: str) -> bytes:
    return framing.encode_frame(messages.query(i, sql, "db", None))


def test_the_reader_says_gone_only_once_nothing_is_left_to_read():
    async def go():
        calls = []
        reader = ClientReader()
        reader.on_gone = lambda: calls.append("gone")
        reader.feed_data(b"x")
        reader.feed_eof()
        assert calls == [] and not reader.gone()  # the byte is the start of the next frame
        assert await reader.read(1) == b"x"
        assert reader.gone()
        reset = ClientReader()
        reset.on_gone = lambda: calls.append("reset")
        reset.set_exception(ConnectionResetError("reset by peer"))
        assert calls == ["reset"] and reset.gone()
        quiet = ClientReader()
        quiet.feed_eof()
        assert quiet.gone() and calls == ["reset"]  # nobody listening: nothing called

    asyncio.run(go())


def test_a_statement_is_interrupted_when_its_client_goes_away():
    async def go():
        reader, writer, session = ClientReader(), MemoryWriter(), _Session()
        reader.feed_data(_query(1, "SELECT 1") + _query(2, "wait"))
        serving = asyncio.create_task(ClientPort(ClientLimits()).serve(reader, writer, session))
        await asyncio.wait_for(session.started.wait(), 5)
        reader.feed_eof()
        await asyncio.wait_for(serving, 5)
        assert [f["id"] for f in _frames(writer)] == [1]  # the first answered; the second interrupted, unanswered
        assert [g.cancelled for g in session.guards] == [False, True]

    asyncio.run(go())


def test_a_client_that_sent_its_next_frame_and_closed_is_not_gone_until_that_frame_is_read():
    async def go():
        reader, writer, session = ClientReader(), MemoryWriter(), _Session()
        reader.feed_data(_query(1, "SELECT 1") + _query(2, "wait"))
        reader.feed_eof()
        await asyncio.wait_for(ClientPort(ClientLimits()).serve(reader, writer, session), 5)
        # the first ran to its answer (the second frame was still unread); the last was interrupted
        # at once, since nobody was left to hear it (as before: the watch read saw EOF)
        assert [f["id"] for f in _frames(writer)] == [1]
        assert [g.cancelled for g in session.guards] == [False, True]

    asyncio.run(go())


def test_a_statement_whose_client_left_before_it_started_is_interrupted_at_once():
    async def go():
        reader, writer, session = ClientReader(), MemoryWriter(), _Session()
        reader.feed_data(_query(1, "wait"))
        reader.feed_eof()
        await asyncio.wait_for(ClientPort(ClientLimits()).serve(reader, writer, session), 5)
        assert _frames(writer) == [] and [g.cancelled for g in session.guards] == [True]

    asyncio.run(go())


def test_an_idle_client_is_cut_off():
    async def go():
        reader, writer = ClientReader(), MemoryWriter()
        await asyncio.wait_for(ClientPort(ClientLimits(idle_timeout=0.05)).serve(reader, writer, _Session()), 5)
        return writer

    asyncio.run(go())  # returns: the connection ended by itself (the caller closes it)


def test_the_port_needs_a_client_reader():
    async def go():
        await ClientPort(ClientLimits()).serve(asyncio.StreamReader(), MemoryWriter(), _Session())

    with pytest.raises(TypeError, match="ClientReader"):
        asyncio.run(go())
