"""Incremental Server-Sent Events parsing and framing.

The parser works on raw bytes, so a UTF-8 character or an event split across network
reads is reassembled before it is decoded; ``data:`` with or without a space, CRLF
line ends, comments and multi-line data are handled as the SSE spec says.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson


class SSEParser:
    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event: bytes | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, bytes]]:
        """Yield ``(event_name, data_bytes)`` for every event completed by ``chunk``."""
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    yield (self._event.decode() if self._event else None), b"\n".join(self._data)
                self._event = None
                self._data = []
                continue
            if line[0] == 58:  # ':' comment
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._event = value
        self._buf = buf[start:]

    def flush(self) -> Iterator[tuple[str | None, bytes]]:
        """At end of stream: a final event that lacked its blank line still counts."""
        if self._buf:
            yield from self.feed(b"\n")
        if self._data:
            yield (self._event.decode() if self._event else None), b"\n".join(self._data)
            self._data = []


def frame(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
