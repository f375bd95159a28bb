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
they can check a client gets back exactly the provider's JSON. The last call may say
``"cut": true``: the token limit stopped the model while it wrote that call, so its pieces
are the start of an object and the answer ends with ``max_tokens``; a whole answer shows
its input as ``{}``.
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
    # The token limit stopped the model while it wrote this call (the answer's last).
    cut: bool = False

    @property
    def input(self) -> dict[str, Any]:
        if self.cut:
            return {}  # a whole answer holds no object for input it never finished
        parsed: dict[str, Any] = orjson.loads("".join(self.pieces))
        return parsed


def cut_short(calls: list[ScriptedCall] | None) -> bool:
    """Whether the answer ends cut by the token limit, in its last tool call."""
    return bool(calls and calls[-1].cut)


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
    scripted = [_scripted_call(call, k) for k, call in enumerate(calls)]
    if any(call.cut for call in scripted[:-1]):
        # A model writes its calls one after the other: only the last can be cut.
        raise ScriptError(f"{TOOL_CALLS_HEADER}: only the last call can be cut")
    return scripted


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
    cut = call.get("cut", False)
    if not isinstance(cut, bool):
        raise ScriptError(f"{where}.cut must be true or false")
    if cut:
        return ScriptedCall(name, tuple(pieces), cut=True)
    try:
        parsed = orjson.loads("".join(pieces))
    except orjson.JSONDecodeError:
        parsed = None
    # A provider's tool input is always an object; a test cannot script anything else.
    if not isinstance(parsed, dict):
        raise ScriptError(f"{where}.arguments must join into a JSON object")
    return ScriptedCall(name, tuple(pieces))
