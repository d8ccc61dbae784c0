"""An incremental Server-Sent Events parser for upstream streams.

Upstreams (OpenAI-compatible servers, Anthropic, Vertex with `alt=sse`) stream
their answers as SSE. TCP delivers those bytes in arbitrary pieces: an event, a
line, even a `\\r\\n` pair may be split across reads. :class:`SseParser` keeps
the incomplete tail between `feed()` calls and returns only complete events, as
the WHATWG HTML specification's event-stream rules describe: lines end with
`\\r\\n`, `\\n` or `\\r`; lines starting with `:` are comments (keep-alives);
`data:` lines of one event are joined with `\\n`; a blank line dispatches.
"""

from __future__ import annotations

from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
# One event larger than this is a broken or hostile upstream, not an answer.
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024


class SseProtocolError(ValueError):
    """The upstream's stream cannot be parsed as SSE (e.g. an oversized event)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: bytes
    event: str | None = None
    id: str | None = None


class SseParser:
    """Feed bytes as they arrive; get back the events they complete."""

    __slots__ = ("_buf", "_data", "_event", "_id", "_max", "_pending_cr", "_size", "_started")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buf = b""
        self._pending_cr = False
        self._started = False
        self._data: list[bytes] = []
        self._size = 0
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        events: list[SseEvent] = []
        if not chunk:
            return events
        if not self._started:
            if len(self._buf) + len(chunk) < len(_BOM) and _BOM.startswith(self._buf + chunk):
                # Too short to tell whether a BOM starts the stream: wait.
                self._buf += chunk
                return events
            chunk = self._buf + chunk
            self._buf = b""
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if self._pending_cr:
            # The previous read ended in `\r`, which already ended its line: a
            # `\n` opening this read is the second half of that `\r\n`.
            self._pending_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        # bytes.splitlines() splits on exactly \r\n, \n and \r: SSE's line ends.
        lines = buf.splitlines(keepends=True)
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            self._buf = lines.pop()
            if len(self._buf) + self._size > self._max:
                raise SseProtocolError(f"an SSE event exceeds {self._max} bytes")
        else:
            self._buf = b""
        if lines and lines[-1].endswith(b"\r"):
            self._pending_cr = True
        for raw in lines:
            self._line(raw.rstrip(b"\r\n"), events)
        return events

    def flush(self) -> list[SseEvent]:
        """The stream ended: dispatch what is pending.

        The specification discards an event not closed by a blank line; we
        dispatch it instead, because some servers close right after their last
        `data:` line and that event (often `[DONE]`) is complete.
        """
        events: list[SseEvent] = []
        if self._buf:
            self._line(self._buf.rstrip(b"\r\n"), events)
            self._buf = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SseEvent]) -> None:
        if not line:
            if self._data:
                events.append(SseEvent(b"\n".join(self._data), self._event, self._id))
            self._data = []
            self._size = 0
            self._event = None
            return
        if line[:1] == b":":
            return  # a comment: servers send these as keep-alives
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._size += len(value) + 1
            if self._size > self._max:
                raise SseProtocolError(f"an SSE event exceeds {self._max} bytes")
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode("utf-8", "replace")
        # `retry:` and unknown fields are ignored, as the specification says.
