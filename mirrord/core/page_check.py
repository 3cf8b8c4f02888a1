"""Is a page of a SQLite database file whole? A structural check, pure and cheap (automatic page repair).

The principal keeps no checksums of its pages (SQLite writes its file), so its
scrubber, and its load, judge a page by its structure as SQLite's file format
defines it (https://www.sqlite.org/fileformat2.html): page 1's 100-byte header,
and every b-tree page's header, cell pointers and freeblock chain in range.
What it finds is damage for sure; what it passes may still be damaged inside
a cell (DBCC CHECKMIRROR compares every byte). Pages that are not b-tree pages
(overflow, freelist trunk and leaf pages) begin with a page number (or hold
old bytes, a freelist leaf): a page whose first byte is neither a b-tree type
nor zero (a page number below 2^24) is called damaged; a freelist leaf holding
such bytes is a false alarm, which costs one comparison with the mirror.
"""

from __future__ import annotations

MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
TABLE_INTERIOR, TABLE_LEAF, INDEX_INTERIOR, INDEX_LEAF = 5, 13, 2, 10
BTREE_TYPES = (TABLE_INTERIOR, TABLE_LEAF, INDEX_INTERIOR, INDEX_LEAF)


def page_size_of(header: bytes) -> int | None:
    """The page size a SQLite header names, None if it names none (a damaged page 1)."""
    if len(header) < 18 or header[:16] != MAGIC:
        return None
    size = int.from_bytes(header[16:18], "big")
    size = 65536 if size == 1 else size
    return size if 512 <= size <= 65536 and size & (size - 1) == 0 else None


def header_problem(page1: bytes, page_size: int | None = None) -> str | None:
    """What is wrong with page 1's database header (the first 100 bytes), or None; page_size: the one it must name."""
    if len(page1) < HEADER_BYTES:
        return f"page 1 is {len(page1)} bytes, shorter than SQLite's {HEADER_BYTES}-byte header"
    if page1[:16] != MAGIC:
        return "page 1 does not begin with SQLite's header string"
    size = page_size_of(page1)
    if size is None:
        return "page 1's header names no valid page size"
    if page_size is not None and size != page_size:
        return f"page 1's header names page size {size}, not the database's {page_size}"
    if page1[18] not in (1, 2) or page1[19] not in (1, 2):
        return "page 1's header has a file format version other than 1 (legacy) or 2 (WAL)"
    if page1[21:24] != b"\x40\x20\x20":
        return "page 1's header has payload fractions other than SQLite's fixed 64, 32, 32"
    if size - page1[20] < 480:
        return f"page 1's header reserves {page1[20]} bytes a page, leaving fewer than 480 usable"
    if int.from_bytes(page1[44:48], "big") > 4:
        return "page 1's header has a schema format number above 4"
    if int.from_bytes(page1[56:60], "big") > 3:
        return "page 1's header has a text encoding other than 1, 2 or 3"
    return None


def btree_problem(page: bytes, pgno: int, page_count: int, usable: int | None = None) -> str | None:
    """What is wrong with the b-tree structure of page pgno (of a database of page_count pages), or None.

    usable: the page size less the reserved bytes (page 1's byte 20), the page's length if not given.
    """
    usable = usable or len(page)
    at = HEADER_BYTES if pgno == 1 else 0
    if len(page) < at + 8:
        return f"page {pgno} is too short for a b-tree page header"
    kind = page[at]
    if kind not in BTREE_TYPES:
        if pgno == 1:
            return f"page 1 (the schema's b-tree) has page type {kind}, not a table b-tree page"
        if kind != 0:  # overflow and freelist pages begin with a page number, below 2^24 here
            return f"page {pgno} has page type {kind}: neither a b-tree page nor one that begins with a page number"
        nxt = int.from_bytes(page[0:4], "big")
        if nxt > page_count:
            return f"page {pgno} (overflow or freelist) points to page {nxt}, past the database's {page_count}"
        return None
    if pgno == 1 and kind != TABLE_LEAF and kind != TABLE_INTERIOR:
        return f"page 1 (the schema's b-tree) has page type {kind}, not a table b-tree page"
    interior = kind in (TABLE_INTERIOR, INDEX_INTERIOR)
    header_end = at + (12 if interior else 8)
    freeblock = int.from_bytes(page[at + 1:at + 3], "big")
    cells = int.from_bytes(page[at + 3:at + 5], "big")
    content = int.from_bytes(page[at + 5:at + 7], "big") or 65536
    fragmented = page[at + 7]
    pointers_end = header_end + 2 * cells
    if pointers_end > usable:
        return f"page {pgno}: {cells} cells cannot fit in a page"
    if not pointers_end <= content <= usable:
        return f"page {pgno}: its cell content area starts at {content}, outside {pointers_end}..{usable}"
    if fragmented > 60:
        return f"page {pgno}: {fragmented} fragmented bytes, more than SQLite leaves (60)"
    if interior:
        child = int.from_bytes(page[at + 8:at + 12], "big")
        if not 2 <= child <= page_count:
            return f"page {pgno}: its right child {child} is not a page of the database (2..{page_count})"
    for i in range(cells):
        ptr = int.from_bytes(page[header_end + 2 * i:header_end + 2 * i + 2], "big")
        if not content <= ptr < usable:
            return f"page {pgno}: cell {i} at offset {ptr}, outside the cell content area {content}..{usable}"
    seen = 0
    while freeblock:
        if not content <= freeblock <= usable - 4:
            return f"page {pgno}: a freeblock at offset {freeblock}, outside the cell content area {content}..{usable}"
        size = int.from_bytes(page[freeblock + 2:freeblock + 4], "big")
        nxt = int.from_bytes(page[freeblock:freeblock + 2], "big")
        if size < 4 or freeblock + size > usable:
            return f"page {pgno}: a freeblock of {size} bytes at offset {freeblock} does not fit"
        if nxt and nxt < freeblock + size:
            return f"page {pgno}: the freeblock chain goes back (from {freeblock} to {nxt})"
        freeblock, seen = nxt, seen + 1
        if seen > usable // 4:
            return f"page {pgno}: the freeblock chain does not end"
    return None


def is_pointer_map_page(pgno: int, usable: int) -> bool:
    """Whether pgno is a pointer-map page of an auto-vacuum database: page 2, then one every usable/5 + 1 pages."""
    return pgno >= 2 and (pgno - 2) % (usable // 5 + 1) == 0


def pointer_map_problem(page: bytes, pgno: int, page_count: int, usable: int) -> str | None:
    """What is wrong with a pointer-map page (5-byte entries: a type 1..5, or 0 past the database's end, and a parent)."""
    for at in range(0, usable - usable % 5, 5):
        kind, parent = page[at], int.from_bytes(page[at + 1:at + 5], "big")
        if kind > 5 or parent > page_count:
            return f"page {pgno} (a pointer map): entry {at // 5} has type {kind} and parent {parent}"
    return None


def page_problem(page: bytes, pgno: int, page_count: int, page_size: int, reserved: int = 0,
                 auto_vacuum: bool = False) -> str | None:
    """What is wrong with page pgno of a database file (page 1: its header too), or None.

    auto_vacuum: page 1's header names a largest root page (offset 52), so the
    file has pointer-map pages, judged as such.
    """
    if len(page) != page_size:
        return f"page {pgno} is {len(page)} bytes, not a whole page of {page_size}"
    if pgno == 1:
        problem = header_problem(page, page_size)
        if problem is not None:
            return problem
        reserved = page[20]
    elif auto_vacuum and is_pointer_map_page(pgno, page_size - reserved):
        return pointer_map_problem(page, pgno, page_count, page_size - reserved)
    return btree_problem(page, pgno, page_count, page_size - reserved)


def auto_vacuum(header: bytes) -> bool:
    """Whether a (whole) page 1 header says the file has pointer-map pages (auto_vacuum or incremental_vacuum)."""
    return len(header) >= 56 and int.from_bytes(header[52:56], "big") != 0
