"""An incremental decoder for the AWS event-stream binary framing.

ConverseStream (like every AWS streaming API over HTTP/1.1) answers with a
sequence of binary messages rather than SSE. Each message is:

    prelude   total length (uint32 BE), headers length (uint32 BE), CRC32 of those 8 bytes
    headers   repeated: name length (uint8), name (UTF-8), value type (uint8), value
    payload   total length - headers length - 16 bytes
    trailer   CRC32 of everything before it (prelude, its CRC, headers, payload)

TCP delivers those bytes in arbitrary pieces, so :class:`EventStreamDecoder`
keeps the incomplete tail between `feed()` calls and returns only complete,
checksum-verified messages. A bad checksum, an impossible length or a malformed
header raises :class:`EventStreamError`: the stream cannot be trusted past it.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

PRELUDE_LENGTH: Final = 12
TRAILER_LENGTH: Final = 4
# The limits AWS documents (and botocore enforces) for one message.
MAX_HEADERS_LENGTH: Final = 128 * 1024
MAX_PAYLOAD_LENGTH: Final = 16 * 1024 * 1024

HeaderValue = bool | int | bytes | str | uuid.UUID

_UINT32_PAIR = struct.Struct(">II")
_UINT32 = struct.Struct(">I")


class EventStreamError(ValueError):
    """The bytes are not a valid AWS event stream."""


@dataclass(frozen=True, slots=True)
class EventStreamMessage:
    headers: Mapping[str, HeaderValue]
    payload: bytes

    def header(self, name: str) -> str | None:
        """A string header's value (e.g. `:event-type`), else None."""
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


def crc32(data: bytes, value: int = 0) -> int:
    return zlib.crc32(data, value) & 0xFFFFFFFF


class EventStreamDecoder:
    """Feed bytes as they arrive; get back the messages they complete."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a whole message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        self._buf += data
        messages: list[EventStreamMessage] = []
        offset = 0
        buf = self._buf
        while len(buf) - offset >= PRELUDE_LENGTH:
            total, headers_length = _UINT32_PAIR.unpack_from(buf, offset)
            (prelude_crc,) = _UINT32.unpack_from(buf, offset + 8)
            if crc32(bytes(buf[offset : offset + 8])) != prelude_crc:
                raise EventStreamError("event-stream prelude checksum mismatch")
            payload_length = total - headers_length - PRELUDE_LENGTH - TRAILER_LENGTH
            if headers_length > MAX_HEADERS_LENGTH:
                raise EventStreamError(f"event-stream headers exceed {MAX_HEADERS_LENGTH} bytes")
            if payload_length < 0:
                raise EventStreamError("event-stream message length is inconsistent")
            if payload_length > MAX_PAYLOAD_LENGTH:
                raise EventStreamError(f"event-stream payload exceeds {MAX_PAYLOAD_LENGTH} bytes")
            if len(buf) - offset < total:
                break
            message = bytes(buf[offset : offset + total])
            offset += total
            (message_crc,) = _UINT32.unpack_from(message, total - TRAILER_LENGTH)
            if crc32(message[: total - TRAILER_LENGTH]) != message_crc:
                raise EventStreamError("event-stream message checksum mismatch")
            headers_end = PRELUDE_LENGTH + headers_length
            messages.append(
                EventStreamMessage(
                    parse_headers(message[PRELUDE_LENGTH:headers_end]),
                    message[headers_end : total - TRAILER_LENGTH],
                )
            )
        if offset:
            del buf[:offset]
        return messages


# Header value types (the `:value-type` byte).
_TRUE, _FALSE, _BYTE, _SHORT, _INT, _LONG, _BYTES, _STRING, _TIMESTAMP, _UUID = range(10)
_FIXED: Final = {_BYTE: struct.Struct(">b"), _SHORT: struct.Struct(">h"), _INT: struct.Struct(">i")}
_INT64 = struct.Struct(">q")
_UINT16 = struct.Struct(">H")


def parse_headers(data: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos = 0
    end = len(data)
    try:
        while pos < end:
            name_length = data[pos]
            pos += 1
            name = data[pos : pos + name_length].decode("utf-8")
            pos += name_length
            kind = data[pos]
            pos += 1
            value: HeaderValue
            if kind == _TRUE:
                value = True
            elif kind == _FALSE:
                value = False
            elif kind in _FIXED:
                fmt = _FIXED[kind]
                (value,) = fmt.unpack_from(data, pos)
                pos += fmt.size
            elif kind in (_LONG, _TIMESTAMP):
                (value,) = _INT64.unpack_from(data, pos)
                pos += 8
            elif kind in (_BYTES, _STRING):
                (length,) = _UINT16.unpack_from(data, pos)
                pos += 2
                raw = data[pos : pos + length]
                if len(raw) != length:
                    raise EventStreamError("event-stream header value is cut short")
                pos += length
                value = raw.decode("utf-8") if kind == _STRING else raw
            elif kind == _UUID:
                raw = data[pos : pos + 16]
                if len(raw) != 16:
                    raise EventStreamError("event-stream header value is cut short")
                pos += 16
                value = uuid.UUID(bytes=raw)
            else:
                raise EventStreamError(f"unknown event-stream header value type {kind}")
            if pos > end:
                raise EventStreamError("event-stream header value is cut short")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError):
        raise EventStreamError("malformed event-stream headers") from None
    return headers
