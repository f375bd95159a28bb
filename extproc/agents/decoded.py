"""Agent answers a server compressed although the gateway asked for none.

The gateway drops the client's ``accept-encoding`` on every request whose answer it
reads, but a server (or a proxy or middleware in front of it) may compress anyway. A
tool list in such an answer cannot be filtered as it comes: passed on, it reached the
client whole, the tools access rules hide included. So an answer in an encoding the
standard library reads (gzip, deflate in zlib's format or raw: ``answer_encoding``) is
decoded chunk by chunk before its reader sees it, and the client gets it uncompressed,
its ``content-encoding`` and length removed by the stage. One in another encoding (br,
zstd) cannot be read: the stage fails it closed where it must be read.

A chunk never decodes to more than ``MAX_HELD_BYTES`` (a decompression bomb), and a
stream that is broken (not the encoding it names) or past that size ends where it
broke: its reader gets the end of the answer then, so a tool list still awaited fails
closed, and nothing after the break reaches the client, read or not.
"""

from __future__ import annotations

import zlib
from typing import Protocol

from extproc.agents.answers import MAX_HELD_BYTES
from extproc.answer_encoding import StreamDecoder


class AnswerFeed(Protocol):
    """What reads an answer: ``feed`` per chunk, the bytes to send instead or None."""

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None: ...


class DecodedAnswer:
    """``reader`` fed the answer uncompressed; the client gets the decoded bytes, or what
    the reader makes of them."""

    def __init__(self, reader: AnswerFeed, encoding: str) -> None:
        self.reader = reader
        self._decoder = StreamDecoder(encoding, MAX_HELD_BYTES)
        self._broken = False

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        if self._broken:
            return b""  # the answer ended, for its reader and the client, where it broke
        try:
            data = self._decoder.decode(chunk)
        except zlib.error:
            # What decoded before the break was read; the reader concludes on it (a
            # list it still awaits becomes its JSON-RPC error), and the rest goes nowhere.
            self._broken = True
            data, end_of_stream = b"", True
        out = self.reader.feed(data, end_of_stream)
        return data if out is None else out
