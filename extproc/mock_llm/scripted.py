"""Replies the test chooses: headers ``x-mock-reply`` and ``x-mock-tool-calls`` (the gateway
forwards both).

``x-mock-reply`` is a JSON array of strings, sent as exactly those pieces (one SSE
content chunk each; output tokens = pieces), or a plain string, cut into
token pieces like any reply. Tests use it to put a card number in an answer,
or to cut it over chosen chunks, without putting it in the prompt.

``x-mock-tool-calls`` makes the answer call tools, after the ``x-mock-reply`` text when
there is one (as Claude often says what it is about to do before calling): a JSON array
of ``{"name": ..., "arguments": ...}``, the arguments being the JSON text of the call's
input, either a string (cut into token pieces) or an array of strings (sent as exactly
those pieces, one streamed input delta each). The pieces joined must be a JSON object,
which is what a provider's tool input is. Tests choose the fragments a stream carries, so
they can check a client gets back exactly the provider's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from extproc.mock_llm.tokens import token_pieces

REPLY_HEADER = "x-mock-reply"
TOOL_CALLS_HEADER = "x-mock-tool-calls"


class ScriptError(ValueError):
    """A scripted-reply header is malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """One tool call of a scripted answer: the tool's name and its input's JSON pieces."""

    name: str
    pieces: tuple[str, ...]

    @property
    def input(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads("".join(self.pieces))
        return parsed


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


def scripted_tool_calls(headers: Mapping[str, str]) -> list[ScriptedCall] | None:
    """The tool calls the request asks the answer to make, or None when it asks for none."""
    value = headers.get(TOOL_CALLS_HEADER)
    if value is None:
        return None
    try:
        calls = orjson.loads(value)
    except orjson.JSONDecodeError:
        calls = None
    if not isinstance(calls, list) or not calls:
        raise ScriptError(f"{TOOL_CALLS_HEADER} must be a non-empty JSON array of tool calls")
    return [_scripted_call(call, k) for k, call in enumerate(calls)]


def _scripted_call(call: Any, k: int) -> ScriptedCall:
    where = f"{TOOL_CALLS_HEADER}[{k}]"
    name = call.get("name") if isinstance(call, dict) else None
    if not isinstance(name, str) or not name:
        raise ScriptError(f"{where} needs a 'name'")
    arguments = call.get("arguments", "{}")
    if isinstance(arguments, str):
        pieces = token_pieces(arguments)
    elif isinstance(arguments, list) and all(isinstance(piece, str) for piece in arguments):
        pieces = list(arguments)
    else:
        raise ScriptError(f"{where}.arguments must be a string or an array of strings")
    try:
        parsed = orjson.loads("".join(pieces))
    except orjson.JSONDecodeError:
        parsed = None
    # A provider's tool input is always an object; a test cannot script anything else.
    if not isinstance(parsed, dict):
        raise ScriptError(f"{where}.arguments must join into a JSON object")
    return ScriptedCall(name, tuple(pieces))
