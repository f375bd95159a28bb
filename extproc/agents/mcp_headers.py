"""MCP's HTTP mirror of a request's body: the ``Mcp-Method`` and ``Mcp-Name`` headers.

Since protocol revision 2026-07-28 clients repeat the JSON-RPC method, and a
``tools/call``'s tool name, in these headers so that proxies, load balancers and
servers can route a request without reading its body; servers must refuse a
request whose headers and body disagree. The gateway checks and counts the call
the body names; a request whose headers name another one is refused before it
goes upstream, so that nothing after the gateway acts on a call other than the
one that was checked. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import re

METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
# The session the server opened at initialize; the log line keeps a digest of it.
SESSION_HEADER = "mcp-session-id"
# A value that is not visible ASCII travels base64-encoded between these markers.
_BASE64 = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")


def decode_value(value: str) -> str | None:
    """The header's value as the body would spell it; None if it cannot be read."""
    found = _BASE64.fullmatch(value)
    if found is None:
        return value
    payload = found.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        # A non-canonical encoding could be read two ways: not a value to trust.
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except ValueError:
        # binascii.Error and UnicodeDecodeError are ValueErrors, and so is base64's
        # refusal of a payload that is not ASCII (Envoy passes a header's non-ASCII
        # bytes, which the gateway reads as U+FFFD).
        return None


def mismatch(headers: dict[str, str], method: str | None, tool: str | None) -> str | None:
    """Why the mirror headers disagree with the body's ``method`` (and ``tool`` for a
    ``tools/call``); None when they agree or are absent (older clients send none)."""
    sent_method = headers.get(METHOD_HEADER)
    if sent_method is not None and method is not None and sent_method != method:
        return f"the {METHOD_HEADER} header does not match the request body's method"
    sent_name = headers.get(NAME_HEADER)
    if sent_name is not None and tool is not None and decode_value(sent_name) != tool:
        return f"the {NAME_HEADER} header does not match the tool the request body calls"
    return None


def names_a_call(headers: dict[str, str]) -> bool:
    """Whether the request carries either mirror header."""
    return METHOD_HEADER in headers or NAME_HEADER in headers
