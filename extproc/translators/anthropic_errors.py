"""What an OpenAI client is told for each Anthropic error, answered whole or inside a stream.

A 401/403 (or 402, billing) from Anthropic means the gateway's own credential or account
was refused, so the client gets a 502 that says so rather than a status that would make it
doubt its own key, and nothing of the provider's words that looks like a key (OpenAI-style
proxies name a fragment of the key they refused). An overload (529) becomes a 503, a rate
limit stays a 429, other 5xx become 502; 400, 404 and 413 stay. An ``event: error``
inside a stream, or a ``200`` whose body is an error (``unreadable_answers``), carries no
status: the one Anthropic documents for its error type stands in for it.

Both Anthropic translators use it: ``openai_anthropic`` for what the client is shown, and
``anthropic_anthropic`` to name, in the log line, an error its own client read unchanged.
"""

from __future__ import annotations

from typing import Any

from extproc.errors import (
    BadRequestError,
    GatewayError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
    credentials_refused,
)

# The HTTP status Anthropic documents for each error type, for errors that arrive inside a
# stream and so carry no status of their own.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def client_error(status: int, kind: str | None, message: str) -> tuple[int, GatewayError]:
    """The status and OpenAI error for an Anthropic error of ``status`` and type ``kind``."""
    # The status depends on `status` alone, so a caller can answer Envoy's response headers
    # with translate_error(status, b"") before the body arrives.
    if status in (401, 402, 403):
        # The provider's words lose anything that looks like a key (credentials_refused).
        return 502, credentials_refused(kind or str(status), message)
    if status == 529:
        return 503, ServiceUnavailableError(message, code="upstream_overloaded")
    if status == 429:
        return 429, RateLimitError(message)
    if status >= 500 or status < 400:
        return 502, UpstreamError(message, code=kind or "upstream_error")
    if status == 404:
        return 404, NotFoundError(message)
    if status == 413:
        return 413, PayloadTooLargeError(message)
    return status, BadRequestError(message)


def stream_error(error: Any) -> GatewayError:
    """The OpenAI error for the ``error`` object of an Anthropic ``event: error``."""
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    kind = kind if isinstance(kind, str) else None
    text = message if isinstance(message, str) and message else "the provider's stream failed"
    return typed_error(kind, text)


def documented_status(kind: str | None) -> int:
    """The status Anthropic documents for an error of type ``kind`` (an unknown type's: a
    server error's), standing in for the status an error that came without one lacks."""
    return _ERROR_STATUS.get(kind or "", 500)


def typed_error(kind: str | None, message: str) -> GatewayError:
    """The OpenAI error for an error that names its type but came with no status of its
    own (an ``event: error``, a ``200`` whose body is an error): the status Anthropic
    documents for the type stands in for it (``documented_status``)."""
    return client_error(documented_status(kind), kind, message)[1]
