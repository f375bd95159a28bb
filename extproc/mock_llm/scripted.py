"""A reply the test chooses: header ``x-mock-reply`` (the gateway forwards it).

Its value is a JSON array of strings, sent as exactly those pieces (one SSE
content chunk each; output tokens = pieces), or a plain string, cut into
token pieces like any reply. Tests use it to put a card number in an answer,
or to cut it over chosen chunks, without putting it in the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from extproc.mock_llm.tokens import token_pieces

REPLY_HEADER = "x-mock-reply"


class ScriptError(ValueError):
    """The header is not a JSON array of strings."""


def scripted_pieces(headers: Mapping[str, str]) -> list[str] | None:
    """The reply pieces the request asks for, or None when it asks for none."""
    value = headers.get(REPLY_HEADER)
    if value is None:
        return None
    if not value.startswith("["):
        return token_pieces(value)
    try:
        pieces = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ScriptError(f"{REPLY_HEADER} must be a JSON array of strings") from None
    if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces) or not pieces:
        raise ScriptError(f"{REPLY_HEADER} must be a non-empty JSON array of strings")
    return pieces
