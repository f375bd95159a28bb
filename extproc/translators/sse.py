"""Server-sent events as providers send them, cut into whole events however the
body's chunks fall.

SSE ends a line with CRLF, LF or a lone CR, and an event with an empty line; an
event's ``data:`` lines join with newlines. The stream readers and translators
normalise line ends to LF here, so each reads whole, LF-ended events.

An event is held until its end arrives, but not past ``MAX_EVENT_BYTES``: a provider (or
a broken proxy in front of it) sending an event that never ends would otherwise make the
gateway hold all of it. Past the limit the buffer drops the event (``overflowed``) and a
reader fails the stream with ``event_too_large()``, as a provider's own error inside a
stream fails it: the client reads the error last, and the request is charged what the
provider reported plus an estimate of the rest (``stages.partial_usage``).

A body that ends inside an event (the upstream reset mid-line, or the body ended before
the rest of its data lines) ends with that event unfinished. SSE clients never dispatch
it, and one the gateway closed with a blank line failed the SDK's JSON parse instead of
reading the gateway's error after it; so the buffer drops it (``unfinished`` keeps it,
for a reader that counts its text), and a reader ends the stream as one cut between
events. A last event whose data is whole, only its blank line missing, is read and sent
as whole, with that blank line (``WholeEventBytes``).
"""

from __future__ import annotations

import re

import orjson

from extproc.errors import GatewayError, UpstreamError

EVENT_END = b"\n\n"
# The longest unfinished event held between chunks. No provider's event comes near it (a
# whole answer is far smaller, a web fetch's document result too), so an event past it
# means a broken stream. The same as envoy.max_response_body_bytes' default, the largest
# answer Envoy buffers whole for the gateway; a fixed figure because the readers are built
# per answer, without the config.
MAX_EVENT_BYTES = 32 * 1024 * 1024


def event_too_large(limit: int = MAX_EVENT_BYTES) -> GatewayError:
    """The error a stream ends with when an event ran past ``limit`` (``EventBuffer``)."""
    return UpstreamError(
        f"the provider sent a stream event longer than {limit} bytes; the gateway ended the stream",
        code="upstream_event_too_large",
    )


def lf_lines(chunk: bytes, after_cr: bool) -> tuple[bytes, bool]:
    """``chunk`` with every SSE line end (CRLF, LF or a lone CR) made one LF, and whether
    it ended with a CR.

    A CR that ends a chunk is a whole line end at once; an LF opening the next chunk
    (``after_cr``) is then the rest of that CRLF, not a second line end. Raw CRs only
    ever end lines (JSON escapes them inside strings).
    """
    if not chunk:
        return chunk, after_cr
    if after_cr and chunk.startswith(b"\n"):
        chunk = chunk[1:]
    ends_cr = chunk.endswith(b"\r")
    if b"\r" in chunk:
        chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return chunk, ends_cr


class EventBuffer:
    """Cuts an SSE body, however its chunks fall, into whole events with LF line ends.

    The start of an event whose end has not come waits here. Only the new bytes are
    searched for an event's end, so a very large event costs its length once, not once
    per chunk it spans. An event that grows past ``max_event_bytes`` unfinished is dropped,
    up to its end if one ever comes, and ``overflowed`` is set for good: what the stream's
    reader makes of it (it fails the stream) is its own.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        # Set once an event ran past the limit; the events after it are cut as before.
        self.overflowed = False
        self._held = bytearray()
        self._after_cr = False
        # While an oversized event is dropped: its last byte (its end may straddle chunks).
        self._dropping: bytes | None = None
        # The event the body ended inside of, dropped at the end of stream; empty if none.
        self.unfinished = b""

    def whole_events(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """The events this chunk ends; ``chunk`` itself when it is exactly that, so a
        caller can tell nothing changed. At the end of stream what is left after the last
        whole event is dropped: an event left unfinished (``unfinished``), or comments."""
        lines, self._after_cr = lf_lines(chunk, self._after_cr)
        if self._dropping is not None:
            rest = self._rest_after_dropped(lines)
            if rest is None:
                return b""
            lines = rest
        if not self._held:
            cut = lines.rfind(EVENT_END)
            if cut >= 0 and cut + 2 == len(lines):
                return lines
            if end_of_stream:
                return self._ended(lines, cut)
            if cut < 0:
                self._hold(lines)
                return b""
            self._hold(lines[cut + 2 :])
            return lines[: cut + 2]
        # From the held text's last byte on: an event's end may straddle the two.
        start = len(self._held) - 1
        self._held += lines
        if end_of_stream:
            complete = bytes(self._held)
            self._held.clear()
            return self._ended(complete, complete.rfind(EVENT_END, max(start, 0)))
        cut = self._held.rfind(EVENT_END, start)
        if cut < 0:
            self._check_size()
            return b""
        complete = bytes(self._held[: cut + 2])
        del self._held[: cut + 2]
        self._check_size()
        return complete

    def _ended(self, lines: bytes, cut: int) -> bytes:
        """The whole events of the body's last bytes ``lines`` (the last ends at ``cut``),
        without what follows them: an event the body ended inside of, kept as
        ``unfinished``, or only comments and blank lines, which say nothing."""
        whole, rest = (lines[: cut + 2], lines[cut + 2 :]) if cut >= 0 else (b"", lines)
        if not _holds_a_field(rest):
            return lines if len(whole) == len(lines) else whole
        if _whole_data(rest):
            # Only its blank line is missing: the event is whole, and read as one.
            return whole + rest.rstrip(b"\n") + EVENT_END
        self.unfinished = rest
        return whole

    def _hold(self, unfinished: bytes) -> None:
        self._held += unfinished
        self._check_size()

    def _check_size(self) -> None:
        """Drop the held event once it is longer than the limit."""
        if len(self._held) <= self.max_event_bytes:
            return
        self.overflowed = True
        self._dropping = bytes(self._held[-1:])
        # A new, empty buffer, so the old one's memory goes with it.
        self._held = bytearray()

    def _rest_after_dropped(self, lines: bytes) -> bytes | None:
        """What follows the end of the event being dropped; None while it goes on."""
        assert self._dropping is not None
        seen = self._dropping + lines
        cut = seen.find(EVENT_END)
        if cut < 0:
            self._dropping = seen[-1:]
            return None
        self._dropping = None
        return seen[cut + 2 :]


def _holds_a_field(lines: bytes) -> bool:
    """Whether LF-ended ``lines`` hold an event's start: its ``event`` or ``data`` field
    (comments, blank lines and lines no client reads say nothing)."""
    return any(line.startswith((b"data", b"event")) for line in lines.split(b"\n"))


def _whole_data(event: bytes) -> bool:
    """Whether the LF-ended lines of an event the body ended without its blank line carry
    whole data: JSON that parses (or OpenAI's ``[DONE]``), not a line cut short."""
    data = event_data(event)
    if not data:
        return False
    if data.strip() == b"[DONE]":
        return True
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def event_data(event: bytes) -> bytes:
    """The data of one LF-ended SSE event: its ``data:`` lines joined by newlines, as SSE
    joins them (a JSON object may span several)."""
    return b"\n".join(line[5:] for line in event.split(b"\n") if line.startswith(b"data:"))


# Two line ends in a row, each CRLF, LF or CR: where an event ends, in a provider's bytes.
# A CR followed by an LF is one line end, never two: a CRLF alone ends a line of an event,
# not the event (taken for two, it let an event's first lines reach the client before the
# event's end, where a cut stream's closing error event then joined them).
_RAW_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_RAW_ENDS = (b"\n\n", b"\r\r", b"\r\n\r\n")
# What is held of an unfinished event, in the provider's bytes: CRLF line ends at most
# double its length with LF ones, which EventBuffer's bound counts.
_MAX_RAW_BYTES = 2 * MAX_EVENT_BYTES


class WholeEventBytes:
    """A provider's bytes as they came, up to the end of the last whole event: what a
    passed-through stream's client may have yet. The start of an event waits for its end,
    so one the body ends inside of (``EventBuffer.unfinished``) never reaches the client.

    The bytes are the provider's own (Google's CRLF line ends stay), so a chunk that ends
    an event passes unchanged. Only the cut point is searched for, in the new bytes.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = bytearray()

    def take(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """The bytes up to the last event's end (``chunk`` itself when it ends one and
        nothing was held); the rest is held until its end comes. At the stream's end,
        what is left goes too, unless it is an event left unfinished: line ends and
        comments say nothing, but are the provider's bytes."""
        if not self._held and chunk.endswith(_RAW_ENDS):
            return chunk
        if end_of_stream:
            rest = bytes(self._held) + chunk
            self.clear()
            cut = _last_event_end(rest)
            last = lf_lines(rest[cut:], False)[0]
            if not _holds_a_field(last):
                return chunk if len(rest) == len(chunk) else rest
            if _whole_data(last):
                # Only its blank line is missing (SSE clients would drop the event).
                return rest + (b"\n" if rest.endswith((b"\n", b"\r")) else EVENT_END)
            return rest[:cut]
        start = max(len(self._held) - 3, 0)  # a line end may straddle the chunks
        self._held += chunk
        end = _last_event_end(self._held, start)
        if not end:
            if len(self._held) > _MAX_RAW_BYTES:
                # An event too long to hold: a reader that ends the stream on it (its
                # EventBuffer, counting LF line ends, passed the bound first) has cleared
                # this; one that goes on sends it as it came.
                whole = bytes(self._held)
                self.clear()
                return whole
            return b""
        whole = bytes(self._held[:end])
        del self._held[:end]
        return whole

    def clear(self) -> None:
        """Drop what is held (an event too long to hold, or one the body ended inside)."""
        self._held = bytearray()


def _last_event_end(data: bytes | bytearray, start: int = 0) -> int:
    """Where the last event in ``data`` (searched from ``start``) ends; 0 for none.

    A run of line ends ends an event at each second one, counted from its start, as
    ``_RAW_EVENT_END`` matches them. Bytes with LF line ends only, as most providers
    send, are searched from the right for their last run: the pattern, which starts
    with no fixed byte, is tried at every byte (16 us for 2 KB of events)."""
    if b"\r" not in data:
        last = data.rfind(b"\n\n", start)
        if last < 0:
            return 0
        run = last  # the last "\n\n" ends its run of LFs: the run starts before it
        while run > start and data[run - 1] == 0x0A:
            run -= 1
        return run + (last + 2 - run) // 2 * 2
    end = 0
    for found in _RAW_EVENT_END.finditer(data, start):
        end = found.end()
    return end
