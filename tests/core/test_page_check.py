"""core.page_check: every page of real SQLite files passes; damaged headers and b-tree pages are named."""

from __future__ import annotations

import random
import sqlite3

import pytest

from mirrord.core import page_check as pc


def database(tmp_path, page_size: int = 4096) -> bytes:
    """A real file: a table and an index over several levels, overflow pages, deletes (freeblocks, freelist)."""
    path = tmp_path / f"db{page_size}.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE INDEX t_v ON t(v)")
    for i in range(3000):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, f"{i:06d}" * (3 if i % 50 else 2000)))
    conn.execute("DELETE FROM t WHERE id % 7 = 0")
    conn.execute("DELETE FROM t WHERE id BETWEEN 1000 AND 1400")
    conn.commit()
    conn.close()
    return path.read_bytes()


def pages(data: bytes) -> list[bytes]:
    size = pc.page_size_of(data)
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_every_page_of_a_real_database_passes(tmp_path, page_size):
    data = database(tmp_path, page_size)
    assert pc.page_size_of(data) == page_size
    all_pages = pages(data)
    for pgno, page in enumerate(all_pages, 1):
        assert pc.page_problem(page, pgno, len(all_pages), page_size) is None, pgno


def test_a_damaged_header_is_named(tmp_path):
    page1 = pages(database(tmp_path))[0]
    assert pc.header_problem(page1, 4096) is None
    assert "header string" in pc.header_problem(b"\xff" * 4096)
    assert "page size 4096, not the database's 8192" in pc.header_problem(page1, 8192)
    bad = bytearray(page1)
    bad[16:18] = (3000).to_bytes(2, "big")
    assert "no valid page size" in pc.header_problem(bytes(bad))
    for at, value, words in [(18, 7, "file format"), (21, 1, "payload fractions"), (47, 9, "schema format"),
                             (59, 4, "text encoding"), (20, 255, "cell content area")]:
        bad = bytearray(page1)
        bad[at] = value
        assert words in pc.page_problem(bytes(bad), 1, 10, 4096), words
    bad = bytearray(page1)
    bad[100] = pc.INDEX_LEAF
    assert "not a table b-tree page" in pc.page_problem(bytes(bad), 1, 10, 4096)
    assert "short" in pc.header_problem(page1[:50])


def test_random_bytes_over_a_page_are_found(tmp_path):
    all_pages = pages(database(tmp_path))
    rnd = random.Random(7)
    found = sum(pc.page_problem(rnd.randbytes(4096), pgno, len(all_pages), 4096) is not None
                for pgno in range(1, 201))
    assert found >= 199  # page 1 always; another page only if its first byte is a b-tree type and all else fits


def test_broken_btree_fields_are_named(tmp_path):
    all_pages = pages(database(tmp_path))
    count = len(all_pages)
    leaf = next(i for i, p in enumerate(all_pages[1:], 2) if p[0] == pc.TABLE_LEAF and int.from_bytes(p[3:5], "big") > 2)
    interior = next(i for i, p in enumerate(all_pages[1:], 2) if p[0] in (pc.TABLE_INTERIOR, pc.INDEX_INTERIOR))

    def with_bytes(pgno: int, at: int, value: bytes) -> bytes:
        page = bytearray(all_pages[pgno - 1])
        page[at:at + len(value)] = value
        return bytes(page)

    cases = [
        (leaf, 3, (3000).to_bytes(2, "big"), "cannot fit"),
        (leaf, 5, (20).to_bytes(2, "big"), "cell content area starts"),
        (leaf, 7, bytes([61]), "fragmented"),
        (leaf, 8, (5).to_bytes(2, "big"), "cell 0 at offset 5"),
        (leaf, 1, (4095).to_bytes(2, "big"), "freeblock at offset 4095"),
        (interior, 8, (count + 5).to_bytes(4, "big"), "right child"),
        (leaf, 0, bytes([77]), "page type 77"),
        (leaf, 0, bytes([0, 0xff, 0xff, 0xff]), "points to page"),
    ]
    for pgno, at, value, words in cases:
        problem = pc.page_problem(with_bytes(pgno, at, value), pgno, count, 4096)
        assert problem is not None and words in problem, (words, problem)
    assert "not a whole page" in pc.page_problem(all_pages[1][:100], 2, count, 4096)


def test_a_freeblock_chain_that_loops_or_overflows_is_named(tmp_path):
    all_pages = pages(database(tmp_path))
    pgno = next(i for i, p in enumerate(all_pages[1:], 2) if p[0] == pc.TABLE_LEAF)
    page = bytearray(all_pages[pgno - 1])
    content = int.from_bytes(page[5:7], "big")
    page[1:3] = content.to_bytes(2, "big")
    page[content:content + 4] = content.to_bytes(2, "big") + (4).to_bytes(2, "big")  # points to itself
    assert "goes back" in pc.page_problem(bytes(page), pgno, len(all_pages), 4096)
    page[content:content + 4] = (0).to_bytes(2, "big") + (9000).to_bytes(2, "big")
    assert "does not fit" in pc.page_problem(bytes(page), pgno, len(all_pages), 4096)


def test_reserved_bytes_leaving_too_little_are_named(tmp_path):
    page1 = bytearray(pages(database(tmp_path, 512))[0])
    page1[20] = 40
    assert "fewer than 480 usable" in pc.header_problem(bytes(page1), 512)


def test_an_auto_vacuum_databases_pointer_map_pages_are_judged_as_such(tmp_path):
    path = tmp_path / "av.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size=512")
    conn.execute("PRAGMA auto_vacuum=FULL")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(2000):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, f"{i:06d}" * 5))
    conn.commit()
    conn.close()
    data = path.read_bytes()
    assert pc.auto_vacuum(data[:100]) and not pc.auto_vacuum(b"\x00" * 100)
    all_pages = pages(data)
    maps = [n for n in range(1, len(all_pages) + 1) if pc.is_pointer_map_page(n, 512)]
    assert maps[:2] == [2, 2 + 512 // 5 + 1] and len(maps) >= 2
    for pgno, page in enumerate(all_pages, 1):
        assert pc.page_problem(page, pgno, len(all_pages), 512, auto_vacuum=True) is None, pgno
    bad = bytearray(all_pages[1])
    bad[5] = 9  # the second entry's type
    assert "pointer map" in pc.page_problem(bytes(bad), 2, len(all_pages), 512, auto_vacuum=True)
