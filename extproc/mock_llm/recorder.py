"""What the mock LLM provider received, kept so tests can assert on what the gateway sent upstream.

The record is bounded (oldest entries fall off) so a long benchmark cannot grow it without limit.
Entries keep the raw body bytes and the already-parsed JSON; turning bytes into text is deferred to
``to_dict`` so the request hot path pays for nothing but one append.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_CAPACITY = 1000


@dataclass(frozen=True, slots=True)
class Body:
    """A request body, parsed once and shared by the recorder and the endpoint handlers."""

    raw: bytes
    is_json: bool
    json: Any  # the parsed document when is_json, else None

    @classmethod
    def parse(cls, raw: bytes) -> Body:
        if not raw:
            return cls(raw, False, None)
        try:
            return cls(raw, True, orjson.loads(raw))
        except orjson.JSONDecodeError:
            return cls(raw, False, None)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]  # lower-case name -> value; a repeated header keeps its last value
    body: Body
    received_at: float  # epoch seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query_string": self.query_string,
            "headers": self.headers,
            "body": self.body.raw.decode("utf-8", errors="replace"),
            "json": self.body.json,
            # The bytes as they came, for a body that is no JSON (an image edit's form).
            "body_base64": None if self.body.is_json else base64.b64encode(self.body.raw).decode(),
            "received_at": self.received_at,
        }


class Recorder:
    """Bounded, oldest-first record of received requests. A capacity of 0 records nothing."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 0:
            raise ValueError("recorder capacity must be >= 0")
        self._entries: deque[RecordedRequest] = deque(maxlen=capacity)
        self.enabled = capacity > 0

    def record(
        self,
        *,
        method: str,
        path: str,
        query_string: str,
        headers: Mapping[str, str],
        body: Body,
        received_at: float,
    ) -> None:
        if not self.enabled:
            return
        lowered = {name.lower(): value for name, value in headers.items()}
        self._entries.append(
            RecordedRequest(method, path, query_string, lowered, body, received_at)
        )

    def entries(self) -> list[RecordedRequest]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
