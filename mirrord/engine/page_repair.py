"""Automatic page repair on a node: the mirror finds, asks for and writes back damaged pages (see core.page_repair).

The mirror's side: pages come in as suspect from the scrubber (run_scrubber,
`--page-scrub-rate-mb`) or from the principal's DBCC CHECKMIRROR
(`page_suspect`); they are asked for on the link from the principal
(`page_request`), and the answer (`page_answer`) goes to the redo thread,
which writes each image once redo has reached its LSN (a redo thread that
stops hands back the images it did not reach: they are asked for again). The
principal's side answers requests from its database at the end of its log
(PrincipalDatabase.page_images), and repairs its own pages from the mirror's
images: found by a statement that meets one, or by its scrubber, which judges
its file's pages by SQLite's file format (core.page_check).
Like mirrord/engine/checkmirror.py this module imports nothing of the node's, so the links can import it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable

import structlog

from mirrord.core import page_repair as pr
from mirrord.core.page_check import page_problem
from mirrord.core.events import utc_text
from mirrord.core.types import ProtocolError, Role
from mirrord.net import framing
from mirrord.storage.fileutil import atomic_write_json, read_json

if TYPE_CHECKING:
    from mirrord.engine.database import Database

log = structlog.get_logger()

_rids = itertools.count(1)

SCRUB_PAGES = 64  # pages the scrubber reads at a time (redo waits at most for one such read)
SCRUB_PAUSE = 1.0  # seconds between passes over a small store, so that it does not spin
MAX_SUSPECT_LISTED = 4096  # pages one page_suspect may name


SUSPECT_FILE = "suspect_pages.json"  # the mirror's suspect pages, beside its copy (the reference's msdb suspect_pages)


def _save(database: "Database") -> None:
    """Keep the mirror's suspect pages durably: a restarted node asks for them again at once (_resume).

    Written at every change (repairs are rare); a file that cannot be written
    (a full disk) costs only that: the checksum map still names the pages, and
    the next scrub or check finds them.
    """
    path = database.directory / SUSPECT_FILE
    try:
        if database.repair_pages:
            atomic_write_json(path, {"pages": {str(p): e for p, e in sorted(database.repair_pages.items())}})
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("suspect_pages_not_saved", database=database.name, error=repr(exc))


def _resume(database: "Database") -> None:
    """Once per mirror copy opened: take up the suspect pages a stopped node left (asked for by send_requests)."""
    mirror = database.mirror
    if mirror is None or database.repair_resumed is mirror:
        return
    database.repair_resumed = mirror
    try:
        kept = read_json(database.directory / SUSPECT_FILE, {})
    except (OSError, ValueError) as exc:
        log.warning("suspect_pages_unreadable", database=database.name, error=repr(exc))
        return
    listed = kept.get("pages") if isinstance(kept, dict) else None
    pages = {}
    for key, error_type in (listed.items() if isinstance(listed, dict) else ()):
        if key.isdigit() and 1 <= int(key) <= 0xFFFFFFFF and error_type in (pr.ERROR_IO, pr.ERROR_OTHER, pr.ERROR_CHECKSUM):
            pages.setdefault(error_type, []).append(int(key))
    for error_type, numbers in pages.items():
        found(database, numbers, error_type, "found before this node stopped, not yet repaired (suspect_pages.json)")


def _note(database: "Database", page: int, error_type: int, status: int) -> None:
    if database.repair_history is not None:
        database.repair_history.note(database.name, page, error_type, status, utc_text(time.time()))


# ------------------------------------------------------------------ the mirror's side


def found(database: "Database", pages: Iterable[int], error_type: int, why: str) -> list[int]:
    """Damaged pages of the mirror's copy: mark them suspect and ask the principal for them; the pages newly taken up."""
    mirror = database.mirror
    _resume(database)  # before anything is saved over the pages a stopped node left
    new = sorted({p for p in pages if p not in database.repair_pages})
    if mirror is None or not new:
        return []
    try:
        mirror.mark_suspect(new)
    except RuntimeError as exc:
        log.warning("page_repair_not_started", database=database.name, pages=new[:20], reason=str(exc))
        return []
    for page in new:
        database.repair_pages[page] = error_type
        _note(database, page, error_type, pr.QUEUED_FOR_REQUEST)
    _save(database)
    log.error("page_damaged", database=database.name, pages=new[:20], count=len(new), error_type=error_type, reason=why)
    database.record_event("PAGE_REPAIR", f"{len(new)} damaged page(s) of the mirror's copy ({why}): "
                      f"{', '.join(map(str, new[:20]))}{' …' if len(new) > 20 else ''}; asking the principal",
                      lsn=mirror.redo_lsn)
    send_requests(database)
    return new


def send_requests(database: "Database") -> None:
    """Ask the principal for every suspect page not yet asked for (when the link is up; else at the next connect)."""
    _resume(database)
    writer, mirror, redo = database.partner_writer, database.mirror, database.mirror_redo()
    if writer is None or writer.is_closing() or mirror is None or redo is None:
        return
    asked = {p for pages, _, _ in database.repair_asked.values() for p in pages}
    waiting = sorted(p for p in database.repair_pages if p not in asked and p not in database.repair_queued)
    for start in range(0, len(waiting), pr.MAX_REQUEST_PAGES):
        chunk = waiting[start:start + pr.MAX_REQUEST_PAGES]
        rid = next(_rids)
        redo.mark_suspect(chunk)  # (again: a no-op unless redo was restarted since) before its LSN is taken:
        # the answer must be at an LSN redo had not passed by now (core.page_repair.answer_refusal), and
        # every record redo applies past it is tracked, so an older image never goes over a newer one
        database.repair_asked[rid] = (frozenset(chunk), redo.redo_lsn, redo)
        framing.write_message(writer, {"t": "page_request", "rid": rid, "pages": chunk})
        for page in chunk:
            _note(database, page, database.repair_pages[page], pr.QUEUED_FOR_DELIVERY)


def link_lost(database: "Database") -> None:
    """The principal's connection closed: what was asked on it is asked again on the next one."""
    database.repair_asked.clear()
    for page, error_type in database.repair_pages.items():
        if database.repair_history is None or database.repair_history.status(database.name, page) == pr.QUEUED_FOR_DELIVERY:
            _note(database, page, error_type, pr.QUEUED_FOR_REQUEST)


def copy_replaced(database: "Database", whole: bool) -> None:
    """A seed (whole) or a rewind installed a new copy: the requests made for the old one are void.

    A seed replaced every page: what was damaged is gone. A rewind copied the
    old store and rewrote only the pages that diverged, so a damaged page may
    still be damaged (and the new checksum map was taken from it): it is asked
    for again, for the new redo thread.
    """
    # requests made for the old redo thread stay listed: their answers ask again for the new one (answered),
    # and an answer the principal is still writing is not taken for a frame that answers nothing
    database.repair_queued.clear()  # the old redo thread, and the images it held, are gone
    if whole:
        database.repair_resumed = database.mirror  # what a stopped node left was of the old copy too
    pages = sorted(database.repair_pages)
    if not pages:
        if whole:
            _save(database)
        return
    if whole:
        for page in pages:
            _note(database, page, database.repair_pages.pop(page), pr.REPAIRED)
        _save(database)
        database.record_event("PAGE_REPAIR", f"page(s) {', '.join(map(str, pages[:20]))} replaced whole by a seed of the copy")
        return
    redo = database.mirror_redo()
    if redo is None:
        return
    redo.mark_suspect(pages)
    for page in pages:
        _note(database, page, database.repair_pages[page], pr.QUEUED_FOR_REQUEST)
    send_requests(database)


def answered(database: "Database", msg: dict) -> None:
    """The principal's page_answer (on the mirror's link task): each image goes to redo, written at its LSN."""
    entry = database.repair_asked.pop(msg["rid"], None)
    if entry is None:
        raise ProtocolError(f"page_answer {msg['rid']} answers no page_request of this connection")
    pages, redo_at, redo = entry
    mirror = database.mirror
    if msg["error"]:
        _give_up(database, pages, f"the principal could not read them: {msg['error'][:300]}")
        return
    if mirror is None or database.mirror_redo() is not redo:
        # asked for a redo thread that is gone (a rewind, a restart of redo): its images are not used; the pages
        # still suspect (a seed replaced them all) are asked again for the one running now, which tracks them
        _ask_again(database, [p for p in pages if p in database.repair_pages])
        return
    why = pr.answer_refusal(msg, pages, redo_at, mirror.store_page_size)
    if why is not None:
        raise ProtocolError(f"page_answer: {why}")
    lsn, loop = msg["lsn"], asyncio.get_running_loop()
    images = {pgno: image for pgno, image in msg["pages"]}

    def done(pgno: int, outcome: str) -> None:  # on the redo thread (or on this one, when it has exited)
        try:
            loop.call_soon_threadsafe(_repaired, database, pgno, outcome, lsn)
        except RuntimeError:  # the loop closed (the node stopped): nothing left to tell
            pass

    settled = [p for p in pages if p not in database.repair_pages]  # repaired meanwhile (a seed replaced the copy)
    if settled:
        redo.forget_suspect(settled)
    for page in sorted(p for p in pages if p in database.repair_pages):
        _note(database, page, database.repair_pages[page], pr.QUEUED_FOR_REPAIR)
        database.repair_queued.add(page)  # with redo now: not asked for again, even after a reconnect
        redo.repair(lsn, page, images.get(page), done)  # None: the database no longer had the page at lsn


def _give_up(database: "Database", pages: Iterable[int], why: str) -> None:
    pages = sorted(pages)
    redo = database.mirror_redo()
    if redo is not None:
        redo.forget_suspect(pages)
    for page in pages:
        _note(database, page, database.repair_pages.pop(page, pr.ERROR_CHECKSUM), pr.IRREPARABLE)
    _save(database)
    log.error("page_irreparable", database=database.name, pages=pages[:20], reason=why)
    database.record_event("PAGE_REPAIR", f"page(s) {', '.join(map(str, pages[:20]))} NOT repaired: {why}")


def _ask_again(database: "Database", pages: Iterable[int]) -> None:
    """Pages whose image a redo thread that stopped never wrote: still damaged, asked for again (at once if it can)."""
    pages = sorted(pages)
    if not pages:
        return
    if database.mirror is None:
        if database.session.role is not Role.PRINCIPAL:
            return  # the node is stopping (or the copy closing): suspect_pages.json keeps them for its next start
        # the copy is the principal's now (a promotion): the mirror's repair of it is over
        _give_up(database, pages, "redo stopped before the image could be written (this copy is no longer a mirror); "
                 "SQLite, or the principal's scrubber, finds the page if it is still damaged, and it is repaired "
                 "from the new mirror")
        return
    for page in pages:
        database.repair_queued.discard(page)
        _note(database, page, database.repair_pages[page], pr.QUEUED_FOR_REQUEST)
    log.warning("page_repair_asked_again", database=database.name, pages=pages[:20],
                reason="the redo thread the image was for stopped before writing it")
    send_requests(database)


def _repaired(database: "Database", pgno: int, outcome: str, lsn: int) -> None:
    if outcome == "dropped":
        if pgno in database.repair_pages and pgno in database.repair_queued:
            _ask_again(database, [pgno])
        return
    database.repair_queued.discard(pgno)
    error_type = database.repair_pages.pop(pgno, pr.ERROR_CHECKSUM)
    _save(database)
    _note(database, pgno, error_type, pr.REPAIRED)
    detail = {
        "repaired": f"page {pgno} repaired with the principal's image as of LSN {lsn}",
        "rewritten": f"page {pgno} repaired by redo itself (a record past LSN {lsn} rewrote it whole)",
        "gone": f"page {pgno} repaired: the database no longer has it (cut off at or before LSN {lsn})",
    }[outcome]
    log.info("page_repaired", database=database.name, page=pgno, lsn=lsn, outcome=outcome)
    database.record_event("PAGE_REPAIR", detail, lsn=lsn)
    if database.repaired_pages is not None:
        database.repaired_pages(database.name)


def suspected(database: "Database", msg: dict) -> None:
    """The principal's DBCC CHECKMIRROR found pages differing: those not matching their checksum here are repaired.

    A differing page that matches this store's checksum is what redo wrote
    from the principal's log: it is the principal's copy that is damaged, and
    the mirror offers it its image (`page_offer`; principal_offered).
    """
    pages = msg["pages"]
    if not isinstance(pages, list) or len(pages) > MAX_SUSPECT_LISTED or any(
            type(p) is not int or not 1 <= p <= 0xFFFFFFFF for p in pages):
        raise ProtocolError(f"page_suspect: pages must be at most {MAX_SUSPECT_LISTED} page numbers")
    if database.mirror is None:
        return
    asyncio.ensure_future(_check_suspected(database, sorted(set(pages)), msg["lsn"]))


async def _check_suspected(database: "Database", pages: list[int], lsn: int) -> None:
    mirror = database.mirror
    damaged: dict[int, int] = {}
    for page in pages:
        bad, _, error_type = await asyncio.to_thread(mirror.damaged_pages, page, 1)
        for p in bad:
            damaged[p] = error_type
    for error_type in set(damaged.values()):
        found(database, [p for p, e in damaged.items() if e == error_type], error_type,
              f"DBCC CHECKMIRROR at LSN {lsn} found it differing, and it does not match its checksum")
    whole = [p for p in pages if p not in damaged and p <= mirror.page_count]
    if not whole:
        return
    log.error("page_differs_on_principal", database=database.name, lsn=lsn, pages=whole[:20],
              reason="the mirror's page matches the checksum redo wrote: the principal's copy is damaged; offering it ours")
    for start in range(0, len(whole), pr.MAX_REQUEST_PAGES):
        since, images = await asyncio.to_thread(mirror.whole_images, whole[start:start + pr.MAX_REQUEST_PAGES])
        writer = database.partner_writer
        if not images or writer is None or writer.is_closing():
            continue
        framing.write_message(writer, {"t": "page_offer", "lsn": since, "pages": [[p, image] for p, image in images]})


async def run_scrubber(databases: Callable[[], Iterable["Database"]], mb_per_s: int,
                       principal_check: Callable[["Database"], Awaitable] | None = None) -> None:
    """Read every page of every copy on the node, at most mb_per_s MB/s in all, until cancelled.

    A mirror's pages are read against their checksums; a principal's (with a
    partner, and principal_check, DBCC CHECKMIRROR, to find and repair them)
    against SQLite's file format (core.page_check).
    """
    rate = mb_per_s * 1e6
    while True:
        read = False
        for database in list(databases()):
            if database.principal is not None and principal_check is not None:
                page_size, count = await _scrub_principal(database, principal_check)
                if count:
                    read = True
                    await asyncio.sleep(count * page_size / rate)
                continue
            mirror = database.mirror
            if mirror is None or mirror.page_count == 0:
                continue
            first = database.scrub_next
            bad, count, error_type = await asyncio.to_thread(mirror.damaged_pages, first, SCRUB_PAGES)
            if count == 0:  # a pass ended
                database.scrub_next, database.scrub_passes = 1, database.scrub_passes + 1
                continue
            database.scrub_next = first + count
            if bad and database.mirror is mirror:
                found(database, bad, error_type, "the scrubber read it and it does not match its checksum"
                      if error_type == pr.ERROR_CHECKSUM else "the scrubber could not read it")
            read = True
            await asyncio.sleep(count * (mirror.store_page_size or 4096) / rate)
        if not read:
            await asyncio.sleep(SCRUB_PAUSE)


# ------------------------------------------------------------------ the principal's side


async def _scrub_principal(database: "Database", principal_check: Callable[["Database"], Awaitable]) -> tuple[int, int]:
    """Read the next pages of the principal's file and judge them by SQLite's file format; (page size, pages read).

    A page found damaged goes the way a statement that meets it goes
    (principal_damaged): DBCC CHECKMIRROR finds which pages differ from the
    mirror's, and the mirror offers its images. A page the log rewrote since
    the file's last checkpoint is damaged only in the file: the check (which
    reads it from the log) finds it equal, and the next checkpoint writes it whole.
    """
    principal = database.principal
    if principal is None or database.session.config.partner is None:
        return 4096, 0
    first = database.scrub_next
    try:
        page_size, total, reserved, pointer_maps, images = await principal.file_pages(first, SCRUB_PAGES)
    except OSError as exc:  # an I/O error (823): the check finds which pages, and the next pass reads on
        log.error("page_damaged", database=database.name, side="principal", first=first, error=repr(exc),
                  reason="the scrubber could not read the database file")
        database.scrub_next = first + SCRUB_PAGES
        principal_damaged(database, True, lambda: principal_check(database))
        return 4096, SCRUB_PAGES
    if not images:
        database.scrub_next, database.scrub_passes = 1, database.scrub_passes + 1
        return page_size, 0
    database.scrub_next = first + len(images)
    bad = []
    seen, now = database.principal_scrub_seen, time.monotonic()
    for pgno, image in images:
        why = page_problem(image, pgno, total, page_size, reserved, pointer_maps)
        if why is None:
            seen.pop(pgno, None)
            continue
        crc = pr.page_checksum(image)
        before = seen.get(pgno)
        # the same bytes found again soon after a check they started: it is under way, or found them equal to
        # the mirror's (a freelist page's old bytes, a page the WAL rewrote); a check a pass would not help
        if before is None or before[0] != crc or now - before[1] >= PRINCIPAL_SCRUB_RECHECK:
            bad.append((pgno, why, crc))
    if bad and database.principal is principal:
        log.error("page_damaged", database=database.name, side="principal", pages=[p for p, _, _ in bad][:20],
                  reason=f"the scrubber read it and SQLite's file format says: {bad[0][1]}")
        if principal_damaged(database, False, lambda: principal_check(database)):
            seen.update((pgno, (crc, now)) for pgno, _, crc in bad)
    return page_size, len(images)


def start_answer(database: "Database", writer, msg: dict) -> None:
    """A page_request from the mirror (on the principal's link task): read the pages in a task of its own."""
    task = asyncio.ensure_future(_answer(database, writer, msg))
    database.repair_tasks.add(task)
    task.add_done_callback(database.repair_tasks.discard)


async def _answer(database: "Database", writer, msg: dict) -> None:
    lsn, page_size, pages, error = 0, 512, [], ""
    why = pr.request_refusal(msg["pages"], 0xFFFFFFFF)
    if why is not None:
        error = why
    elif database.principal is None:
        error = "this node does not serve the database"
    else:
        try:
            lsn, page_size, images = await database.principal.page_images(list(msg["pages"]))
            pages = [[pgno, image] for pgno, image in images]
        except Exception as exc:  # noqa: BLE001 - any failure is the answer, and the link goes on
            error = str(exc) or type(exc).__name__
            log.warning("page_request_not_answered", database=database.name, pages=msg["pages"][:20], error=repr(exc))
    if writer.is_closing():
        return  # the mirror asks again on the next connection
    framing.write_message(writer, {"t": "page_answer", "rid": msg["rid"], "lsn": lsn, "page_size": page_size,
                                   "pages": pages, "error": error[:1000]})
    if not error:
        log.info("page_request_answered", database=database.name, lsn=lsn, pages=[p for p, _ in pages][:20])


PRINCIPAL_CHECK_INTERVAL = 5.0  # seconds between checks a read error on the principal starts
PRINCIPAL_SCRUB_RECHECK = 60.0  # seconds before the same damaged bytes the scrubber found start another check


def principal_damaged(database: "Database", io_error: bool, check: Callable[[], Awaitable]) -> bool:
    """A statement on the principal hit a damaged page (SQLITE_CORRUPT / NOTADB / IOERR).

    SQLite does not say which page. `check` (DBCC CHECKMIRROR) finds which
    differ from the mirror's copy; the mirror offers its images of those that
    match its checksums (suspected), which principal_offered writes back. One
    check at a time, and at most one every PRINCIPAL_CHECK_INTERVAL seconds,
    however many statements fail meanwhile. True if this call started one.
    """
    database.principal_damage_type = pr.ERROR_IO if io_error else pr.ERROR_OTHER
    now = time.monotonic()
    task = database.principal_check
    if (task is not None and not task.done()) or now - database.principal_check_started < PRINCIPAL_CHECK_INTERVAL:
        return False
    database.principal_check_started = now
    log.error("page_damaged_on_principal", database=database.name, io_error=io_error,
              action="comparing with the mirror (DBCC CHECKMIRROR) to find and repair the page")
    database.principal_check = asyncio.ensure_future(_principal_check(database, check))
    return True


async def _principal_check(database: "Database", check: Callable[[], Awaitable]) -> None:
    try:
        await check()  # its DIFFERENT verdict goes to the mirror (tell_differing), which offers its pages
    except Exception as exc:  # noqa: BLE001 - the repair is tried again at the next failing statement
        log.warning("page_repair_check_failed", database=database.name, error=getattr(exc, "message", None) or repr(exc))


def principal_offered(database: "Database", msg: dict) -> None:
    """The mirror's images of pages damaged here (on the principal's link task): written back in a task."""
    principal = database.principal
    size = _principal_page_size(principal) if principal is not None else None
    pages = msg["pages"]
    if not (isinstance(pages, list) and len(pages) <= pr.MAX_REQUEST_PAGES and all(
            isinstance(i, list) and len(i) == 2 and type(i[0]) is int and i[0] >= 1 and isinstance(i[1], bytes)
            and len(i[1]) == size for i in pages)):
        raise ProtocolError(f"page_offer: pages must be at most {pr.MAX_REQUEST_PAGES} [page number, image of {size} bytes]")
    if principal is None or not pages:
        return
    task = asyncio.ensure_future(_write_offered(database, principal, msg["lsn"], [(p, image) for p, image in pages]))
    database.repair_tasks.add(task)
    task.add_done_callback(database.repair_tasks.discard)


def _principal_page_size(principal) -> int | None:
    """The principal's page size: its log's last record's (a damaged page 1, SQLite's header, may lie), else the file's."""
    try:
        last = principal.log.get(principal.log.last_lsn) if principal.log.last_lsn else None
    except (LookupError, ValueError, OSError):
        last = None
    return last.page_size if last is not None else _file_page_size(principal.path)


def _file_page_size(path) -> int | None:
    """The page size in a SQLite file's header."""
    try:
        with open(path, "rb") as f:
            header = f.read(18)
    except OSError:
        return None
    size = int.from_bytes(header[16:18], "big") if len(header) == 18 else 0
    return 65536 if size == 1 else size or None


async def _write_offered(database: "Database", principal, since: int, pages: list[tuple[int, bytes]]) -> None:
    error_type = database.principal_damage_type
    for pgno, _ in pages:
        _note(database, pgno, error_type, pr.QUEUED_FOR_REPAIR)
    try:
        written, why = await principal.repair_pages(since, pages)
    except Exception as exc:  # noqa: BLE001 - a repair that fails leaves the page as it was; the next check tries again
        written, why = [], str(exc) or type(exc).__name__
    for pgno, _ in pages:
        # a page not written was rewritten after `since`: its newer image is in the WAL, which readers use
        _note(database, pgno, error_type, pr.REPAIRED if why is None else pr.IRREPARABLE)
    listed = ", ".join(str(p) for p, _ in pages[:20])
    if why is not None:
        log.error("page_irreparable", database=database.name, pages=listed, reason=why)
        database.record_event("PAGE_REPAIR", f"page(s) {listed} NOT repaired from the mirror: {why}", lsn=since)
        return
    in_wal = [p for p, _ in pages if p not in written]
    log.info("page_repaired", database=database.name, pages=written[:20], in_wal=in_wal[:20], lsn=since, side="principal")
    database.record_event("PAGE_REPAIR", f"page(s) {listed} of the principal's copy repaired with the mirror's images "
                      f"(as of LSN {since} or later)" + (f"; {', '.join(map(str, in_wal[:20]))} rewritten since: "
                      "the WAL's newer image stands, and the next checkpoint writes it into the file" if in_wal else ""),
                      lsn=since)
    if database.repaired_pages is not None:
        for _ in pages:
            database.repaired_pages(database.name)


def note_opened(database: "Database") -> None:
    """The principal's open put back pages it found damaged (page 1, from its log): rows, event and count."""
    principal = database.principal
    for pgno, lsn, problem in (principal.repaired_at_open if principal is not None else []):
        _note(database, pgno, pr.ERROR_OTHER, pr.QUEUED_FOR_REPAIR)
        _note(database, pgno, pr.ERROR_OTHER, pr.REPAIRED)
        database.record_event("PAGE_REPAIR", f"page {pgno} of the principal's copy was damaged ({problem}): SQLite could "
                          f"not open the file; repaired at load with the log's image as of LSN {lsn}", lsn=lsn)
        if database.repaired_pages is not None:
            database.repaired_pages(database.name)
    if principal is not None:
        principal.repaired_at_open.clear()


def tell_differing(database: "Database", lsn: int, pages: Iterable[int]) -> None:
    """DBCC CHECKMIRROR found pages differing: tell the mirror, which repairs those damaged on its side."""
    writer = database.partner_writer
    pages = list(pages)[:MAX_SUSPECT_LISTED]
    if pages and writer is not None and not writer.is_closing():
        framing.write_message(writer, {"t": "page_suspect", "lsn": lsn, "pages": pages})


def cancel_answers(database: "Database") -> None:
    """The mirror's connection closed: its requests are asked again on the next one."""
    for task in list(database.repair_tasks):
        task.cancel()
