"""PARTNER REDO_QUEUE on one principal in-process (no network): where writes wait, what they hear, what goes on.

The mirror's redo queue is what the session says the mirror reported (`Session.redo_queue_bytes`);
the tests set it, and tell the principal as the partner link does (`redo_queue_changed`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mirrord.core.quorum import AckRule
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import NotServing, RedoQueueFull, Role, Safety
from mirrord.engine.principal import PrincipalDatabase
from mirrord.storage.log import DurableLog

MB = 1 << 20


class Owner:
    """What node.ClientOwner gives a principal: a session id and a lock timeout."""

    def __init__(self, spid: int, lock_timeout_ms: int | None = None) -> None:
        self.spid = spid
        self.lock_timeout_ms = lock_timeout_ms


async def _open(tmp_path: Path, **config) -> PrincipalDatabase:
    cfg = SessionConfig(db="shop", role=Role.PRINCIPAL, partner="tcp://127.0.0.2:5022", redo_queue_mb=1, **config)
    session = Session(cfg, partner_connected=True, caught_up=True)  # SYNCHRONIZED
    principal = PrincipalDatabase(tmp_path, session, DurableLog(tmp_path / "log", 1 << 20), log_size_limit=1 << 30,
                                  ack_rule=lambda: AckRule.LOCAL, quorum_refusal=lambda: None, lock_timeout_ms=5000)
    await principal.open()
    await principal.execute(object(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", None)
    return principal


@pytest.fixture
async def p(tmp_path: Path):
    principal = await _open(tmp_path)
    yield principal
    await principal.close()


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def _report(p: PrincipalDatabase, queue: int) -> None:
    """The mirror reports its redo queue (an ack, a pong or a redo_progress frame)."""
    p.session.redo_queue_bytes = queue
    p.redo_queue_changed()


async def _ids(p: PrincipalDatabase) -> set[int]:
    return {r[0] for r in (await p.execute(object(), "SELECT id FROM t", None)).rows}


@pytest.mark.parametrize("in_transaction", [False, True])  # the writer task's batch waits / a first write waits before the lock
async def test_a_write_waits_while_the_queue_is_over_the_limit_and_goes_when_it_drains(p, in_transaction):
    owner = Owner(51)
    if in_transaction:
        await p.execute(owner, "BEGIN", None)  # holds nothing yet: its first write takes the write lock
    _report(p, 2 * MB)
    write = asyncio.ensure_future(p.execute(owner, "INSERT INTO t VALUES (1, 'held')", None))
    await _until(lambda: p.redo_queue_holding)
    assert not write.done() and p.redo_queue_holds == 1 and not p.write_lock.locked()
    assert await _ids(p) == set()  # reads go on while writes are held, and it has not run
    _report(p, MB)  # at the limit: writes go
    result = await asyncio.wait_for(write, 5)
    if in_transaction:
        result = await p.execute(owner, "COMMIT", None)
    assert result.lsn is not None and not p.redo_queue_holding and p.redo_queue_held_s > 0
    assert await _ids(p) == {1}


async def test_a_held_write_gives_up_at_its_lock_timeout_having_changed_nothing(p):
    _report(p, 2 * MB)
    for spid, sql in ((51, "INSERT INTO t VALUES (1, 'queued')"), (52, "BEGIN IMMEDIATE"), (53, "SAVEPOINT s")):
        with pytest.raises(RedoQueueFull) as info:
            await p.execute(Owner(spid, lock_timeout_ms=100), sql, None)
        assert info.value.code == "redo_queue_full" and "REDO_QUEUE 1 MB" in info.value.message
    assert p.redo_queue_timeouts == 3 and not p.write_lock.locked()
    with pytest.raises(RedoQueueFull):  # LOCK_TIMEOUT 0: now or never
        await p.execute(Owner(54, lock_timeout_ms=0), "INSERT INTO t VALUES (3, 'z')", None)
    _report(p, 0)
    assert await _ids(p) == set()
    await p.execute(Owner(55, lock_timeout_ms=0), "INSERT INTO t VALUES (4, 'now')", None)
    assert await _ids(p) == {4}


async def test_a_transaction_holding_the_write_lock_goes_on(p):
    owner = Owner(51)
    await p.execute(owner, "BEGIN", None)
    await p.execute(owner, "INSERT INTO t VALUES (1, 'first')", None)  # its first write took the lock
    _report(p, 2 * MB)
    await p.execute(owner, "INSERT INTO t VALUES (2, 'second')", None)
    await p.execute(owner, "COMMIT", None)
    assert await _ids(p) == {1, 2} and p.redo_queue_holds == 0


@pytest.mark.parametrize("change", ["disconnected", "suspended", "unlimited"])
async def test_held_writes_go_when_the_mirror_stops_redoing_or_the_limit_goes(p, change):
    _report(p, 2 * MB)
    write = asyncio.ensure_future(p.execute(Owner(51), "INSERT INTO t VALUES (1, 'held')", None))
    await _until(lambda: p.redo_queue_holding)
    if change == "disconnected":
        p.session.note_partner_lost()  # forgets the reported queue too; the state alone lets writes go
        p.session.redo_queue_bytes = 2 * MB
    elif change == "suspended":
        p.session.config = p.session.config.with_(suspended=True)
    else:
        p.session.config = p.session.config.with_(redo_queue_mb=0)
    p.update_visible()  # what the host's poke does after a session change
    await asyncio.wait_for(write, 5)
    assert await _ids(p) == {1}


async def test_safety_off_waits_too(tmp_path: Path):
    p = await _open(tmp_path, safety=Safety.OFF)
    try:
        _report(p, 2 * MB)
        with pytest.raises(RedoQueueFull):
            await p.execute(Owner(51, lock_timeout_ms=100), "INSERT INTO t VALUES (1, 'x')", None)
    finally:
        await p.close()


async def test_closing_releases_held_writes(tmp_path: Path):
    p = await _open(tmp_path)
    _report(p, 2 * MB)
    queued = asyncio.ensure_future(p.execute(Owner(51), "INSERT INTO t VALUES (1, 'queued')", None))
    lone = asyncio.ensure_future(p.execute(Owner(52), "BEGIN IMMEDIATE", None))
    await _until(lambda: p._redo_holders == 2)  # noqa: SLF001 - both waits under way
    await p.close()
    for write in (queued, lone):
        with pytest.raises(NotServing):
            await asyncio.wait_for(write, 5)
