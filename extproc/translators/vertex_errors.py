"""Vertex AI's own errors in the client's API shape.

Vertex answers in two voices. The model behind it speaks its API's: Claude's errors
come in Anthropic's shape, the OpenAI-compatible endpoint's in OpenAI's. Vertex's front
(authentication, permissions, an unknown model or region, quota) speaks Google's:
``{"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED"}}``, which
the OpenAI-compatible endpoint may also wrap in a one-element list. Neither SDK reads
Google's shape (no error type, a numeric code), so such a body is written again in the
client's shape with the same status and Google's message; the status name, lower-cased,
is an OpenAI error's ``code``, its type the status's (429: ``rate_limit_error``). Any other
body is left to the pair's own error handling. Gemini's OpenAI-compatible endpoint, an
``openai`` provider, answers in the list too: its errors are written the same way for an
OpenAI client (``foreign_errors``).
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.errors import anthropic_error_body, error_body, without_secrets
from extproc.translators.base import MAX_PROVIDER_MESSAGE


def google_error(body: bytes) -> tuple[str, str] | None:
    """(status name, message) of a body in Google's error shape, else None."""
    try:
        document: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return None
    name, message = error.get("status"), error.get("message")
    # Google's "status" is a name (RESOURCE_EXHAUSTED); its "code" the HTTP status.
    if not isinstance(name, str) or not isinstance(error.get("code"), int):
        return None
    said = message[:MAX_PROVIDER_MESSAGE] if isinstance(message, str) else ""
    return name, without_secrets(said)


def in_client_shape(status: int, body: bytes, shape: str) -> bytes | None:
    """The client's error for a Google-shaped ``body``; None for any other body."""
    found = google_error(body)
    if found is None:
        return None
    name, message = found
    message = message or f"Vertex AI answered with HTTP {status} ({name})"
    if shape == "anthropic":
        return anthropic_error_body(message, status)
    return error_body(message, _openai_type(status), code=name.lower())


def _openai_type(status: int) -> str:
    """The OpenAI error type of a status, as the gateway's own errors name it (a quota is
    a ``rate_limit_error``, which clients retry, not a bad request)."""
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"
