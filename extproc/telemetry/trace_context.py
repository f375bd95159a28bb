"""W3C Trace Context: the trace id out of a ``traceparent`` value.

Envoy's tracer sends ``traceparent`` on the gateway's ext_proc stream (the
stream's span is a child of the request's span, so both share the trace id);
without a tracer, a client's own ``traceparent`` passes through as a request
header. Either way the log line's ``trace_id`` is the trace a span search finds.
"""

from __future__ import annotations

import re

# version "-" trace-id "-" parent-id "-" flags; version ff is invalid, and an
# all-zero trace id means "no trace".
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE = "0" * 32


def parse_traceparent(value: str) -> str | None:
    """The 32-hex-digit trace id, or None when the header is not a valid traceparent."""
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == "ff" or match.group(2) == _NO_TRACE:
        return None
    return match.group(2)
