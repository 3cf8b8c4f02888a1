"""DBCC CHECKMIRROR on a node: the principal asks, both hash, the principal compares (see core.checkmirror).

The principal's side runs as the statement (or the schedule, `--checkmirror-interval`);
the mirror's side is a task the inbound link starts when the request arrives, so
the link goes on reading (and hardening) the log records the check waits for.
The node passes in what it owns (the pace, the metrics counter, its databases):
this module imports nothing of the node's, so the links can import it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Callable, Iterable

import structlog

from mirrord.engine import page_repair
from mirrord.core import checkmirror as cm
from mirrord.core import rules
from mirrord.core import statements as st
from mirrord.core.events import utc_text
from mirrord.core.types import StatementRefused
from mirrord.net import framing

if TYPE_CHECKING:
    from mirrord.engine.database import Database

Counted = Callable[[str, bool], None]  # (database, identical): the node's metrics

log = structlog.get_logger()

_rids = itertools.count(1)


def answer_timeout(partner_timeout: int) -> float:
    """How long a check waits for the other side: redo may first have to catch up to the LSN."""
    return max(60.0, 6.0 * partner_timeout)


def refusal(database: "Database") -> str | None:
    """Why a check cannot run on this database now (the statement's rule, core.rules), or None."""
    if (why := rules.refusal(database.session, st.CheckMirror(database.name))) is not None:
        return why
    if database.principal is None or database.partner_writer is None:
        return f"DBCC CHECKMIRROR needs {database.name} served here and its mirror connected; try again in a moment"
    return None


async def check(database: "Database", mb_per_s: int = 0, counted: Counted | None = None) -> cm.Verdict:
    """Compare both copies at one LSN, hashing at mb_per_s MB/s (0: unlimited); StatementRefused saying why
    when no comparison could be made."""
    if (why := refusal(database)) is not None:
        raise StatementRefused(why)
    database.checkmirror_started = time.monotonic()
    writer, rid = database.partner_writer, next(_rids)
    reply: asyncio.Future = asyncio.get_running_loop().create_future()
    database.checkmirror_replies[rid] = reply

    def pinned(lsn: int) -> None:  # in the principal's capture gate: later records travel behind the request
        if writer.is_closing():
            raise StatementRefused(f"the mirror of {database.name} disconnected; try again once it is back")
        framing.write_message(writer, {"t": "checkmirror", "rid": rid, "lsn": lsn, "mb_per_s": mb_per_s})

    timeout = answer_timeout(database.session.config.timeout)
    try:
        mine = await database.principal.page_digests(pinned, mb_per_s)
        if mb_per_s:  # the mirror hashes as many pages at the same pace
            timeout += mine.page_count * mine.page_size / (mb_per_s * 1e6)
        answer = await asyncio.wait_for(reply, timeout)
    except asyncio.TimeoutError:
        raise _failed(database, f"the mirror did not answer within {timeout:g} s") from None
    except ConnectionError as exc:
        raise _failed(database, str(exc)) from None
    finally:
        database.checkmirror_replies.pop(rid, None)
    if (why := cm.answer_refusal(answer, mine.lsn)) is not None:
        raise _failed(database, why)
    verdict = cm.compare(database.name, mine, cm.PageDigests(answer["lsn"], answer["page_size"], answer["digests"]))
    _note(database, verdict)
    if not verdict.identical and not verdict.page_size_differs:
        page_repair.tell_differing(database, verdict.lsn, verdict.differing)  # the mirror repairs those damaged on its side
    if counted is not None:
        counted(database.name, verdict.identical)
    return verdict


def _failed(database: "Database", why: str) -> StatementRefused:
    database.last_checkmirror = f"failed: {why}"
    return StatementRefused(f"DBCC CHECKMIRROR({database.name}) could not compare the copies: {why}")


def _note(database: "Database", verdict: cm.Verdict) -> None:
    database.last_checkmirror = verdict.message()
    if verdict.identical:
        database.last_verified_lsn, database.last_verified_time = verdict.lsn, utc_text(time.time())
        log.info("checkmirror_identical", database=database.name, lsn=verdict.lsn, pages=verdict.page_count)
    else:
        database.checkmirror_mismatches += 1
        log.error("checkmirror_mismatch", database=database.name, lsn=verdict.lsn, differing=len(verdict.differing),
                  pages=list(verdict.differing[:cm.LISTED_PAGES]), detail=verdict.message())
        database.record_event("CHECKMIRROR_MISMATCH", verdict.message(), lsn=verdict.lsn)


def answered(database: "Database", msg: dict) -> None:
    """The mirror's checkmirror_result (on the principal's link task)."""
    reply = database.checkmirror_replies.get(msg["rid"])
    if reply is not None and not reply.done():
        reply.set_result(msg)


def link_lost(database: "Database") -> None:
    """The mirror connection closed: no answer will come to the checks waiting for one."""
    for reply in database.checkmirror_replies.values():
        if not reply.done():
            reply.set_exception(ConnectionError("the mirror connection closed during the check"))


def cancel_answers(database: "Database") -> None:
    """The principal's connection closed: drop the mirror's checks in progress (each lets redo go on)."""
    for task in list(database.checkmirror_tasks):
        task.cancel()


def start_answer(database: "Database", writer, msg: dict) -> None:
    """The mirror's side, called as the request is read: hold redo at its LSN now, hash in a task."""
    mirror = database.mirror
    try:
        if mirror is None:
            raise RuntimeError("this node has no mirror copy")
        hold = mirror.hold_redo(msg["lsn"])
    except RuntimeError as exc:
        _send_answer(writer, msg, 0, b"", str(exc))
        return
    task = asyncio.ensure_future(_answer(database, mirror, hold, writer, msg))
    database.checkmirror_tasks.add(task)
    task.add_done_callback(database.checkmirror_tasks.discard)


async def _answer(database: "Database", mirror, hold, writer, msg: dict) -> None:
    try:
        digests = await mirror.digests_at(msg["lsn"], answer_timeout(database.session.config.timeout), msg["mb_per_s"])
    except Exception as exc:  # noqa: BLE001 - any failure is the answer, and the link goes on
        log.warning("checkmirror_not_hashed", database=database.name, lsn=msg["lsn"], error=repr(exc))
        _send_answer(writer, msg, 0, b"", str(exc) or type(exc).__name__)
        return
    finally:
        mirror.release_redo(hold)
    log.info("checkmirror_hashed", database=database.name, lsn=msg["lsn"], pages=digests.page_count)
    _send_answer(writer, msg, digests.page_size, digests.digests, "")


def _send_answer(writer, msg: dict, page_size: int, digests: bytes, error: str) -> None:
    if writer.is_closing():
        return  # the principal reconnects and asks again
    framing.write_message(writer, {"t": "checkmirror_result", "rid": msg["rid"], "lsn": msg["lsn"],
                                   "page_size": page_size, "digests": digests, "error": error[:1000]})


async def run_schedule(databases: Callable[[], Iterable["Database"]], interval: float, mb_per_s: int = 0,
                       counted: Counted | None = None) -> None:
    """Check every principal database with a connected mirror every `interval` seconds, until cancelled."""
    while True:
        await asyncio.sleep(min(interval, 1.0))
        for database in list(databases()):
            if refusal(database) is not None or not cm.due(database.checkmirror_started, time.monotonic(), interval):
                continue
            try:
                await check(database, mb_per_s, counted)
            except StatementRefused as exc:
                log.warning("checkmirror_failed", database=database.name, reason=exc.message)
            except Exception:  # noqa: BLE001 - a scheduled check must never take the node down
                log.exception("checkmirror_failed", database=database.name)
