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
"""

from __future__ import annotations

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

    def whole_events(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """The events this chunk ends (at the end of stream, all that is left); ``chunk``
        itself when it is exactly that, so a caller can tell nothing changed."""
        lines, self._after_cr = lf_lines(chunk, self._after_cr)
        if self._dropping is not None:
            rest = self._rest_after_dropped(lines)
            if rest is None:
                return b""
            lines = rest
        if not self._held:
            cut = lines.rfind(EVENT_END)
            if end_of_stream or (cut >= 0 and cut + 2 == len(lines)):
                return lines
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
            return complete
        cut = self._held.rfind(EVENT_END, start)
        if cut < 0:
            self._check_size()
            return b""
        complete = bytes(self._held[: cut + 2])
        del self._held[: cut + 2]
        self._check_size()
        return complete

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


def event_data(event: bytes) -> bytes:
    """The data of one LF-ended SSE event: its ``data:`` lines joined by newlines, as SSE
    joins them (a JSON object may span several)."""
    return b"\n".join(line[5:] for line in event.split(b"\n") if line.startswith(b"data:"))
