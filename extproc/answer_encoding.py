"""Answers a provider compressed although the gateway asked for none.

The gateway drops the client's ``accept-encoding``, so providers answer uncompressed and
every answer can be read: its usage counted, its text guarded, its credentials searched
for. A provider (or a proxy in front of a model server) that compresses anyway would hide
all of that: a gzip answer's usage is unreadable, and the request was charged an estimate
of its prompt alone. Such an answer is read uncompressed (``DecompressedAnswer``) and the
client gets it so, its ``content-encoding`` removed: gzip, and deflate in zlib's format
or the raw one some servers send. An answer in an encoding the gateway cannot read (br,
zstd) passes as it came, charged as an unreadable answer is; on a route with response
guards it is refused unread instead (``stages.guardrails``).

A gzip body may be several members (RFC 1952), as a proxy that compresses each flush
writes it: each is read in turn, and bytes after the last that begin no other are
ignored, as clients ignore them.

A compressed answer cannot grow without bound in memory: a body whose decompressed size
exceeds the largest answer Envoy buffers (``envoy.max_response_body_bytes``) is not read.
A stream chunk that does breaks the stream; a buffered answer is refused (``too_large``)
and charged as one over Envoy's buffer, which its provider billed whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from extproc.translators.base import ResponseTranslator, WrappedReader

# zlib's window bits by encoding name: 31 reads gzip only; 47 reads gzip or zlib's
# format by their header, and a deflate body without one is retried as raw (-15).
_WINDOW_BITS = {"gzip": (31,), "x-gzip": (31,), "deflate": (47, -15)}
# The status of a buffered answer that could not be decompressed: the provider's answer
# was broken, as a proxy's would be.
BROKEN_STATUS = 502


def readable_encoding(encoding: str) -> bool:
    """Whether ``encoding`` (a ``content-encoding``) compresses, in a format read here."""
    return encoding.strip().lower() in _WINDOW_BITS


def sniffed_encoding(body: bytes) -> str:
    """The encoding a body's first bytes show: gzip's magic number, or zlib's header
    (deflate); "" for anything else. The lean path has no headers to read it from, and
    JSON and SSE never begin so."""
    if body[:2] == b"\x1f\x8b":
        return "gzip"
    if len(body) >= 2 and body[0] == 0x78 and (body[0] << 8 | body[1]) % 31 == 0:
        return "deflate"
    return ""


def decoded_opening(body: bytes, encoding: str, size: int = 64) -> bytes:
    """The first ``size`` bytes, at most, of ``body`` decoded (the first part of an answer
    will do): what it opens with, for the lean path to tell a stream from JSON. b"" when
    it does not decode."""
    for wbits in _WINDOW_BITS.get(encoding.strip().lower(), ()):
        try:
            out = zlib.decompressobj(wbits).decompress(body, size)
        except zlib.error:
            continue
        if out:
            return out
    return b""


def decoded(body: bytes, encoding: str, limit: int) -> bytes | None:
    """``body`` decoded from its ``content-encoding`` (gzip, or deflate: zlib's format or
    the raw one), at most ``limit`` bytes of it; None when it is in another encoding,
    broken, cut short or larger."""
    out = _decoded(body, encoding, limit)
    return out if isinstance(out, bytes) else None


# ``_decoded``'s answer for a body larger, decoded, than its limit.
_TOO_LARGE = object()


def _decoded(body: bytes, encoding: str, limit: int) -> bytes | object | None:
    for wbits in _WINDOW_BITS.get(encoding.strip().lower(), ()):
        decoder = zlib.decompressobj(wbits)
        try:
            out = decoder.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            return _TOO_LARGE
        if not decoder.eof:
            return None
        if wbits == 31:
            return _later_members(out, decoder.unused_data, limit)
        return out
    return None


def _later_members(first: bytes, rest: bytes, limit: int) -> bytes | object | None:
    """A gzip body's members after its first, decoded and joined to it (RFC 1952: a
    body may be several members, as a proxy that compresses each flush writes it).
    Bytes after the last member that begin no other are ignored, as clients do."""
    parts = [first]
    size = len(first)
    while rest[:2] == b"\x1f\x8b":
        decoder = zlib.decompressobj(31)
        try:
            out = decoder.decompress(rest, limit - size + 1)
        except zlib.error:
            return None
        size += len(out)
        if size > limit:
            return _TOO_LARGE
        if not decoder.eof:
            return None
        parts.append(out)
        rest = decoder.unused_data
    return b"".join(parts)


class StreamDecoder:
    """A compressed stream, decoded chunk by chunk: a raw deflate stream is told apart
    from zlib's format by its first bytes, which are kept until then."""

    def __init__(self, encoding: str, limit: int) -> None:
        self._formats = list(_WINDOW_BITS[encoding.strip().lower()])
        self._decoder = zlib.decompressobj(self._formats[0])
        self._limit = limit
        # The bytes read so far, while a second format may still be tried.
        self._start: bytes | None = b""
        # Past a gzip stream's last member: what follows is not read.
        self._trailing = False

    def decode(self, chunk: bytes) -> bytes:
        """The chunk's decoded bytes; raises zlib.error for a broken or oversize stream."""
        try:
            out = self._decode(chunk)
        except zlib.error:
            if self._start is None or len(self._formats) < 2:
                raise
            # Not zlib's header: a raw deflate stream, read again from its first byte.
            self._formats.pop(0)
            self._decoder = zlib.decompressobj(self._formats[0])
            chunk, self._start = self._start + chunk, None
            out = self._decode(chunk)
        if self._start is not None:
            if out:
                self._start = None  # the format read data: it is the stream's
            else:
                self._start += chunk
        return out

    def _decode(self, chunk: bytes) -> bytes:
        if self._trailing:
            return b""
        out = self._inflate(chunk)
        # A gzip stream may be several members (RFC 1952), as a proxy that compresses
        # each flush writes it: each is read in turn. Bytes after a member that begin
        # no other are ignored, as clients do.
        while self._decoder.eof and self._formats[0] == 31:
            rest = self._decoder.unused_data
            if not b"\x1f\x8b".startswith(rest[:2]):
                self._trailing = True
                break
            if len(rest) < 2:
                break  # the next member's magic number, cut: kept until it comes whole
            self._decoder = zlib.decompressobj(31)
            out += self._inflate(rest, len(out))
        return out

    def _inflate(self, data: bytes, decoded: int = 0) -> bytes:
        """``data`` decoded by the current member's decoder (``decoded`` bytes of the
        chunk came before it)."""
        out = self._decoder.decompress(data, self._limit - decoded + 1)
        if decoded + len(out) > self._limit or self._decoder.unconsumed_tail:
            raise zlib.error("a chunk decompresses to more than the largest answer")
        return out


class DecompressedAnswer(WrappedReader):
    """A reader fed its provider's compressed answer uncompressed.

    The client gets the uncompressed bytes (or what the reader makes of them), its
    ``content-encoding`` removed by the plan; on the lean path (``reencode``), whose
    headers have left naming the provider's encoding, it gets them compressed again in
    that encoding, and an answer the reader passes unchanged goes as it came.

    A stream (``streamed``) is decoded chunk by chunk as it comes; a stream that breaks
    feeds its reader nothing more, and the client nothing more: it ends as a stream cut
    short, charged as one. Its generated text, the bill of a stream that ends without its
    usage report, is counted in the decoded bytes (``count``, ``generated_chars``), up to
    their last line end as ``stages.partial_usage`` counts a stream's own bytes: the
    compressed bytes show none. A buffered answer is decoded whole at its end; one that
    cannot be is the client's ``BROKEN_STATUS`` with ``broken_body(too_large)``, charged
    as an answer the gateway could not translate, or, when it is larger decoded than the
    largest answer (``too_large``), as an answer over Envoy's buffer (on the lean path,
    with no ``broken_body``, it goes as it came)."""

    def __init__(
        self,
        reader: ResponseTranslator,
        encoding: str,
        limit: int,
        *,
        streamed: bool,
        reencode: bool = False,
        broken_body: Callable[[bool], bytes] | None = None,
        count: Callable[[bytes], int] | None = None,
    ) -> None:
        super().__init__(reader)
        # Counts the generated text of decoded stream bytes; None for a buffered answer,
        # or a reader that counts it in what it decodes itself (Bedrock's frames).
        counts_itself = isinstance(getattr(reader, "generated_chars", None), int)
        self._count = count if streamed and not counts_itself else None
        self._counted = 0
        # The decoded bytes after the last line end, counted once their line ends.
        self._unfinished_line = bytearray()
        self._encoding = encoding
        self._limit = limit
        self._stream = StreamDecoder(encoding, limit) if streamed else None
        self._encoder = _encoder(encoding) if reencode else None
        self._broken_body = broken_body
        self._broken = False
        # A buffered answer larger, decoded, than the largest answer.
        self.too_large = False
        self._parts: list[bytes] = []
        self._status: int | None = None
        # What the client was sent of the last chunk, uncompressed (a buffered answer's
        # all at its end): on the lean path it gets those bytes compressed again (or the
        # provider's compressed bytes as they came), in which neither the stream's end
        # marker (``stages.response``) nor the finish reasons and text the log line
        # records (``stages.telemetry``) can be read.
        self.decoded_sent = b""

    @property
    def status(self) -> int | None:
        return self._status if self._status is not None else self._reader.status

    @status.setter
    def status(self, value: int | None) -> None:
        self._reader.status = value

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if self._stream is None:
            return self._feed_whole(chunk, end_of_stream)
        data = b""
        if not self._broken:
            try:
                data = self._stream.decode(chunk)
            except zlib.error:
                self._broken = True
        sent = b""
        if data or end_of_stream:
            self._count_text(data, end_of_stream)
        if not self._broken or end_of_stream:
            out = self._reader.feed(data, end_of_stream)
            sent = data if out is None else out
        self.decoded_sent = sent
        return self._encoded(sent, end_of_stream)

    @property
    def generated_chars(self) -> int | None:
        """The characters of generated text the stream carried (``stages.partial_usage``):
        the reader's own count when it keeps one (it reads decoded frames), else the
        count of the decoded bytes; None for a buffered answer."""
        counted = getattr(self._reader, "generated_chars", None)
        if isinstance(counted, int):
            return counted
        return self._counted if self._count is not None else None

    def _count_text(self, data: bytes, end_of_stream: bool) -> None:
        """Count the generated text of the decoded lines ``data`` ends (all at the end):
        a value cut between two chunks is counted whole, once."""
        if self._count is None:
            return
        end = len(data) if end_of_stream else max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        held = self._unfinished_line
        if not end and not end_of_stream:
            # No line end yet. A line never longer than the largest answer: past it, the
            # broken line is dropped, as partial_usage drops one.
            if len(held) + len(data) > self._limit:
                held.clear()
            else:
                held += data
            return
        self._counted += self._count(bytes(held) + data[:end] if held else data[:end])
        self._unfinished_line = bytearray(data[end:])

    def _feed_whole(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if not end_of_stream:
            return b""
        parts, self._parts = self._parts, []
        body = _decoded(b"".join(parts), self._encoding, self._limit)
        self.decoded_sent = body if isinstance(body, bytes) else b""
        if not isinstance(body, bytes):
            # The provider generated and billed an answer this large: charged as one
            # over Envoy's buffer (cut_answer), not as a broken one.
            self.too_large = body is _TOO_LARGE
            if self._broken_body is not None:
                if self._encoder is None:
                    self._status = BROKEN_STATUS  # the lean path's status has left
                return self._broken_body(self.too_large)
            body = None
        out = self._reader.feed(body, True) if body is not None else None
        if out is not None:
            self.decoded_sent = out
            return self._encoded(out, True)
        if self._encoder is None and body is not None:
            return body
        # Unchanged on the lean path: as it came (the earlier chunks were held back).
        return None if len(parts) == 1 else b"".join(parts)

    def _encoded(self, data: bytes, end_of_stream: bool) -> bytes:
        encoder = self._encoder
        if encoder is None:
            return data
        if end_of_stream:
            return encoder.compress(data) + encoder.flush(zlib.Z_FINISH)
        # Flushed chunk by chunk, so the client reads each as it comes.
        return encoder.compress(data) + encoder.flush(zlib.Z_SYNC_FLUSH) if data else b""


def _encoder(encoding: str) -> zlib._Compress:
    """A compressor writing ``encoding``: gzip, or deflate in zlib's format."""
    wbits = 31 if encoding.strip().lower() in ("gzip", "x-gzip") else 15
    return zlib.compressobj(wbits=wbits)
