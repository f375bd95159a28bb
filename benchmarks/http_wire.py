"""HTTP/1.1 and SSE on the wire, for the benchmark's own cheap clients and upstream.

No I/O here: bytes in, figures out, so the parsers are tested without sockets
(tests/unit/test_bench_http_wire.py). The stream and memory rows use them
instead of an HTTP library because the client shares two cores with what it
measures: a feed-based parser costs a few microseconds per read, and it sees
the transfer chunks Envoy really sent, which is what "chunks received" means
in the streaming row.

- ``format_request``: one request's bytes (keep-alive, content-length body).
- ``ChunkedDecoder``: chunked transfer encoding -> payload, counting chunks.
- ``ResponseReader``: a response's status, headers and body, incrementally.
- ``SseEvents``: server-sent events in a payload fed in arbitrary pieces.
- ``check_chat_stream``: is a stream's tail an OpenAI stream with usage and [DONE]?
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping

CRLF = b"\r\n"
DONE_EVENT = b"data: [DONE]"


class WireError(ValueError):
    """The peer sent something that is not the HTTP it should be."""


def format_request(
    method: str, path: str, headers: Mapping[str, str], body: bytes = b"", host: str = "bench"
) -> bytes:
    """A keep-alive HTTP/1.1 request with a content-length body."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ChunkedDecoder:
    """Decodes ``transfer-encoding: chunked``; ``chunks`` counts the non-empty chunks seen."""

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # payload bytes left in the current chunk
        self._crlf_due = False  # the CRLF after a chunk's payload
        self.chunks = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The payload carried by ``data``; bytes after the last chunk are an error."""
        if self.done:
            if data:
                raise WireError("bytes after the end of a chunked body")
            return b""
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        position = 0
        while position < len(buffer):
            if self._remaining:
                take = min(self._remaining, len(buffer) - position)
                out.append(buffer[position : position + take])
                position += take
                self._remaining -= take
                if self._remaining == 0:
                    self._crlf_due = True
                continue
            if self._crlf_due:
                if len(buffer) - position < 2:
                    break
                if buffer[position : position + 2] != CRLF:
                    raise WireError("chunk payload not followed by CRLF")
                position += 2
                self._crlf_due = False
                continue
            end = buffer.find(CRLF, position)
            if end < 0:
                break
            size_text = buffer[position:end].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise WireError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                # The last chunk: no trailers are expected, just the final CRLF.
                if len(buffer) - end < 4:
                    break
                if buffer[end + 2 : end + 4] != CRLF:
                    raise WireError("trailers after the last chunk are not supported")
                if end + 4 != len(buffer):
                    raise WireError("bytes after the end of a chunked body")
                self.done = True
                position = len(buffer)
                break
            self.chunks += 1
            self._remaining = size
            position = end + 2
        self._buffer = buffer[position:]
        return b"".join(out)


class ResponseReader:
    """One HTTP/1.1 response, fed as it arrives: ``feed`` returns the body bytes it carried."""

    def __init__(self) -> None:
        self._head = b""
        self._chunked: ChunkedDecoder | None = None
        self._length_left: int | None = None
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.complete = False

    @property
    def chunks(self) -> int:
        """Transfer chunks received (0 for a content-length body)."""
        return self._chunked.chunks if self._chunked else 0

    def feed(self, data: bytes) -> bytes:
        if self.status is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 65536:
                    raise WireError("response head over 64 KiB")
                return b""
            self._parse_head(self._head[:end])
            data, self._head = self._head[end + 4 :], b""
        if self._chunked is not None:
            body = self._chunked.feed(data)
            self.complete = self._chunked.done
            return body
        assert self._length_left is not None
        if len(data) > self._length_left:
            raise WireError("more body than content-length announced")
        self._length_left -= len(data)
        self.complete = self._length_left == 0
        return data

    def _parse_head(self, head: bytes) -> None:
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise WireError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
        self.status = int(parts[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked = ChunkedDecoder()
        else:
            length = self.headers.get("content-length")
            if length is None or not length.isdigit():
                raise WireError("response without content-length or chunked encoding")
            self._length_left = int(length)
            self.complete = self._length_left == 0


class SseEvents:
    """Counts server-sent events (blank-line terminated) in a payload fed in any pieces.

    Only the first event and the last ``keep`` events are kept, so a 1,000-event
    stream costs one ``split`` per read and no JSON parsing. Events are
    separated by LF LF, as OpenAI and the bench upstream send them.
    """

    def __init__(self, keep: int = 3) -> None:
        self._partial = b""
        self.count = 0
        self.first: bytes | None = None
        self.last: deque[bytes] = deque(maxlen=keep)

    def feed(self, payload: bytes) -> int:
        """Adds a piece of the stream; returns how many events it completed."""
        if not payload:
            return 0
        parts = (self._partial + payload).split(b"\n\n")
        self._partial = parts.pop()
        events = [part for part in parts if part.strip()]
        if events:
            if self.first is None:
                self.first = events[0]
            self.count += len(events)
            self.last.extend(events[-(self.last.maxlen or 1) :])
        return len(events)

    @property
    def leftover(self) -> bytes:
        """Bytes after the last complete event (should be empty once a stream ended)."""
        return self._partial


def check_chat_stream(events: SseEvents, expected_chunks: int | None = None) -> str | None:
    """None if the events are an OpenAI chat stream whose last chunk has usage, then [DONE],
    with at least ``expected_chunks`` chunks."""
    if events.count == 0 or events.first is None:
        return "no server-sent event received"
    if events.leftover.strip():
        return f"stream ended inside an event: {events.leftover[:80]!r}"
    tail = list(events.last)
    if tail[-1].strip() != DONE_EVENT:
        return f"stream does not end with [DONE]: {tail[-1][:80]!r}"
    if len(tail) < 2:
        return "no chunk before [DONE]"
    first, last = _chunk_json(events.first), _chunk_json(tail[-2])
    if first is None or first.get("object") != "chat.completion.chunk":
        return f"first event is not a chat.completion.chunk: {events.first[:120]!r}"
    usage = last.get("usage") if last else None
    if not isinstance(usage, dict) or not usage.get("completion_tokens"):
        return f"last chunk before [DONE] carries no usage: {tail[-2][:200]!r}"
    # At least: a response guard holding text back across chunks may re-split it.
    if expected_chunks is not None and events.count < expected_chunks + 1:
        return f"{events.count - 1} chunks before [DONE], expected {expected_chunks}"
    return None


def _chunk_json(event: bytes) -> dict[str, object] | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                value = json.loads(line[5:])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None
