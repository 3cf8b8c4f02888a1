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


def test_the_port_takes_over_what_the_login_reader_holds_unread():
    async def go():
        reader = ClientReader()
        reader.feed_data(_query(1, "SELECT 1") + _query(2, "SELECT 2")[:5])  # a whole frame and the start of one
        writer, session = MemoryWriter(), _Session()
        serving = asyncio.create_task(ClientPort(ClientLimits()).serve(reader, writer, session))
        while len(_frames(writer)) < 1:
            await asyncio.sleep(0)
        assert reader.take_buffered() == b""  # all of it went to the port's protocol
        protocol = writer.transport.protocol
        protocol.data_received(_query(2, "SELECT 2")[5:])
        while len(_frames(writer)) < 2:
            await asyncio.sleep(0)
        protocol.eof_received()
        await asyncio.wait_for(serving, 5)
        assert [f["id"] for f in _frames(writer)] == [1, 2]

    asyncio.run(go())


def test_a_statement_is_interrupted_when_its_client_goes_away():
    async def go():
        reader, writer, session = ClientReader(), MemoryWriter(), _Session()
        reader.feed_data(_query(1, "SELECT 1") + _query(2, "wait"))
        serving = asyncio.create_task(ClientPort(ClientLimits()).serve(reader, writer, session))
        await asyncio.wait_for(session.started.wait(), 5)
        writer.transport.protocol.eof_received()
        await asyncio.wait_for(serving, 5)
        assert [f["id"] for f in _frames(writer)] == [1]  # the first answered; the second interrupted, unanswered
        assert [g.cancelled for g in session.guards] == [False, True]

    asyncio.run(go())


def test_a_statement_is_interrupted_when_its_connection_is_reset():
    async def go():
        reader, writer, session = ClientReader(), MemoryWriter(), _Session()
        reader.feed_data(_query(1, "wait"))
        serving = asyncio.create_task(ClientPort(ClientLimits()).serve(reader, writer, session))
        await asyncio.wait_for(session.started.wait(), 5)
        writer.transport.protocol.connection_lost(ConnectionResetError("reset by peer"))
        await asyncio.wait_for(serving, 5)
        assert _frames(writer) == [] and [g.cancelled for g in session.guards] == [True]

    asyncio.run(go())


def test_a_statement_is_not_interrupted_while_the_start_of_the_next_frame_is_unread():
    async def go():
        reader, writer, session = ClientReader(), MemoryWriter(), _Session()
        reader.feed_data(_query(1, "wait"))
        serving = asyncio.create_task(ClientPort(ClientLimits()).serve(reader, writer, session))
        await asyncio.wait_for(session.started.wait(), 5)
        protocol = writer.transport.protocol
        protocol.data_received(_query(2, "SELECT 2")[:3])
        protocol.eof_received()  # a half-close after the start of the next frame: the client is still there
        assert not session.guards[0].cancelled
        session.guards[0].cancel()  # let the statement end
        await asyncio.wait_for(serving, 5)

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


def test_a_frame_that_does_not_arrive_whole_within_the_deadline_is_cut_off():
    async def go():
        reader, writer = ClientReader(), MemoryWriter()
        reader.feed_data(_query(1, "SELECT 1")[:4])  # a header begun, never finished
        limits = ClientLimits(frame_deadline=0.05, idle_timeout=600)
        await asyncio.wait_for(ClientPort(limits).serve(reader, writer, _Session()), 5)
        assert _frames(writer) == []

    asyncio.run(go())


def test_an_oversized_header_is_refused_before_its_body_arrives():
    async def go():
        reader, writer = ClientReader(), MemoryWriter()
        reader.feed_data(framing.HEADER.pack(1 << 20, 0, 0))
        await asyncio.wait_for(ClientPort(ClientLimits(max_frame=64 << 10)).serve(reader, writer, _Session()), 5)
        [error] = _frames(writer)
        assert error["t"] == "error" and error["code"] == "protocol"

    asyncio.run(go())


def test_a_client_sending_far_ahead_of_its_answers_is_paused_until_its_statement_ends():
    async def go():
        reader, writer, session = ClientReader(), MemoryWriter(), _Session()
        reader.feed_data(_query(1, "wait"))
        serving = asyncio.create_task(ClientPort(ClientLimits()).serve(reader, writer, session))
        await asyncio.wait_for(session.started.wait(), 5)
        protocol = writer.transport.protocol
        ahead = b"".join(_query(i, "SELECT 1") for i in range(2, 3000))
        protocol.data_received(ahead)
        assert not writer.transport.reading
        session.guards[0].cancel()  # the statement ends (interrupted here, as a timeout would)
        await asyncio.wait_for(serving, 5)
        assert writer.transport.reading

    asyncio.run(go())


def test_the_port_needs_a_client_reader():
    async def go():
        await ClientPort(ClientLimits()).serve(asyncio.StreamReader(), MemoryWriter(), _Session())

    with pytest.raises(TypeError, match="ClientReader"):
        asyncio.run(go())
