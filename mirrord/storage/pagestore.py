"""The mirror's page store and the redo thread that fills it.

The page store is the mirror's copy of the SQLite database file: page N lives
at byte (N-1)*page_size, and after a transaction the file is exactly
db_size*page_size bytes long. That is what a SQLite checkpoint produces, so
when redo has reached LSN x the file equals the principal's database at x
(invariant I3), and it opens as an ordinary SQLite database on failover.

The redo thread applies hardened log records in LSN order, whole transactions
at a time, in the order LiteFS uses: write pages, truncate to the commit size,
sync the store, and only then persist the new redo LSN. A crash therefore
re-applies a batch (harmless: records are full page images) and never skips
one. Any failure stops the thread: a partially applied batch must not be
served, and the node recovers from its durable log on restart.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Sequence

from mirrord.storage.fileutil import atomic_write_bytes
from mirrord.storage.log import DurableLog, LogRecord


class PageStore:
    """The mirror's copy of the SQLite database file: page N at byte (N-1)*page_size."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def apply(self, records: Sequence[LogRecord]) -> None:
        """Apply whole records in LSN order: write each page, then set the file to db_size pages."""
        for record in records:
            self._apply_one(record)

    def _apply_one(self, record: LogRecord) -> None:
        size = record.page_size
        for pgno, image in record.pages:
            _pwrite_all(self._fd, image, (pgno - 1) * size)
        os.ftruncate(self._fd, record.db_size * size)

    def sync(self) -> None:
        """Make applied pages durable."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (does not sync)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def load_redo_lsn(path: Path) -> int:
    """The persisted redo LSN, 0 if none was persisted yet."""
    try:
        return int(Path(path).read_bytes().decode().strip() or 0)
    except FileNotFoundError:
        return 0


class RedoThread(threading.Thread):
    """Applies hardened log records to the page store, in LSN order, whole transactions at a time."""

    def __init__(
        self,
        log: DurableLog,
        store: PageStore,
        redo_lsn_path: Path,
        *,
        on_progress: Callable[[int], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        batch_bytes: int = 8 << 20,
    ) -> None:
        super().__init__(name=f"redo:{store.path.name}", daemon=True)
        self._log, self._store, self._path = log, store, Path(redo_lsn_path)
        self._on_progress, self._on_error = on_progress, on_error
        self._batch_bytes = batch_bytes
        self._cond = threading.Condition()
        self._redo_lsn = load_redo_lsn(self._path)
        self._hardened = self._redo_lsn
        self._stopping = False
        self._done = False  # exited (stopped or failed): waiters must not wait forever
        self.error: BaseException | None = None

    @property
    def redo_lsn(self) -> int:
        """Everything up to this LSN is in the page store (and persisted as such)."""
        with self._cond:
            return self._redo_lsn

    def notify(self, hardened_lsn: int) -> None:
        """Tell the thread there is hardened log up to `hardened_lsn` to redo."""
        with self._cond:
            if hardened_lsn > self._hardened:
                self._hardened = hardened_lsn
                self._cond.notify_all()

    def wait_for(self, lsn: int, timeout: float) -> bool:
        """Block until redo_lsn >= lsn (True) or the timeout passes / the thread exits (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._redo_lsn >= lsn or self._done, timeout)
            return self._redo_lsn >= lsn

    def stop(self) -> None:
        """Finish the current batch, persist, and exit; join() afterwards."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def run(self) -> None:
        """Redo loop: wait for hardened log, apply it batch by batch."""
        try:
            while self._wait_for_work():
                self._redo_batch()
        except BaseException as exc:  # noqa: BLE001 - any failure must stop redo and be reported
            self.error = exc
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _wait_for_work(self) -> bool:
        """Wait until there is something to redo; False when asked to stop."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or self._hardened > self._redo_lsn)
            return not self._stopping

    def _redo_batch(self) -> None:
        """Apply one batch, sync the pages, then persist the new redo LSN."""
        with self._cond:
            start, upto = self._redo_lsn + 1, self._hardened
        records = [r for r in self._log.read_from(start, self._batch_bytes) if r.lsn <= upto]
        if not records:
            raise RuntimeError(f"redo: hardened log up to {upto} but no record at {start}")
        self._store.apply(records)
        self._store.sync()  # pages before the LSN: a crash re-applies rather than skips
        lsn = records[-1].lsn
        atomic_write_bytes(self._path, str(lsn).encode())
        with self._cond:
            self._redo_lsn = lsn
            self._cond.notify_all()
        if self._on_progress is not None:
            self._on_progress(lsn)
