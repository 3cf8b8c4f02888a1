"""Framing: round trips, split feeding, and every way a frame can be bad."""

from __future__ import annotations

import asyncio
import struct
import zlib

import lz4.block
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrord.core.types import ProtocolError
from mirrord.net import framing
from mirrord.net.framing import (HEADER, FrameDecoder, FrameTooLarge, encode_frame,
                                 encode_frame_sized, read_message, write_message)

MSG = {"t": "log", "records": [[1, 2, b"\x00" * 4096]], "end_lsn": 7, "note": "é"}


def frame(body: bytes, flags: int = 0, crc: int | None = None) -> bytes:
    """A hand-made frame, for the bad cases."""
    return HEADER.pack(len(body), flags, zlib.crc32(body) if crc is None else crc) + body


def decode(data: bytes, max_frame: int = framing.MAX_FRAME) -> dict | None:
    decoder = FrameDecoder(max_frame)
    decoder.feed(data)
    return decoder.next_message()


def test_round_trip() -> None:
    assert decode(encode_frame(MSG)) == MSG


def test_compressed_round_trip_is_smaller() -> None:
    data, raw_len = encode_frame_sized(MSG, compress=True)
    assert data[4] == framing.FLAG_LZ4
    assert len(data) - HEADER.size < raw_len
    assert decode(data) == MSG


def test_incompressible_body_is_sent_plain() -> None:
    msg = {"t": "seed_chunk", "offset": 0, "data": bytes(range(7))}
    data = encode_frame(msg, compress=True)
    assert data[4] == 0
    assert decode(data) == msg


def test_compression_stats_count_compressed_frames() -> None:
    before = framing.compression_stats.raw_bytes, framing.compression_stats.wire_bytes
    _, raw_len = encode_frame_sized(MSG, compress=True)
    encode_frame(MSG)  # not compressed: not counted
    assert framing.compression_stats.raw_bytes - before[0] == raw_len
    assert framing.compression_stats.wire_bytes - before[1] < raw_len
    assert framing.compression_stats.ratio() > 1


def test_byte_by_byte_feeding_and_several_frames() -> None:
    data = encode_frame(MSG) + encode_frame({"t": "ping", "seq": 1}, compress=True)
    decoder = FrameDecoder()
    got = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        while (msg := decoder.next_message()) is not None:
            got.append(msg)
    assert got == [MSG, {"t": "ping", "seq": 1}]
    assert decoder.buffered() == 0


def test_incomplete_frame_waits() -> None:
    data = encode_frame(MSG)
    assert decode(data[:5]) is None
    assert decode(data[:-1]) is None


BAD = [
    ("crc", frame(msgpack.packb({"t": "x"}), crc=1), "CRC mismatch"),
    ("flags", frame(msgpack.packb({"t": "x"}), flags=2), "unknown flags 0x02"),
    ("empty", frame(b""), "empty body"),
    ("msgpack", frame(b"\xc1"), "not valid msgpack"),
    ("trailing", frame(msgpack.packb({"t": "x"}) + b"\x00"), "not valid msgpack"),
    ("not a dict", frame(msgpack.packb([1, 2])), "not a map"),
    ("no t", frame(msgpack.packb({"x": 1})), 'no string "t"'),
    ("t not str", frame(msgpack.packb({"t": 1})), 'no string "t"'),
    ("int key", frame(msgpack.packb({1: 2, "t": "x"})), "not valid msgpack"),
    ("bad utf8", frame(b"\x81\xa1t\xa1\xff"), "not valid msgpack"),
    ("lz4 garbage", frame(b"\x10\x00\x00\x00garbage!", flags=1), "does not decompress"),
    ("lz4 short", frame(b"\x01", flags=1), "shorter than its size prefix"),
    ("lz4 bomb", frame(struct.pack("<I", 2**31) + b"\x00" * 8, flags=1), "claims 2147483648"),
]


@pytest.mark.parametrize("name,data,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_frames(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(data)


def test_length_over_limit_fails_on_the_header_alone() -> None:
    header = HEADER.pack(2**32 - 1, 0, 0)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(header)  # no body bytes needed: nothing gets buffered for it


def test_decompressed_size_checked_against_decoder_limit() -> None:
    data = encode_frame({"t": "x", "pad": "a" * 5000}, compress=True)
    assert data[4] == framing.FLAG_LZ4
    with pytest.raises(ProtocolError, match="claims"):
        decode(data, max_frame=1000)


def test_lz4_stored_size_lie_is_refused() -> None:
    body = bytearray(lz4.block.compress(msgpack.packb({"t": "x", "p": "a" * 100}), store_size=True))
    body[0:4] = struct.pack("<I", 10)  # smaller than the truth: lz4 must not overrun
    with pytest.raises(ProtocolError):
        decode(frame(bytes(body), flags=1))


def test_too_large_to_send() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"t": "seed_chunk", "data": b"\x00" * (framing.MAX_FRAME + 1)})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_only_protocol_errors(data: bytes) -> None:
    decoder = FrameDecoder(max_frame=1024)
    decoder.feed(data)
    try:
        decoder.next_message()
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(0, 1))
def test_random_bodies_with_good_crc_only_protocol_errors(body: bytes, flags: int) -> None:
    try:
        decode(frame(body, flags=flags))
    except ProtocolError:
        pass


values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text()
                      | st.binary(), lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=20)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.text(max_size=8), values, max_size=5), st.booleans())
def test_round_trip_property(fields: dict, compress: bool) -> None:
    msg = {**fields, "t": "anything"}
    assert decode(encode_frame(msg, compress)) == msg


async def test_stream_helpers() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(encode_frame(MSG, compress=True) + encode_frame({"t": "pong", "seq": 2}))
    reader.feed_eof()
    assert await read_message(reader) == MSG
    assert await read_message(reader) == {"t": "pong", "seq": 2}
    with pytest.raises(asyncio.IncompleteReadError):
        await read_message(reader)


async def test_stream_bad_header() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(HEADER.pack(10, 0x80, 0))
    with pytest.raises(ProtocolError, match="flags"):
        await read_message(reader)


async def test_write_message() -> None:
    written = bytearray()

    class Writer:
        def write(self, data: bytes) -> None:
            written.extend(data)

        def is_closing(self) -> bool:
            return False

    write_message(Writer(), MSG, compress=True)  # type: ignore[arg-type]
    assert decode(bytes(written)) == MSG
