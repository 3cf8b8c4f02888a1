"""mirrord.engine.page_repair on a real MirrorDatabase and redo thread: a repair waiting in redo when redo stops is
asked again for the next one, an answer for a redo thread that is gone asks again, and suspect_pages.json
brings a stopped node's suspect pages back (the frames go to a writer that keeps them)."""

from __future__ import annotations

import asyncio
import time

from mirrord.engine import page_repair
from mirrord.core import page_repair as pr
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import DatabaseStatus, Role
from mirrord.engine.database import Database
from mirrord.engine.mirror import MirrorDatabase
from mirrord.net import framing
from mirrord.storage.log import DurableLog, LogRecord
from mirrord.storage.pagestore import PageStore

PS = 4096


def page(pgno: int, lsn: int) -> bytes:
    if pgno == 1:
        return b"SQLite format 3\x00" + PS.to_bytes(2, "big") + bytes([lsn]) * (PS - 18)
    return bytes([pgno * 16 + lsn]) * PS


def records() -> list[LogRecord]:
    return [LogRecord(1, 1, 4, PS, tuple((p, page(p, 1)) for p in range(1, 5))),
            LogRecord(2, 1, 4, PS, ((2, page(2, 2)),)), LogRecord(3, 1, 4, PS, ((4, page(4, 3)),))]


class Frames:
    """The link's writer: keeps every frame written."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    async def messages(self) -> list[dict]:
        reader = asyncio.StreamReader()
        for frame in self.frames:
            reader.feed_data(frame)
        self.frames.clear()
        reader.feed_eof()
        out = []
        while not reader.at_eof():
            out.append(await framing.read_message(reader))
        return out


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def new_host(tmp_path, log: DurableLog) -> Database:
    session = Session(SessionConfig("shop", role=Role.MIRROR, status=DatabaseStatus.RESTORING, partner="tcp://a:1"))
    host = Database("shop", tmp_path, session, log)
    host.repair_history = pr.RepairHistory()
    host.mirror = MirrorDatabase(tmp_path, session, log)
    host.mirror.start()
    host.partner_writer = Frames()
    return host


def damage(tmp_path, pgno: int) -> None:
    with open(tmp_path / "db.sqlite", "r+b") as f:
        f.seek((pgno - 1) * PS)
        f.write(b"\xee" * PS)


def status(host: Database, pgno: int) -> int | None:
    return host.repair_history.status("shop", pgno)


async def test_a_repair_waiting_in_a_redo_that_stops_is_asked_again_and_done_by_the_next(tmp_path):
    log = DurableLog(tmp_path / "log")
    log.append(records())
    PageStore(tmp_path / "db.sqlite").close()
    host = new_host(tmp_path, log)
    try:
        assert host.mirror.redo_thread.wait_for(3, 10)
        damage(tmp_path, 3)
        assert page_repair.found(host, [3], pr.ERROR_CHECKSUM, "a test") == [3]
        assert (tmp_path / page_repair.SUSPECT_FILE).exists()
        [request] = await host.partner_writer.messages()
        assert request["t"] == "page_request" and request["pages"] == [3]
        # the principal's image is as of LSN 9: this redo (at 3) never gets there before it stops
        page_repair.answered(host, {"t": "page_answer", "rid": request["rid"], "lsn": 9, "page_size": PS,
                                    "pages": [[3, page(3, 1)]], "error": ""})
        assert status(host, 3) == pr.QUEUED_FOR_REPAIR and 3 in host.repair_queued
        host.mirror.stop()  # what a reseed or rewind does (install_snapshot), on the same copy
        host.mirror.start()
        await until(lambda: host.partner_writer.frames, "the page asked for again")
        [again] = await host.partner_writer.messages()
        assert again["t"] == "page_request" and again["pages"] == [3] and status(host, 3) == pr.QUEUED_FOR_DELIVERY
        # an answer the old redo thread's request got late is not used: the page is asked again, once more
        host.mirror.stop()
        host.mirror.start()
        page_repair.answered(host, {"t": "page_answer", "rid": again["rid"], "lsn": 3, "page_size": PS,
                                    "pages": [[3, page(3, 1)]], "error": ""})
        [third] = await host.partner_writer.messages()
        assert third["pages"] == [3] and status(host, 3) == pr.QUEUED_FOR_DELIVERY
        page_repair.answered(host, {"t": "page_answer", "rid": third["rid"], "lsn": 3, "page_size": PS,
                                    "pages": [[3, page(3, 1)]], "error": ""})
        await until(lambda: status(host, 3) == pr.REPAIRED, "the page repaired")
        assert host.mirror.damaged_pages(1, 10)[0] == [] and not host.repair_pages
        assert not (tmp_path / page_repair.SUSPECT_FILE).exists()
    finally:
        host.mirror.stop()
        log.close()


async def test_a_stopped_nodes_suspect_pages_are_asked_for_when_its_principal_connects(tmp_path):
    log = DurableLog(tmp_path / "log")
    log.append(records())
    PageStore(tmp_path / "db.sqlite").close()
    host = new_host(tmp_path, log)
    try:
        assert host.mirror.redo_thread.wait_for(3, 10)
        damage(tmp_path, 2)
        damage(tmp_path, 4)
        host.partner_writer = None  # no principal connected: found, not asked yet
        assert page_repair.found(host, [2, 4], pr.ERROR_CHECKSUM, "a test") == [2, 4]
    finally:
        host.mirror.stop()  # the node stops
    (tmp_path / page_repair.SUSPECT_FILE).read_text()  # kept
    host = new_host(tmp_path, log)  # the node starts again: nothing found yet
    try:
        assert host.repair_pages == {}
        page_repair.send_requests(host)  # the principal connects
        [request] = await host.partner_writer.messages()
        assert request["pages"] == [2, 4] and host.repair_pages == {2: pr.ERROR_CHECKSUM, 4: pr.ERROR_CHECKSUM}
        page_repair.answered(host, {"t": "page_answer", "rid": request["rid"], "lsn": 3, "page_size": PS,
                                    "pages": [[2, page(2, 2)], [4, page(4, 3)]], "error": ""})
        await until(lambda: not host.repair_pages, "both pages repaired")
        assert host.mirror.damaged_pages(1, 10)[0] == []
        assert not (tmp_path / page_repair.SUSPECT_FILE).exists()
    finally:
        host.mirror.stop()
        log.close()


async def test_a_seed_voids_what_a_stopped_node_left(tmp_path):
    log = DurableLog(tmp_path / "log")
    log.append(records())
    PageStore(tmp_path / "db.sqlite").close()
    (tmp_path / page_repair.SUSPECT_FILE).write_text('{"pages": {"2": 2, "x": 2, "7": 99}}')
    host = new_host(tmp_path, log)
    try:
        page_repair.copy_replaced(host, whole=True)
        assert not (tmp_path / page_repair.SUSPECT_FILE).exists() and host.repair_pages == {}
        page_repair.send_requests(host)
        assert await host.partner_writer.messages() == []
    finally:
        host.mirror.stop()
        log.close()
