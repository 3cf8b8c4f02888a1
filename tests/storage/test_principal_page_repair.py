"""The principal's side of automatic page repair: a damaged page fails its statement clearly, and an image
written back goes into the file only if no record after its LSN rewrote the page."""

from __future__ import annotations

import pytest

from mirrord.engine.principal import PageDamaged

from .test_principal_durability import _principal


def _first_table_leaf(path) -> tuple[int, int]:
    data = path.read_bytes()
    size = int.from_bytes(data[16:18], "big")
    return next(p for p in range(2, len(data) // size + 1) if data[(p - 1) * size] == 13), size


async def test_a_damaged_page_fails_reads_clearly_and_a_current_image_repairs_it(tmp_path):
    p = _principal(tmp_path / "a")
    await p.open()
    await p.execute(object(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", None)
    for i in range(200):
        await p.execute(object(), "INSERT INTO t(id, v) VALUES (?, ?)", [i, f"{i:05d}" * 40])
    await p.close()  # everything checkpointed into the file
    path = tmp_path / "a" / "db.sqlite"
    pgno, size = _first_table_leaf(path)
    good = path.read_bytes()[(pgno - 1) * size:pgno * size]
    with open(path, "r+b") as f:
        f.seek((pgno - 1) * size)
        f.write(b"\xa5" * size)
    p = _principal(tmp_path / "a")
    await p.open()
    try:
        for _ in range(2):  # the session goes on: the same error again, not a stuck reader
            with pytest.raises(PageDamaged, match="SQLITE_CORRUPT.*damaged on this node.*retry in a moment"):
                await p.execute(object(), "SELECT id, v FROM t ORDER BY id", None)
        assert not PageDamaged("x (SQLITE_CORRUPT)").io_error and PageDamaged("x (SQLITE_IOERR)").io_error
        # an image as of LSN 0: every page was rewritten since, so it is not written
        assert await p.repair_pages(0, [(pgno, good)]) == ([], None)
        assert await p.repair_pages(p.applied_lsn, [(pgno, good)]) == ([pgno], None)
        rows = (await p.execute(object(), "SELECT id, v FROM t ORDER BY id", None)).rows
        assert [r[0] for r in rows] == list(range(200))
        await p.execute(object(), "INSERT INTO t(id, v) VALUES (1000, 'after')", None)
    finally:
        await p.close()
