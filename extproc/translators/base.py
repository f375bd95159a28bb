"""The contract every response translator keeps: bytes in, bytes (or nothing) out, usage read."""

from __future__ import annotations

from typing import Protocol

from extproc.context import Usage


class ResponseTranslator(Protocol):
    """Consumes one response body, chunk by chunk, and reports what it saw."""

    usage: Usage | None
    response_model: str | None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        """Return the bytes to send the client instead of ``chunk``, or None to pass it as is."""
        ...
