"""A provider's error answer in another API's shape, written in the client's.

Where the gateway passes a provider's error on as it came (an OpenAI client on an
``openai`` provider, an Anthropic client on an ``anthropic`` one, an AWS SDK on Bedrock,
a Gemini client on Vertex), the provider usually answers in the client's own shape.
Not always: what answers may be a proxy in front of it (LiteLLM, Kong, a corporate
gateway), a vendor's OpenAI-compatible endpoint whose edge answers its overloads in its
native shape (Anthropic's ``{"type": "error", "error": {"type": "overloaded_error"}}``
with a 529), Gemini's OpenAI-compatible endpoint (Google's ``[{"error": {"code",
"message", "status"}}]``), or a server whose errors are a bare ``{"error": "..."}`` or
``{"message": "..."}``. Passed on, the client's SDK found no error of its API in it:
Claude Code and the Anthropic SDKs read ``error.type`` and got OpenAI's ``requests``
or nothing, an OpenAI client got Anthropic's body, and botocore, which reads
``message`` and the ``x-amzn-errortype`` header, raised an exception named by the
bare status with an empty message.

Such a body is written again in the client's shape with the provider's status (on the
lean response path it has left before the body is read, and a pass-through answer
reaches every client the same way on both paths) and the provider's message, without
anything that looks like a credential. The provider's own name for the error (OpenAI's
code or type, Anthropic's type, Google's status lower-cased) is an OpenAI error's
``code`` and a Bedrock error's ``code``; the type is the status's, as the gateway's own
errors name it. A body already in the client's shape, or in none the gateway reads
(``{"detail": ...}``), is left as it came.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from extproc.errors import (
    anthropic_error_body,
    bedrock_error_body,
    error_body,
    google_error_body,
    without_secrets,
)
from extproc.translators.base import MAX_PROVIDER_MESSAGE


@dataclass(frozen=True, slots=True)
class ProviderError:
    """An error body as the gateway read it: the API whose shape it has (``openai``,
    ``anthropic``, ``google``, ``bedrock``, or ``bare`` for no API's), the provider's
    name for the error (None: it names none) and its message (empty: none)."""

    shape: str
    name: str | None
    message: str


def provider_error(body: bytes) -> ProviderError | None:
    """The error a provider's error body holds, in whichever API's shape; None for a
    body in none (not JSON, no error field the gateway knows)."""
    try:
        document: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]  # Google's fronts wrap their error in a one-element list
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if isinstance(error, dict):
        kind = error.get("type")
        if document.get("type") == "error" and isinstance(kind, str):
            return ProviderError("anthropic", kind, _said(error.get("message")))
        status = error.get("status")
        if isinstance(status, str) and isinstance(error.get("code"), int):
            # Google's "status" is a name (RESOURCE_EXHAUSTED); its "code" the HTTP status.
            return ProviderError("google", status.lower(), _said(error.get("message")))
        code = error.get("code") or kind
        return ProviderError(
            "openai", code if isinstance(code, str) else None, _said(error.get("message"))
        )
    if isinstance(error, str) and error.strip():
        return ProviderError("bare", None, _said(error))
    message = document.get("message") or document.get("Message")
    if error is None and isinstance(message, str):
        # Bedrock's shape: the message alone, the exception's name in a header.
        code = document.get("code")
        return ProviderError("bedrock", code if isinstance(code, str) else None, _said(message))
    return None


def in_client_shape(status: int, body: bytes, shape: str) -> bytes | None:
    """The client's error (its API's ``shape``: ``openai``, ``anthropic``, ``bedrock`` or
    ``google``) for a provider's error body of ``status`` in another API's shape; None
    for a body to pass on as it came (already in the client's shape, or in none)."""
    found = provider_error(body)
    if found is None or found.shape == shape:
        return None
    message = found.message or f"the provider answered with HTTP {status}"
    name = without_secrets(found.name)[:100] if found.name else None
    if shape == "anthropic":
        return anthropic_error_body(message, status)
    if shape == "bedrock":
        return bedrock_error_body(message, name)
    if shape == "google":
        return google_error_body(message, status)
    return error_body(message, openai_type(status), code=name)


def openai_type(status: int) -> str:
    """The OpenAI error type of a status, as the gateway's own errors name it (a quota is
    a ``rate_limit_error``, which clients retry, not a bad request)."""
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _said(message: object) -> str:
    """A provider's message as the client may read it: cut, its credentials hidden."""
    return without_secrets(message[:MAX_PROVIDER_MESSAGE]) if isinstance(message, str) else ""
