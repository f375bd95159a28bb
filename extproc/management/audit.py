"""The audit trail of the management API: one JSON line per change asked for, on stderr.

Not on stdout: stdout carries only request log lines of schema v1
(docs/logging.md), which log pipelines validate strictly. A line names the
caller by its admin token's id (never by the token) and its network address,
and says how the change ended (``outcome``):

* ``applied``: the store confirmed it (``before`` and ``after`` states; a line
  without ``after`` and with an ``error`` means the new state could not be read);
* ``failed``: the store did not answer before anything was sent; nothing changed;
* ``unknown``: the store did not confirm a change that was sent: it may be in force;
* ``refused``: the call carried no valid admin token; nothing was sent (``caller`` is
  null: the line names the address, never what the call presented).

A call cancelled before it ended (its caller's deadline passed, it hung up, the
gateway is stopping) is audited the same way, by how far it got, its ``error``
saying it was cancelled.

Requests refused as invalid (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS) change
nothing and are not audited. A change asked for without a valid admin token is
audited as ``refused``: a security team reads tries at the admin API in the same
trail as the changes. Reads refused so leave a warning with the caller's address
in the diagnostic log only.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

import orjson

Outcome = Literal["applied", "failed", "unknown", "refused"]


class AuditLog:
    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr.buffer

    def write(self, action: str, caller: str | None, outcome: Outcome, **fields: Any) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        record = {
            "audit": True,
            "timestamp": now.replace("+00:00", "Z"),
            "action": action,
            "caller": caller,
            "outcome": outcome,
            **fields,
        }
        # One write per line keeps lines whole next to the diagnostic log.
        self._stream.write(orjson.dumps(record) + b"\n")
        self._stream.flush()
