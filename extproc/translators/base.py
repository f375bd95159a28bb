"""The contract every response translator keeps: bytes in, bytes (or nothing) out, usage read."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from extproc.context import Usage


class ResponseTranslator(Protocol):
    """Consumes one response body, chunk by chunk, and reports what it saw."""

    usage: Usage | None
    response_model: str | None
    # The status the client gets instead of the provider's, when a buffered answer
    # could not be translated and an error body replaced it (502); None otherwise.
    status: int | None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        """Return the bytes to send the client instead of ``chunk``, or None to pass it as is."""
        ...


class BufferedBodyReader:
    """A buffered (non-streaming) JSON answer: reads usage and model, passes bytes through.

    Subclasses name how their API reports usage in ``read_usage``.
    """

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # passed through as it is
        # The parsed answer, for response guards (so the body is parsed once).
        self.answer: Any = None
        self._parts: list[bytes] = []

    @staticmethod
    def read_usage(value: Any) -> Usage | None:
        raise NotImplementedError

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if end_of_stream:
            body = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
            self._parts = []
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
            self.answer = parsed
            if isinstance(parsed, dict):
                self.usage = self.read_usage(parsed.get("usage"))
                model = parsed.get("model")
                self.response_model = model if isinstance(model, str) else None
        return None
