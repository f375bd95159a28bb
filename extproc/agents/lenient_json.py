"""A second reading of an answer orjson refuses, as a lax client's parser reads it.

orjson is strict: it refuses a UTF-8 byte-order mark, UTF-16 or UTF-32 text, a
lone surrogate escape (``"\\ud83d"``, which ``JSON.stringify`` writes for a string
cut inside an emoji), ``NaN`` and invalid UTF-8. Clients read these: fetch's
``json()`` drops the BOM, Python's ``json`` takes the rest, Go's ``encoding/json``
replaces invalid UTF-8. An answer only read for tool lists the caller must not see
(a tool call's, a ping's) is read this way when orjson refuses it, so that such a
list is filtered, and a tool's result with a cut emoji in it still reaches the client.
"""

from __future__ import annotations

import json
from typing import Any

# How "tools" can reach a parser: written out in any case (Go's encoding/json reads
# "Tools", and "tool\u017f" with a long s, as "tools"), or spelt with an escape (a letter can
# only be escaped as \uXXXX), or in UTF-16/32 text, whose ASCII has NUL bytes (UTF-8
# JSON never holds a raw NUL). Bytes with none of these cannot hold a tool list.
_ESCAPED_OR_WIDE = (b"\\u", b"\x00")
# Looked for in the bytes lowered (ASCII letters only: the long s's UTF-8 stays as it is),
# not with a pattern of letter classes ([Tt][Oo]...), which the regex engine tries at
# every byte: about 12 ms per MB of a tool's answer, where these searches take about 2.
_TOOLS_LOWERED = (b"tools", b"tool\xc5\xbf")


def may_hold_tools(data: bytes) -> bool:
    """Whether ``data`` could hold a ``tools`` key to some parser: a few searches instead
    of a parse, for the answers (most) that hold no tool list."""
    if any(mark in data for mark in _ESCAPED_OR_WIDE):
        return True
    lowered = data.lower()
    return any(spelling in lowered for spelling in _TOOLS_LOWERED)


def loads(data: bytes) -> Any:
    """``data`` read by Python's ``json``; raises ``ValueError`` if even that fails."""
    try:
        # From bytes, json detects a BOM and UTF-16/32, as RFC 4627 readers do.
        return json.loads(data)
    except UnicodeDecodeError:
        return json.loads(data.decode("utf-8-sig", errors="replace"))


def dumps(value: Any) -> bytes:
    """``value`` as JSON: ASCII, so lone surrogates stay escapes (orjson refuses them)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()
