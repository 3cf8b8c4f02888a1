"""One framing for both ports: the mirroring endpoint and the client listener.

A frame is a 9-byte header and a body:

    >I  body length N as sent (after compression), at most MAX_FRAME
    B   flags: bit 0 = body is lz4 block-compressed with its size stored; others 0
    >I  zlib.crc32 of the body as sent
    N   body: msgpack of a dict whose str key "t" names the message type

Why this shape: the length lets a reader take a whole frame with one
`readexactly`, the CRC catches corruption before anything is decoded, and the
header is checked before the body is buffered, so a hostile length never
allocates. The lz4 stored size is checked before decompressing for the same
reason (a "bomb" of a few bytes cannot claim 4 GiB). The body is msgpack,
not pickle, so a peer can only send plain data; `messages.validate` then
checks every field. TLS, when it comes, wraps the stream below this layer.

`FrameDecoder` is sans-I/O (feed bytes, pull messages), for tests and for
protocol-style callers; `read_message`/`write_message` are the asyncio stream
helpers. Compression is used only when asked (the log stream) and only when it
shrinks the body, since page images of random data do not compress;
`compression_stats` counts bytes before/after so the node can report the ratio.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from dataclasses import dataclass

import lz4.block
import msgpack

from mirrord.core.types import ProtocolError

HEADER = struct.Struct(">IBI")
FLAG_LZ4 = 0x01
MAX_FRAME = 64 * 1024 * 1024
_LZ4_SIZE = struct.Struct("<I")  # lz4.block's store_size prefix
_UNPACK_ERRORS = (ValueError, TypeError, OverflowError, RecursionError,
                  msgpack.UnpackException)


class FrameTooLarge(ValueError):
    """We were asked to send a message larger than MAX_FRAME (a local bug, not the peer's)."""


@dataclass
class CompressionStats:
    """Bytes offered for compression and bytes actually sent, over all compressed frames."""

    raw_bytes: int = 0
    wire_bytes: int = 0

    def ratio(self) -> float:
        """raw / wire (1.0 when nothing was sent)."""
        return self.raw_bytes / self.wire_bytes if self.wire_bytes else 1.0


compression_stats = CompressionStats()


# ------------------------------------------------------------------ encoding


def encode_frame_sized(msg: dict, compress: bool = False) -> tuple[bytes, int]:
    """Encode one frame; return it and the uncompressed body length."""
    raw = msgpack.packb(msg, use_bin_type=True)
    if len(raw) > MAX_FRAME:
        raise FrameTooLarge(f"message {msg.get('t')!r} is {len(raw)} bytes; the limit is {MAX_FRAME}")
    body, flags = raw, 0
    if compress:
        packed = lz4.block.compress(raw, store_size=True)
        if len(packed) < len(raw):
            body, flags = packed, FLAG_LZ4
        compression_stats.raw_bytes += len(raw)
        compression_stats.wire_bytes += len(body)
    return HEADER.pack(len(body), flags, zlib.crc32(body)) + body, len(raw)


def encode_frame(msg: dict, compress: bool = False) -> bytes:
    """Encode one message as a frame."""
    return encode_frame_sized(msg, compress)[0]


# ------------------------------------------------------------------ decoding


def check_header(header: bytes, max_frame: int = MAX_FRAME) -> tuple[int, int, int]:
    """Unpack and check a 9-byte header; return (length, flags, crc)."""
    length, flags, crc = HEADER.unpack(header)
    if flags & ~FLAG_LZ4:
        raise ProtocolError(f"frame has unknown flags 0x{flags:02x}")
    if length > max_frame:
        raise ProtocolError(f"frame body of {length} bytes exceeds the limit of {max_frame}")
    if length == 0:
        raise ProtocolError("frame has an empty body")
    return length, flags, crc


def decode_body(body: bytes, flags: int, crc: int, max_frame: int = MAX_FRAME) -> dict:
    """Check the CRC, decompress if flagged, unpack; return the message dict."""
    actual = zlib.crc32(body)
    if actual != crc:
        raise ProtocolError(f"frame CRC mismatch: header says {crc:08x}, body has {actual:08x}")
    if flags & FLAG_LZ4:
        body = _decompress(body, max_frame)
    return _unpack(body)


def _decompress(body: bytes, max_frame: int) -> bytes:
    """lz4-decompress, refusing a stored size over the limit before allocating."""
    if len(body) < _LZ4_SIZE.size:
        raise ProtocolError("lz4 frame body is shorter than its size prefix")
    (size,) = _LZ4_SIZE.unpack_from(body)
    if size > max_frame:
        raise ProtocolError(f"lz4 body claims {size} bytes uncompressed; the limit is {max_frame}")
    try:
        raw = lz4.block.decompress(body)
    except lz4.block.LZ4BlockError as exc:
        raise ProtocolError(f"lz4 body does not decompress: {exc}") from None
    if len(raw) != size:
        raise ProtocolError(f"lz4 body decompressed to {len(raw)} bytes, not the {size} stored")
    return raw


def _unpack(body: bytes) -> dict:
    """msgpack-decode a body into a dict with a str "t"."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except _UNPACK_ERRORS as exc:
        raise ProtocolError(f"frame body is not valid msgpack: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"frame body is a {type(msg).__name__}, not a map")
    if not isinstance(msg.get("t"), str):
        raise ProtocolError('frame body has no string "t" (message type)')
    return msg


class FrameDecoder:
    """Sans-I/O decoder: feed() bytes as they arrive, then next_message() until None.

    After a ProtocolError the stream is unusable and the connection should be closed.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max = max_frame
        self._buf = bytearray()
        self._pos = 0  # start of the next frame; compacted on feed, not per frame

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_message(self) -> dict | None:
        """The next complete message, or None if more bytes are needed."""
        start = self._pos
        if len(self._buf) - start < HEADER.size:
            return None
        length, flags, crc = check_header(self._buf[start : start + HEADER.size], self._max)
        end = start + HEADER.size + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[start + HEADER.size : end])
        self._pos = end
        return decode_body(body, flags, crc, self._max)

    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf) - self._pos


# ------------------------------------------------------------------ streams


async def read_message(reader: asyncio.StreamReader, max_frame: int = MAX_FRAME) -> dict:
    """Read one message; ProtocolError if malformed, IncompleteReadError at EOF."""
    length, flags, crc = check_header(await reader.readexactly(HEADER.size), max_frame)
    body = await reader.readexactly(length)
    return decode_body(body, flags, crc, max_frame)


def write_message(writer: asyncio.StreamWriter, msg: dict, compress: bool = False) -> None:
    """Queue one message on the writer (the caller drains); ConnectionResetError if it is closed."""
    write_frame(writer, encode_frame(msg, compress))


def write_frame(writer: asyncio.StreamWriter, frame: bytes) -> None:
    """Queue one frame encoded beforehand (encode_frame, e.g. in a worker thread); as write_message."""
    if writer.is_closing():
        raise ConnectionResetError("the connection is closed")
    writer.write(frame)
