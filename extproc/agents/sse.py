"""Server-sent events framing: cut a byte stream into whole events, read and replace data.

Events end at a blank line; lines end in CRLF, LF or CR (the SSE spec allows all
three, and the MCP SDK sends CRLF). Untouched events keep their exact bytes.
"""

from __future__ import annotations

import re

_LINE_END = re.compile(rb"\r\n|\r|\n")


class EventSplitter:
    """Feed bytes, get back the complete events (each with its terminating blank line)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._scan = 0

    @property
    def pending(self) -> bytes:
        """Bytes of an event not complete yet."""
        return self._buffer

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        events: list[bytes] = []
        buffer = self._buffer
        line_start = self._scan
        event_start = 0
        for match in _LINE_END.finditer(buffer, line_start):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # a CR at the end may be the first half of CRLF
            if match.start() == line_start:
                events.append(buffer[event_start : match.end()])
                event_start = match.end()
            line_start = match.end()
        self._buffer = buffer[event_start:]
        self._scan = line_start - event_start
        return events

    def flush(self) -> bytes:
        """What is left at the end of the stream (an event without its blank line)."""
        rest, self._buffer, self._scan = self._buffer, b"", 0
        return rest


def event_data(event: bytes) -> bytes | None:
    """The event's data (its ``data:`` lines joined by LF); None when it has none."""
    found: list[bytes] = []
    for line in _LINE_END.split(event):
        if line.startswith(b"data:"):
            value = line[5:]
            found.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(found) if found else None


def with_data(event: bytes, data: bytes) -> bytes:
    """The event with its data replaced by ``data`` (one line), other fields kept."""
    newline = b"\r\n" if b"\r\n" in event else b"\n"
    lines: list[bytes] = []
    placed = False
    for line in _LINE_END.split(event):
        if not line:
            continue
        if line.startswith(b"data:"):
            if not placed:
                lines.append(b"data: " + data)
                placed = True
            continue
        lines.append(line)
    if not placed:
        lines.append(b"data: " + data)
    return newline.join(lines) + newline + newline
