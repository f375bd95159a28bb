"""JSON-RPC 2.0 as MCP and A2A carry it: requests in a POST body, answers and error objects.

Pure functions, no I/O. The gateway's own refusals are JSON-RPC error objects
with the request's id, so an SDK surfaces them as the call's error instead of a
transport failure. Codes in the implementation-defined range -32000..-32099 that
MCP and A2A leave unused are the gateway's: see ``TOOL_FORBIDDEN``,
``AGENT_FORBIDDEN`` and ``RATE_LIMITED``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson

from extproc.agents.key_spellings import UnreadableKeysError, misspelt_key

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# The caller may not use this MCP tool (access rules). In MCP's implementation-defined
# range (-32000..-32019), where the specification defines no code.
TOOL_FORBIDDEN = -32003
# The caller may not use this A2A agent (access rules). Not -32003: A2A defines
# -32001..-32009 (-32003 is PushNotificationNotSupported), and an A2A SDK would raise
# the refusal as that error.
AGENT_FORBIDDEN = -32030
# A request limit refused the call; ``data.retry_after_s`` says when to retry.
RATE_LIMITED = -32029
# A2A's TaskNotFoundError: also the gateway's answer for another caller's task, so that
# a caller cannot tell another's task from one that does not exist.
TASK_NOT_FOUND = -32001

RequestId = str | int | float | None
# The keys of ``params`` the gateway reads a message by (``_key_twice``).
MCP_PARAMS_KEYS = frozenset(("name",))  # a tools/call's tool
# A2A: the task a request names (``binding``), under each spelling its servers take. Read
# on A2A routes alone: "id" is common in MCP tools' arguments, where it costs a scan.
A2A_PARAMS_KEYS = frozenset(("name", "id", "taskId", "task_id", "message"))
# ... and of ``params.message``: the task a message continues.
A2A_MESSAGE_KEYS = frozenset(("taskId", "task_id"))


class RpcParseError(Exception):
    """The body is not JSON-RPC; answered with ``code`` and the id null."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class RpcMessage:
    """One message of a POST body: a request, a notification (no id) or a client's answer."""

    method: str | None
    id: RequestId
    has_id: bool
    params: Any

    @property
    def is_request(self) -> bool:
        return self.method is not None and self.has_id


def parse_body(
    body: bytes,
    params_keys: frozenset[str] = MCP_PARAMS_KEYS,
    message_keys: frozenset[str] = frozenset(),
) -> tuple[list[RpcMessage], bool]:
    """The messages of a POST body and whether it was a batch (an array); ``params_keys``
    are the keys of ``params`` the gateway reads by, ``message_keys`` those of
    ``params.message`` (``A2A_PARAMS_KEYS`` and ``A2A_MESSAGE_KEYS`` on A2A routes)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RpcParseError(PARSE_ERROR, f"request body is not valid JSON: {exc}") from None
    batch = isinstance(parsed, list)
    items = parsed if batch else [parsed]
    if not items:
        raise RpcParseError(INVALID_REQUEST, "an empty batch is not a JSON-RPC request")
    twice = _key_twice(body, items, params_keys, message_keys)
    if twice is not None:
        raise RpcParseError(INVALID_REQUEST, twice)
    messages = [_message(item) for item in items]
    if batch:
        ids = [response_id_key(m.id) for m in messages if m.is_request]
        if len(set(ids)) != len(ids):
            # Answers are matched to requests by id: two requests, one id is ambiguous.
            raise RpcParseError(INVALID_REQUEST, "the requests of a batch need distinct ids")
    return messages, batch


# The keys the gateway reads a message by, and what a parser that keeps the first of two
# equal keys (where orjson keeps the last), or matches keys regardless of case, would read
# differently.
_ENVELOPE_KEYS = frozenset(("jsonrpc", "id", "method", "params", "result", "error"))
# Non-ASCII characters that case-fold to letters of those keys: the long s (U+017F, "s")
# and the Kelvin sign (U+212A, "k"), in UTF-8. Go's encoding/json folds both.
_FOLDING_TO_ASCII = (b"\xc5\xbf", b"\xe2\x84\xaa")


def _key_twice(
    body: bytes, items: list[Any], params_keys: frozenset[str], message_keys: frozenset[str]
) -> str | None:
    """Why a message (or its ``params``) holds a key the gateway reads by twice, or
    spelt in another case.

    JSON leaves duplicate names to the parser: orjson keeps the last, a server's parser
    may keep the first, and then the server runs another method or tool than the one
    the gateway checked and counted (``"method":"tools/call", ..., "method":"ping"``).
    JSON-RPC keys are exact, but Go's ``encoding/json`` (mcp-go, Go A2A servers, the Go
    MCP SDK before CVE-2026-27896) matches them regardless of case, the long s and the
    Kelvin sign included, and keeps the last: to such a server ``"Method":"tools/call"``
    after ``"method":"tools/list"`` is a tool call, and ``"Name"`` in ``params`` the tool.
    No client sends either. The keys as spelt (``key_spellings``: the messages' and
    their ``params``') are read only when the bytes allow one: a key spelt (in any
    case) more often than the parsed messages hold it, a character that folds to one of
    its letters, or a ``\\u`` escape, which can spell a key in other bytes.
    """
    if b"\\u" not in body and not any(fold in body for fold in _FOLDING_TO_ASCII):
        lowered = body.lower()
        if not any(
            lowered.count(b'"%s"' % key.lower().encode()) > held
            for key, held in _held(items, params_keys, message_keys).items()
        ):
            return None
    try:
        clash = misspelt_key(body, _ENVELOPE_KEYS, params_keys, message_keys)
    except UnreadableKeysError as exc:
        return str(exc)
    if clash is None:
        return None
    key, other = clash
    if other is None:
        return f"a message names {key!r} twice: each key once"
    return f"a message spells {key!r} as {other!r}: JSON-RPC keys are exact, each once"


def _held(
    items: list[Any], params_keys: frozenset[str], message_keys: frozenset[str]
) -> dict[str, int]:
    """How many of the parsed messages hold each key (``params_keys``: in their ``params``,
    ``message_keys`` in its ``message``; a key of two levels counts both)."""
    held = dict.fromkeys((*_ENVELOPE_KEYS, *params_keys, *message_keys), 0)
    for item in items:
        if not isinstance(item, dict):
            continue
        for key in _ENVELOPE_KEYS:
            held[key] += key in item
        params = item.get("params")
        if isinstance(params, dict):
            for key in params_keys:
                held[key] += key in params
            message = params.get("message")
            if isinstance(message, dict):
                for key in message_keys:
                    held[key] += key in message
    return held


def _message(item: Any) -> RpcMessage:
    if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
        raise RpcParseError(INVALID_REQUEST, "each message must be a JSON-RPC 2.0 object")
    has_id = "id" in item
    message_id = item.get("id")
    # A bool is an int to Python, not a number to JSON-RPC.
    if has_id and (
        isinstance(message_id, bool) or not isinstance(message_id, str | int | float | type(None))
    ):
        raise RpcParseError(INVALID_REQUEST, "'id' must be a string, a number or null")
    method = item.get("method")
    if method is None:
        # A client's answer to a server request (sampling, elicitation): passed on.
        if not has_id or ("result" not in item and "error" not in item):
            raise RpcParseError(INVALID_REQUEST, "a message needs a 'method' or a 'result'")
        return RpcMessage(None, message_id, True, None)
    if not isinstance(method, str):
        raise RpcParseError(INVALID_REQUEST, "'method' must be a string")
    return RpcMessage(method, message_id, has_id, item.get("params"))


# Printable ASCII without a space or a capital letter: NFKC and casefolding leave it as
# it is, and it holds nothing to drop, so it is its own folded form. Every method of an
# agent route's body and every tool of a tool list is folded; the full fold costs
# microseconds a name.
_FOLDED_ALREADY = re.compile(r"[!-@\[-~]*")


def canonical_method(method: str) -> str:
    """The method as the most lenient server might read it: NFKC-normalised, casefolded,
    without whitespace, control or format characters (``" Tools/Call"`` followed by a
    zero-width space is ``tools/call``). JSON-RPC method names are exact; this only
    spots lookalikes."""
    if _FOLDED_ALREADY.fullmatch(method) is not None:
        return method  # most names, folded in a tenth of the time
    folded = unicodedata.normalize("NFKC", method).casefold()
    return "".join(c for c in folded if not c.isspace() and unicodedata.category(c)[0] != "C")


def error_object(
    request_id: RequestId, code: int, message: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def error_body(
    ids: list[RequestId], code: int, message: str, data: dict[str, Any] | None, batch: bool
) -> bytes:
    """One error per request of the body (a batch gets an array, as JSON-RPC answers one)."""
    if not batch:
        return orjson.dumps(error_object(ids[0] if ids else None, code, message, data))
    return orjson.dumps([error_object(i, code, message, data) for i in ids])


def http_error_code(status: int) -> int:
    """The JSON-RPC code of an HTTP error the gateway (or Envoy) answers on an agent route:
    a request limit is the gateway's ``RATE_LIMITED``, any other 4xx an invalid request,
    a 5xx an internal error, as MCP's own servers code their transport errors."""
    if status == 429:
        return RATE_LIMITED
    return INTERNAL_ERROR if status >= 500 else INVALID_REQUEST


def http_error_body(message: str, status: int, error_type: str, code: str | None) -> bytes:
    """An HTTP error on an agent route (credentials, size, method, the store, the
    upstream) as a JSON-RPC error object, the id null since no request was read.

    MCP's Python SDK reads the body of a non-2xx answer only as a JSON-RPC error, and
    puts the request's id on it: any other body becomes "Server returned an error
    response", and the caller never learns that its key was refused or its arguments
    too large. The gateway's type and code go in ``data``, as in its other refusals."""
    data = {"type": error_type, "code": code}
    return orjson.dumps(error_object(None, http_error_code(status), message, data))


# A string the MCP SDKs read as an integer id when they match an answer to a request.
_INTEGER_ID = re.compile(r"[+-]?[0-9]{1,300}")


def response_id_key(request_id: RequestId) -> str:
    """A hashable key for matching answers to requests, as clients match them: a number
    is its value as a double, and so is a string that spells an integer.

    JSON has one number type and JavaScript (the TypeScript SDK) reads every number as a
    double: ``1.0`` is ``1`` to it, and so are two ids past 2**53 that a double cannot
    tell apart. Were they two ids to the gateway, a batch pairing a ``ping`` with a
    ``tools/list`` under one id to such a server could get back two answers under one
    id, and the tool list the watch did not take would go out unread. And a server may
    echo the id ``1`` as ``"1"``: the TypeScript SDK looks its answer up by
    ``Number(id)``, the Python SDK by ``int(id)`` (``coerce_request_id``), so to both it
    is the answer to request 1, and so it is to the gateway (a tool list under it is
    that request's list, filtered; a tool call's outcome is logged)."""
    if isinstance(request_id, str):
        spelt = request_id.strip()
        if _INTEGER_ID.fullmatch(spelt) is not None:
            request_id = int(spelt)
    if isinstance(request_id, int | float) and not isinstance(request_id, bool):
        # + 0.0: -0.0 is 0 to every server (JSON.stringify(-0) is "0"), so one id.
        return f"number:{float(request_id) + 0.0!r}"
    return f"{type(request_id).__name__}:{request_id}"


def is_response(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and "id" in message
        and "method" not in message
        and ("result" in message or "error" in message)
    )
