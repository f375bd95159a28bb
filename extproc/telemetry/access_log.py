"""The per-request JSON log: one line per request on stdout (and optionally a file).

The line's fields are schema v1, documented in docs/log-schema.md and
docs/log-schema.json. No prompt text and no credential is ever written.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from extproc.context import RequestContext

SCHEMA_VERSION = 1


def access_record(ctx: RequestContext) -> dict[str, Any]:
    """Build the schema v1 log record of one finished request."""
    error = ctx.error
    identity = ctx.identity
    finished = ctx.elapsed_ms()
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "timestamp": datetime.fromtimestamp(ctx.started_wall, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "request_id": ctx.request_id,
        "method": ctx.method,
        "path": ctx.path.split("?", 1)[0],
        "route": ctx.route.name if ctx.route else None,
        "provider": ctx.provider,
        "model": ctx.model,
        "upstream_model": ctx.upstream_model,
        "response_model": ctx.response_model,
        "stream": ctx.stream,
        "http_status_code": ctx.response_status,
        "prompt_tokens": ctx.usage.prompt_tokens,
        "completion_tokens": ctx.usage.completion_tokens,
        "total_tokens": ctx.usage.total_tokens,
        "usage_reported": ctx.usage_reported,
        "usage_estimated": ctx.usage_estimated,
        "api_key_id": identity.api_key_id,
        "user_id": identity.user_id,
        "group_id": identity.group_id,
        "auth_method": identity.method,
        "jwt_provider": identity.jwt_provider,
        "claims": identity.claims or None,
        "latency_ms": round(finished, 3),
        "time_to_first_byte_ms": (
            round((ctx.first_byte_at - ctx.started) * 1000.0, 3) if ctx.first_byte_at else None
        ),
        "outcome": _outcome(ctx),
        "error_type": error.error_type if error else None,
        "error_message": error.message if error else None,
    }
    return record


def _outcome(ctx: RequestContext) -> str:
    if ctx.error is not None:
        return "rejected"
    if ctx.aborted:
        return "aborted"
    if ctx.response_status >= 400:
        return "upstream_error"
    return "completed"


class AccessLog:
    def __init__(self, *, stdout: bool = True, file: str | None = None) -> None:
        self._streams: list[IO[bytes]] = []
        if stdout:
            self._streams.append(sys.stdout.buffer)
        self._file: IO[bytes] | None = None
        if file:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
            self._file = Path(file).open("ab")  # noqa: SIM115 - kept open for the process
            self._streams.append(self._file)

    def write(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record) + b"\n"
        for stream in self._streams:
            # One write per line keeps lines whole when several processes share stdout.
            stream.write(line)
            stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
