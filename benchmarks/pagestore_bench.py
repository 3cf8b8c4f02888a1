"""What the page store's checksum map (automatic page repair) costs redo, and how fast the scrubber can read.

    .venv/bin/python benchmarks/pagestore_bench.py [--records 3000] [--pages 4] [--page-size 4096]

Applies the same log records to a page store without and with checksums, syncing every 50
records as the redo thread does (PERSIST_INTERVAL batches its syncs), and prints redo MB/s of
page images for each; then reads the whole store against its checksums (the scrubber's work,
unpaced) and prints MB/s. No mirrord processes: this measures the store alone.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from mirrord.storage.log import LogRecord
from mirrord.storage.pagestore import PageStore


def records(n: int, pages: int, page_size: int, db_pages: int) -> list[LogRecord]:
    rng = random.Random(7)
    first = b"SQLite format 3\x00" + (page_size if page_size < 65536 else 1).to_bytes(2, "big") + bytes(page_size - 18)
    out = []
    for lsn in range(1, n + 1):
        chosen = sorted(rng.sample(range(2, db_pages + 1), pages - 1)) if lsn > 1 else list(range(2, db_pages + 1))
        imgs = [(1, first)] + [(p, rng.randbytes(page_size)) for p in chosen]
        out.append(LogRecord(lsn, 1, db_pages, page_size, tuple(imgs)))
    return out


def apply_all(directory: Path, recs: list[LogRecord], checksums: bool) -> float:
    store = PageStore(directory / "db", directory / "sums" if checksums else None)
    started = time.perf_counter()
    for i in range(0, len(recs), 50):
        store.apply(recs[i:i + 50])
        store.sync()
    seconds = time.perf_counter() - started
    store.close()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--pages", type=int, default=4, help="pages per record")
    ap.add_argument("--page-size", type=int, default=4096)
    ap.add_argument("--db-pages", type=int, default=25600, help="pages in the database (100 MB at 4 KiB)")
    args = ap.parse_args()
    print(f"pagestore_bench: {args.records} records x {args.pages} pages of {args.page_size} bytes, "
          f"database of {args.db_pages} pages; {os.cpu_count()} cores")
    first, rest = records(1, args.db_pages, args.page_size, args.db_pages), None
    rest = records(args.records + 1, args.pages, args.page_size, args.db_pages)[1:]
    mb = sum(len(img) for r in rest for _, img in r.pages) / 1e6
    print(f"{'store':<22}{'seconds':>10}{'redo MB/s':>12}")
    for checksums in (False, True, False, True):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            apply_all(d, first, checksums)  # the seed: every page once
            seconds = apply_all(d, rest, checksums)
            label = "with checksums" if checksums else "without checksums"
            print(f"{label:<22}{seconds:>10.2f}{mb / seconds:>12.1f}")
            if checksums:
                store = PageStore(d / "db", d / "sums")
                started, pgno = time.perf_counter(), 1
                while True:
                    bad, n = store.damaged(pgno, 64)
                    assert not bad
                    if n == 0:
                        break
                    pgno += n
                scrub = time.perf_counter() - started
                store.close()
                print(f"{'scrub (unpaced)':<22}{scrub:>10.2f}{args.db_pages * args.page_size / 1e6 / scrub:>12.1f}")


if __name__ == "__main__":
    main()
