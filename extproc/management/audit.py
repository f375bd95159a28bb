"""The audit trail of the management API: one JSON line per change, on stderr.

Not on stdout: stdout carries only request log lines of schema v1
(docs/logging.md), which log pipelines validate strictly. A line names the
caller by its admin token's id, never by the token.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson


class AuditLog:
    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr.buffer

    def write(self, action: str, caller: str, **fields: Any) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        record = {
            "audit": True,
            "timestamp": now.replace("+00:00", "Z"),
            "action": action,
            "caller": caller,
            **fields,
        }
        # One write per line keeps lines whole next to the diagnostic log.
        self._stream.write(orjson.dumps(record) + b"\n")
        self._stream.flush()
