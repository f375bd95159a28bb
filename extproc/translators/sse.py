"""Server-sent events as providers send them, cut into whole events however the
body's chunks fall.

SSE ends a line with CRLF, LF or a lone CR, and an event with an empty line; an
event's ``data:`` lines join with newlines. The stream readers and translators
normalise line ends to LF here, so each reads whole, LF-ended events.
"""

from __future__ import annotations

EVENT_END = b"\n\n"


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
    per chunk it spans.
    """

    def __init__(self) -> None:
        self._held = bytearray()
        self._after_cr = False

    def whole_events(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """The events this chunk ends (at the end of stream, all that is left); ``chunk``
        itself when it is exactly that, so a caller can tell nothing changed."""
        lines, self._after_cr = lf_lines(chunk, self._after_cr)
        if not self._held:
            cut = lines.rfind(EVENT_END)
            if end_of_stream or (cut >= 0 and cut + 2 == len(lines)):
                return lines
            if cut < 0:
                self._held += lines
                return b""
            self._held += lines[cut + 2 :]
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
            return b""
        complete = bytes(self._held[: cut + 2])
        del self._held[: cut + 2]
        return complete


def event_data(event: bytes) -> bytes:
    """The data of one LF-ended SSE event: its ``data:`` lines joined by newlines, as SSE
    joins them (a JSON object may span several)."""
    return b"\n".join(line[5:] for line in event.split(b"\n") if line.startswith(b"data:"))
