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

INSUFFICIENT_QUOTA = "insufficient_quota"
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


# OpenAI's error types and codes of its 429s, which an OpenAI-compatible proxy (in front
# of Anthropic or Bedrock as well) may send in a 200: a rate limit is type ``requests`` or
# ``tokens`` (the limit reached) with code ``rate_limit_exceeded``; an account out of
# credit is type and code ``insufficient_quota``. Read as unknown types, they were server
# errors: the client got a 502 ``upstream_error`` (code ``requests``) that its SDK does
# not back off from as it does from a 429.
_OPENAI_RATE_LIMITS = frozenset({"requests", "tokens", "rate_limit_exceeded", INSUFFICIENT_QUOTA})


def documented_status(kind: str | None, code: str | None = None) -> int:
    """The status Anthropic documents for an error of type ``kind``, or OpenAI's 429 for
    one of its rate-limit types or codes (an unknown error's: a server error's), standing
    in for the status an error that came without one lacks."""
    found = _ERROR_STATUS.get(kind or "")
    if found is not None:
        return found
    if kind in _OPENAI_RATE_LIMITS or code in _OPENAI_RATE_LIMITS:
        return 429
    return 500


def typed_error(kind: str | None, message: str, code: str | None = None) -> GatewayError:
    """The OpenAI error for an error that names its type (and maybe its code) but came
    with no status of its own (an ``event: error``, a ``200`` whose body is an error): the
    status its type stands for stands in for it (``documented_status``). An account out
    of credit keeps OpenAI's code, ``insufficient_quota``, which tells it from a rate
    limit that waiting lifts."""
    status = documented_status(kind, code)
    if status == 429 and INSUFFICIENT_QUOTA in (kind, code):
        return RateLimitError(message, code=INSUFFICIENT_QUOTA)
    return client_error(status, kind, message)[1]
