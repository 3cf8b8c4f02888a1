"""python -m mirrord_testing.fuzz: hostile input for every parser a peer or client reaches, in-process.

Targets, each a function of one input that must end in a result or in the
target's own refusal (ProtocolError, a MirrordError), never in anything else:

* `frames`     bytes -> FrameDecoder (header, CRC, lz4, msgpack)
* `messages`   a random map with a known "t" -> messages.validate
* `records`    a random wire record -> LogRecord.from_wire (then its bounds are re-checked)
* `statements` text from our keywords, literals and noise -> statements.parse; an admin
               statement must render back to itself (parse(s.to_sql()) == s)
* `sql`        random authorizer calls -> sql_surface.refusal (an answer for every one)
* `client`     bytes -> the real client port loop (ClientPort.serve) over an in-memory
               stream, with a session that parses and checks parameters; every frame it
               writes back must be a valid result or error frame

Inputs are generated from a seed (random.Random), mostly by mutating valid
ones, so a crash is reproduced with `--seed S --target T --skip N`. The run
prints inputs and crashes per target and exits 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sqlite3
import struct
import sys
import time
import traceback
import zlib
from typing import Any, Callable

import lz4.block
import msgpack
import structlog

from mirrord.core import messages, sql_surface
from mirrord.core import statements as st
from mirrord.core.types import MirrordError, ProtocolError
from mirrord.core.values import check_params
from mirrord.net import framing
from mirrord.net.client_port import ClientLimits, ClientPort, ClientReader
from mirrord.storage.log import MAX_PAGE_COUNT, LogRecord

INTERESTING_INTS = [0, 1, -1, 2, 255, 256, 511, 512, 4096, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                    MAX_PAGE_COUNT, MAX_PAGE_COUNT + 1, 2**40, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
WORDS = ["ALTER", "DATABASE", "CREATE", "DROP", "SET", "PARTNER", "WITNESS", "SAFETY", "FULL", "OFF", "TIMEOUT",
         "FAILOVER", "FORCE_SERVICE_ALLOW_DATA_LOSS", "RESUME", "SUSPEND", "ENDPOINT", "STATE", "STARTED", "STOPPED",
         "BACKUP", "RESTORE", "TO", "FROM", "DISK", "WITH", "RECOVERY", "NORECOVERY", "USE", "SELECT", "sys",
         "database_mirroring", "database_mirroring_witnesses", "database_mirroring_events", "dm_db_mirroring_auto_page_repair", "database_snapshots", "AS", "SNAPSHOT", "OF", "WHERE", "database", "EXEC", "EXECUTE",
         "sp_transaction_status", "sp_dbmmonitorchangealert", "sp_dbmmonitorhelpalert", "sp_dbmmonitordropalert",
         "STATEMENT_TIMEOUT", "shop", "[shop]", "[../x]", "*", ",", "=", ";", ".", "'tcp://h:5022'", "'x.bak'",
         "N'a''b'", "'", "[", "/*", "--", "9" * 30, "9" * 4301, "1e5", "٣", "\x00", "é", "1", "0", "3600"]
SEEDS = [
    "ALTER DATABASE shop SET PARTNER = 'tcp://10.0.0.2:5022'", "ALTER DATABASE shop SET PARTNER FAILOVER",
    "ALTER DATABASE shop SET PARTNER SAFETY OFF", "ALTER DATABASE shop SET PARTNER TIMEOUT 10",
    "ALTER DATABASE shop SET WITNESS = 'tcp://w:5022'", "ALTER DATABASE shop SET WITNESS OFF",
    "ALTER ENDPOINT mirroring STATE = STOPPED", "BACKUP DATABASE shop TO DISK = 'a.bak'",
    "RESTORE DATABASE shop FROM DISK = 'a.bak' WITH NORECOVERY", "RESTORE DATABASE shop WITH RECOVERY",
    "SELECT role, state FROM sys.database_mirroring WHERE database = 'shop'", "USE shop", "CREATE DATABASE shop",
    "EXEC sp_transaction_status 'shop', 12, 3", "EXEC sp_dbmmonitorchangealert 'shop', 1, 5, 1",
    "EXEC sp_dbmmonitorhelpalert 'shop'", "SET STATEMENT_TIMEOUT 500", "SELECT * FROM t", "DROP DATABASE shop",
]


# ------------------------------------------------------------------ generators


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """A few random byte-level edits of data."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 2:
            del buf[pos:pos + rng.randint(1, 32)]
        elif op == 3:
            buf = buf[:pos]
        elif op == 4 and corpus:
            other = rng.choice(corpus)
            buf[pos:] = other[rng.randint(0, len(other)):]
        elif op == 5:
            width = rng.choice((1, 4, 8))
            value = rng.choice(INTERESTING_INTS) % (1 << (8 * width))
            buf[pos:pos + width] = value.to_bytes(width, "big")
        else:
            buf[pos:pos] = buf[pos:pos + rng.randint(1, 64)]
    return bytes(buf)


def value(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value, biased to the shapes our schemas use."""
    kind = rng.randrange(10 if depth < 2 else 7)
    if kind == 0:
        return rng.choice(INTERESTING_INTS[:-3])  # msgpack carries -2**63..2**64-1
    if kind == 1:
        return rng.choice((True, False, None))
    if kind == 2:
        return rng.choice(("", "shop", "../../x", "tcp://h:1", "FULL", "PRINCIPAL", "x" * rng.randint(0, 300)))
    if kind == 3:
        return rng.randbytes(rng.randint(0, 64))
    if kind == 4:
        return rng.choice((0.5, float("inf"), float("nan"), -0.0, 1e308))
    if kind == 5:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 6:
        return "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 8)))
    if kind in (7, 8):
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice(("t", "id", "db", "sql", "x")): value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def random_message(rng: random.Random) -> dict:
    """A map of a known type whose fields are mostly well typed, a few not."""
    kind = rng.choice(list(messages.SCHEMAS))
    msg: dict = {"t": kind}
    for name, check in messages.SCHEMAS[kind].items():
        if rng.random() < 0.05:
            continue  # a missing field
        for _ in range(4):  # prefer a value the checker accepts, so later fields are reached
            candidate = value(rng)
            if check(candidate) is None or rng.random() < 0.2:
                break
        msg[name] = candidate
    return msg


def random_record(rng: random.Random) -> Any:
    """A wire log record, valid in shape most of the time."""
    page_size = rng.choice((512, 1024, 4096, 1000, 0, 131072))
    db_size = rng.choice((1, 2, 3, 100, MAX_PAGE_COUNT, MAX_PAGE_COUNT + 1, 2**40, 0, -1))
    pages = []
    for _ in range(rng.randint(0, 3)):
        pgno = rng.choice((1, 2, db_size, db_size + 1, 2**40, 0, -5, True, 1.5))
        size = page_size if rng.random() < 0.8 else rng.randint(0, 600)
        pages.append([pgno, b"\x00" * max(0, min(size, 65536))] if rng.random() < 0.9 else [pgno])
    record = [rng.randint(0, 10), rng.choice((0, 1, -1, True)), db_size, page_size, pages]
    if rng.random() < 0.1:
        record = record[: rng.randint(0, 5)]
    if rng.random() < 0.05:
        record = value(rng)
    return record


def random_statement(rng: random.Random) -> str:
    """Keyword soup, or a valid statement with a few edits."""
    if rng.random() < 0.5:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    text = rng.choice(SEEDS)
    return mutate(rng, text.encode(), [s.encode() for s in SEEDS]).decode("utf-8", "replace")


def fix_header(data: bytes) -> bytes:
    """Give a mutated frame a true length and CRC, so the decoder gets past them to the body."""
    if len(data) <= framing.HEADER.size:
        return data
    body = data[framing.HEADER.size:]
    return framing.HEADER.pack(len(body), data[4] & framing.FLAG_LZ4, zlib.crc32(body)) + body


def frame_of(msg: dict, compress: bool) -> bytes:
    try:
        return framing.encode_frame(msg, compress)
    except (OverflowError, ValueError, TypeError):
        return b""


# ------------------------------------------------------------------ targets


def target_frames(rng: random.Random, corpus: list[bytes]) -> None:
    if rng.random() < 0.1 or not corpus:
        data = rng.randbytes(rng.randint(0, 64))
    else:
        data = mutate(rng, rng.choice(corpus), corpus)
        if rng.random() < 0.5:
            data = fix_header(data)
    if rng.random() < 0.05:  # an lz4 body claiming a huge size, behind a good header
        body = struct.pack("<I", rng.choice(INTERESTING_INTS[:-3]) % 2**32) + rng.randbytes(16)
        data = struct.pack(">IBI", len(body), 1, zlib.crc32(body)) + body
    decoder = framing.FrameDecoder(max_frame=1 << 20)
    cut = rng.randint(0, len(data))
    try:
        for part in (data[:cut], data[cut:]):
            decoder.feed(part)
            while decoder.next_message() is not None:
                pass
    except ProtocolError:
        pass


def target_messages(rng: random.Random, corpus: list[bytes]) -> None:
    msg = random_message(rng)
    try:
        messages.validate(msg)
    except ProtocolError:
        return
    if rng.random() < 0.2:
        frame = frame_of(msg, compress=rng.random() < 0.5)
        if frame:
            corpus.append(frame)
            del corpus[:-200]


def target_records(rng: random.Random, corpus: list[bytes]) -> None:
    try:
        rec = LogRecord.from_wire(random_record(rng))
    except ProtocolError:
        return
    assert rec.db_size <= MAX_PAGE_COUNT and all(1 <= p <= rec.db_size for p, _ in rec.pages), rec


def target_statements(rng: random.Random, corpus: list[bytes]) -> None:
    text = random_statement(rng)
    try:
        stmt = st.parse(text)
    except MirrordError:
        return
    if not isinstance(stmt, st.Sql):
        again = st.parse(stmt.to_sql())
        assert again == stmt, (text, stmt, again)


_ACTIONS = list(range(0, 34))


def target_sql(rng: random.Random, corpus: list[bytes]) -> None:
    names = [None, "", "table_info", "writable_schema", "user_version", "temp_store_directory", "x" * 50]
    answer = sql_surface.refusal(rng.choice(_ACTIONS), rng.choice(names), rng.choice((None, "1", "t", "ON")),
                                 rng.choice((None, "main", "temp")))
    assert answer is None or isinstance(answer, str)


class MemoryTransport:
    """An in-memory transport: what the client port writes, and the protocol it sets (for feeding bytes)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.reading = True
        self.protocol = None

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default=None):
        return ("fuzz", 0) if name == "peername" else default


class MemoryWriter:
    """An in-memory StreamWriter for the client port (also used by its unit tests); its transport holds the bytes."""

    def __init__(self) -> None:
        self.transport = MemoryTransport()

    @property
    def data(self) -> bytearray:
        return self.transport.data

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self.transport.closed

    def get_extra_info(self, name: str, default=None):
        return self.transport.get_extra_info(name, default)

    def close(self) -> None:
        self.transport.close()


class _Session:
    """A client session that parses and checks like the node, without databases."""

    statement_timeout_ms = None

    async def answer(self, msg: dict) -> dict:
        try:
            stmt = st.parse(msg["sql"])
            check_params(msg["params"])
        except MirrordError as exc:
            return messages.error_from(msg["id"], exc)
        return messages.result(msg["id"], ["statement"], [[type(stmt).__name__]], -1)

    def holds_transaction(self) -> bool:
        return False

    async def abort_idle_transaction(self, seconds: float) -> None:
        return None


_LOOP: asyncio.AbstractEventLoop | None = None
_PORT = ClientPort(ClientLimits(max_frame=64 << 10, frame_deadline=1.0, idle_timeout=1.0))


def _client_frames(rng: random.Random) -> bytes:
    frames = []
    for i in range(rng.randint(1, 3)):
        sql = random_statement(rng) if rng.random() < 0.7 else "SELECT 1"
        params = rng.choice((None, [], [1, "x"], [2**64 - 1], {"a": 1}, [[1]], {"k": b"x"}, [value(rng)]))
        msg = messages.query(rng.choice((i + 1, 0, 2**63 - 1)), sql, rng.choice((None, "shop", "../x")), params)
        if rng.random() < 0.2:
            msg = random_message(rng)
        frames.append(frame_of(msg, compress=rng.random() < 0.3))
    return b"".join(frames)


def target_client(rng: random.Random, corpus: list[bytes]) -> None:
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    data = _client_frames(rng)
    if rng.random() < 0.5:
        data = mutate(rng, data, corpus)
        if rng.random() < 0.5:
            data = fix_header(data)
    reader = ClientReader(loop=_LOOP)
    reader.feed_data(data)
    reader.feed_eof()
    writer = MemoryWriter()
    _LOOP.run_until_complete(_PORT.serve(reader, writer, _Session()))
    decoder = framing.FrameDecoder()
    decoder.feed(bytes(writer.data))
    while (frame := decoder.next_message()) is not None:
        messages.validate(frame)
        assert frame["t"] in ("result", "error"), frame
    assert decoder.buffered() == 0, "a partial frame was written"


TARGETS: dict[str, Callable[[random.Random, list[bytes]], None]] = {
    "frames": target_frames, "messages": target_messages, "records": target_records,
    "statements": target_statements, "sql": target_sql, "client": target_client,
}
# client inputs are the slowest (an event-loop turn each): fewer of them
WEIGHTS = {"frames": 4, "messages": 4, "records": 3, "statements": 4, "sql": 1, "client": 1}


def _seed_corpus() -> list[bytes]:
    corpus = [framing.encode_frame(messages.query(1, s, "shop", None)) for s in SEEDS]
    corpus.append(framing.encode_frame({"t": "log", "records": [[1, 1, 1, 512, [[1, b"\x00" * 512]]]], "end_lsn": 1}, True))
    corpus.append(framing.encode_frame({"t": "ping", "seq": 1, "monitor": {"x": 1.5}}))
    corpus.append(lz4.block.compress(msgpack.packb({"t": "ping", "seq": 3}), store_size=True))
    return corpus


def run(inputs: int, seed: int, targets: list[str], skip: int = 0, report_every: float = 30.0) -> dict:
    """Run `inputs` inputs spread over targets; return counts and crashes per target."""
    rng = random.Random(seed)
    corpus = _seed_corpus()
    order = [t for t in targets for _ in range(WEIGHTS[t])]
    counts = {t: 0 for t in targets}
    crashes: dict[str, list[str]] = {t: [] for t in targets}
    started = last = time.monotonic()
    for i in range(inputs):
        name = order[i % len(order)]
        case_rng = random.Random(rng.getrandbits(64))
        if i < skip:
            continue
        counts[name] += 1
        try:
            TARGETS[name](case_rng, corpus)
        except Exception:  # noqa: BLE001 - a crash is what we look for
            if len(crashes[name]) < 20:
                crashes[name].append(f"input {i} (--seed {seed} --skip {i}):\n{traceback.format_exc()}")
            else:
                crashes[name].append(f"input {i}")
        now = time.monotonic()
        if report_every and now - last >= report_every:
            last = now
            print(f"fuzz: {i + 1} inputs, {sum(map(len, crashes.values()))} crashes, {now - started:.0f} s", file=sys.stderr, flush=True)
    return {"inputs": counts, "crashes": crashes, "seconds": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrord_testing.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=100_000, help="number of inputs (default 100000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--target", action="append", choices=sorted(TARGETS), help="only these targets (repeatable)")
    p.add_argument("--skip", type=int, default=0, help="start at this input (to reproduce one)")
    args = p.parse_args(argv)
    sqlite3.enable_callback_tracebacks(False)
    # the client port logs every refused frame: millions of lines would be the whole run's cost
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        outcome = run(args.inputs, args.seed, args.target or list(TARGETS), args.skip)
    finally:
        structlog.configure(**saved)
    total = sum(outcome["inputs"].values())
    crashed = sum(len(c) for c in outcome["crashes"].values())
    for name, count in outcome["inputs"].items():
        print(f"{name:<11} {count:>10} inputs  {len(outcome['crashes'][name]):>4} crashes")
    print(f"{'total':<11} {total:>10} inputs  {crashed:>4} crashes  ({outcome['seconds']:.0f} s, seed {args.seed})")
    for name, found in outcome["crashes"].items():
        for crash in found[:3]:
            print(f"--- {name}: {crash}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
