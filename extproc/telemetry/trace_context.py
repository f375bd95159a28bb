"""W3C Trace Context: the trace id out of a ``traceparent`` value.

Envoy's tracer sends ``traceparent`` on the gateway's ext_proc stream (the
stream's span is a child of the request's span, so both share the trace id);
without a tracer, a client's own ``traceparent`` passes through as a request
header. Either way the log line's ``trace_id`` is the trace a span search finds.

A value the W3C rules call invalid gives no trace id: a tracer that follows them
(Envoy's, the provider's) ignores it and starts a trace of its own, so the log
line must not name the client's. Upper-case hex digits are accepted, as Envoy's
tracer accepts them; the id is given in lower case, as collectors show it.
"""

from __future__ import annotations

import re

# version "-" trace-id "-" parent-id "-" flags, then, from a later version only, more
# fields after a "-". Version 00 is exactly these 55 characters: anything after them
# (two traceparent headers joined by a comma, a stray character) makes it invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?")
# Version ff is forbidden, and all-zero ids mean "no trace" and "no parent".
_INVALID_VERSION = "ff"
_NO_TRACE = "0" * 32
_NO_PARENT = "0" * 16


def parse_traceparent(value: str) -> str | None:
    """The 32-hex-digit trace id, or None when the header is not a valid traceparent."""
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None:
        return None
    version, trace_id, parent_id, rest = match.groups()
    if version == _INVALID_VERSION or (version == "00" and rest is not None):
        return None
    if trace_id == _NO_TRACE or parent_id == _NO_PARENT:
        return None
    return str(trace_id)
