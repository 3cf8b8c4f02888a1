"""The node's event history on disk: DATA_DIR/events/events.jsonl (+ events.1.jsonl).

Append-only JSON lines (`core.events.to_line`), each written and fsynced
before `record` returns, so an event a node reported survives a kill or a
power cut. Bounded two ways (settings `event_history_max_events`,
`event_history_max_age_days`):

* by count: when the current file holds max_events/2 lines it becomes
  events.1.jsonl (replacing the one before), so the files never hold more
  than max_events lines;
* by age: the current file is rotated once its oldest event is past the age,
  and events.1.jsonl is deleted once its newest is, so nothing on disk is
  older than twice the age, and the view shows nothing older than the age.

The retained events are also kept in memory (a deque of max_events), so the
view costs no file reads. A torn last line (a crash mid-write) is cut off at
open; a line that does not read back as an event is skipped with a log line.
A full disk (any OSError) never stops the node: the event is dropped, logged,
and what was half written is cut off again.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import structlog

from mirrord.core import events as ev
from mirrord.storage.fileutil import fsync_dir

log = structlog.get_logger()

CURRENT, PREVIOUS = "events.jsonl", "events.1.jsonl"


class EventLog:
    """One node's durable, bounded event history."""

    def __init__(self, directory: Path, node: str, *, max_events: int = ev.DEFAULT_MAX_EVENTS,
                 max_age_seconds: float = ev.DEFAULT_MAX_AGE_DAYS * 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.node = node
        self.max_events = max_events
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        self.dropped = 0  # events not recorded (disk full, I/O error) since start
        self._lock = threading.Lock()  # the redo thread may report a failure while the loop records
        self._seq = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self._read(self.directory / PREVIOUS)
        current = self._read(self.directory / CURRENT, cut_torn_tail=True)
        self._current_lines = len(current)
        self._current_oldest = current[0].time if current else None
        self._previous_newest = previous[-1].time if previous else None
        kept = ev.retained(previous + current, max_events, max_age_seconds, self.clock())
        self._memory: deque[ev.MirroringEvent] = deque(kept, maxlen=max(1, max_events))
        if kept:
            self._seq = kept[-1].seq + 1

    def _read(self, path: Path, cut_torn_tail: bool = False) -> list[ev.MirroringEvent]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("event_history_unreadable", file=str(path), error=repr(exc))
            return []
        end = data.rfind(b"\n") + 1
        if cut_torn_tail and end < len(data):
            try:
                os.truncate(path, end)  # a crash mid-append: the next line must start on a line of its own
            except OSError as exc:
                log.error("event_history_not_repaired", file=str(path), error=repr(exc))
        out, bad = [], 0
        for line in data[:end].splitlines():
            try:
                out.append(ev.from_line(line))
            except ValueError:
                bad += 1
        if bad:
            log.warning("event_history_lines_skipped", file=str(path), lines=bad)
        return out

    def record(self, database: str | None, event: str, **fields) -> ev.MirroringEvent | None:
        """Append one event durably; None (and a log line) if it could not be written."""
        with self._lock:
            now = self.clock()
            item = ev.make(now, self.node, database, event, seq=self._seq, **fields)
            try:
                self._rotate_if_due(now)
                self._append(ev.to_line(item))
            except OSError as exc:
                self.dropped += 1
                log.error("event_not_recorded", database=database, history_event=event, error=repr(exc),
                          reason="the event history could not be written (disk full?); the event is dropped")
                return None
            self._seq += 1
            self._memory.append(item)
            self._current_lines += 1
            if self._current_oldest is None:
                self._current_oldest = item.time
            return item

    def _append(self, line: bytes) -> None:
        path = self.directory / CURRENT
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, size)  # no half line left for the next append to continue
                except OSError:
                    pass  # cut at the next open (cut_torn_tail)
                raise
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.directory)

    def _rotate_if_due(self, now: float) -> None:
        cutoff = ev.utc_text(now - self.max_age_seconds)
        previous = self.directory / PREVIOUS
        if self._previous_newest is not None and self._previous_newest < cutoff:
            previous.unlink(missing_ok=True)
            self._previous_newest = None
            fsync_dir(self.directory)
        full = self._current_lines >= max(1, self.max_events // 2)
        old = self._current_oldest is not None and self._current_oldest < cutoff
        if self._current_lines and (full or old):
            os.replace(self.directory / CURRENT, previous)
            fsync_dir(self.directory)
            self._previous_newest = self._memory[-1].time if self._memory else None
            self._current_lines, self._current_oldest = 0, None

    def rows(self, database: str | None = None) -> list[dict]:
        """The view's rows, oldest first: retained events, optionally of one database."""
        with self._lock:
            kept = ev.retained(self._memory, self.max_events, self.max_age_seconds, self.clock())
        return [e.row() for e in kept if database is None or e.database == database]
