"""Error bodies a test asks for by their shape, whatever API the request spoke.

Three faults (``faults``) answer in a shape that is not the surface's own, as providers
and the proxies in front of them do:

- ``error_body``: a ``200`` whose JSON body is an error, in OpenAI's shape, a bare
  ``{"error": "..."}`` (Ollama's), Anthropic's ``{"type": "error", ...}`` or Google's
  one-element list. A server or proxy that reports its errors in a success answer
  generated nothing and reports no usage; a gateway must not bill it as an answer.
- ``google_errors``: an error status whose body is Google's one-element list
  ``[{"error": {"code", "message", "status"}}]``, as Gemini's OpenAI-compatible
  endpoint answers OpenAI clients, which the OpenAI SDKs cannot read.
- ``anthropic_errors``: an error status whose body is Anthropic's ``{"type": "error",
  "error": {"type", "message"}}`` (a 529's ``overloaded_error``), as an OpenAI-compatible
  endpoint in front of Claude, or a proxy, may answer OpenAI clients.

Google's status names live here, for Vertex's own errors too (``vertex_api``).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

# Google's status name for each HTTP status it answers with (google.rpc.Code).
GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# What every error_body answer says, so a test can find it in what the client got.
ERROR_BODY_MESSAGE = "The model is overloaded (injected by x-mock-fault error_body)."
# The status an error_body in Google's shape names: the 200 carries no status of its own.
_ERROR_BODY_GOOGLE_STATUS = 503

_JSON_HEADERS = {"Content-Type": "application/json"}


def google_error(status: int, message: str) -> dict[str, Any]:
    """Google's error object; a status Google has no name for is ``UNKNOWN``."""
    return {"code": status, "message": message, "status": GOOGLE_STATUSES.get(status, "UNKNOWN")}


def error_body(shape: str) -> Any:
    """The body of an ``error_body`` fault of ``shape`` (``faults.ERROR_BODIES``)."""
    if shape == "bare":
        return {"error": ERROR_BODY_MESSAGE}
    if shape == "anthropic":
        error = {"type": "overloaded_error", "message": ERROR_BODY_MESSAGE}
        return {"type": "error", "error": error}
    if shape == "google":
        return [{"error": google_error(_ERROR_BODY_GOOGLE_STATUS, ERROR_BODY_MESSAGE)}]
    return {
        "error": {
            "message": ERROR_BODY_MESSAGE,
            "type": "server_error",
            "param": None,
            "code": "overloaded",
        }
    }


def error_in_success(shape: str) -> web.Response:
    """A ``200`` whose JSON body is an error of ``shape``."""
    return web.Response(status=200, body=orjson.dumps(error_body(shape)), headers=_JSON_HEADERS)


def google_error_list(status: int, message: str) -> web.Response:
    """An error status with Google's one-element list as its body."""
    body = orjson.dumps([{"error": google_error(status, message)}])
    return web.Response(status=status, body=body, headers=_JSON_HEADERS)


# Anthropic's error type for the statuses it documents; any other 4xx is an
# invalid_request_error, any other 5xx an api_error, as Anthropic answers them.
_ANTHROPIC_TYPES = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def anthropic_error(status: int, message: str) -> web.Response:
    """An error status with Anthropic's error shape as its body."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return web.Response(status=status, body=body, headers=_JSON_HEADERS)
