"""What a failover attempt tells the downstream filter of its provider's answer.

On a failover route the per-attempt filter translates each provider's answer to the
client's API (``stages.attempt``), and the downstream filter, which writes the log line
and counts aigw_upstream_errors_total, only ever sees that translation. Where the
translation changed what the provider said, the downstream filter would record the
translation: Anthropic's ``529`` as the ``503`` an OpenAI client gets, a refusal of the
gateway's key (``401``) as the gateway's ``502``, an ``overloaded_error`` in a ``200`` as
a plain ``503`` with no error named. Without failover the same answers are recorded by
the provider's status and error. So the attempt reports them in the ``ATTEMPT_UPSTREAM``
response header: the provider's status and, for a success answer the translation
replaced with an error, that error (the provider's words, without the gateway's
credentials, or the gateway's ``invalid_upstream_response``).

The header is the gateway's alone: each attempt removes any a provider sent (or writes
its own over it), Envoy's own replies carry none, and the downstream filter reads it on
failover routes only and removes it before the client sees the answer. Its value is
base64url JSON, so a provider's words (any Unicode, line breaks) make a valid header.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from extproc.translators.answer_errors import ProviderAnswerError
from extproc.translators.base import MAX_PROVIDER_MESSAGE
from extproc.translators.unreadable_answers import UnreadableAnswerError

# The kinds of error an attempt reports, by the name its report gives each.
_PROVIDER = "provider"  # the provider's error in its 200 (ProviderAnswerError)
_UNREADABLE = "unreadable"  # a 200 the translation could not read (UnreadableAnswerError)
# The longest value read: a report holds one message of MAX_PROVIDER_MESSAGE characters
# (up to 4 bytes each in UTF-8, a third more in base64) and a few short fields.
_MAX_VALUE_CHARS = 4 * (MAX_PROVIDER_MESSAGE * 4 + 1024) // 3


@dataclass(frozen=True, slots=True)
class AttemptReport:
    """The provider's ``status`` and the ``error`` that replaced its success answer."""

    status: int
    error: ProviderAnswerError | UnreadableAnswerError | None = None


def encode(report: AttemptReport) -> str:
    document: dict[str, Any] = {"status": report.status}
    error = report.error
    if error is not None:
        document["error"] = {
            "kind": _PROVIDER if isinstance(error, ProviderAnswerError) else _UNREADABLE,
            "type": error.error_type,
            "code": error.code,
            "message": error.message,
        }
    return base64.urlsafe_b64encode(orjson.dumps(document)).decode("ascii")


def decode(value: str | None) -> AttemptReport | None:
    """The report in a header's ``value``; None for none, or for one the attempt did not
    write (it never writes a malformed one)."""
    if not value or len(value) > _MAX_VALUE_CHARS:
        return None
    try:
        document = orjson.loads(base64.urlsafe_b64decode(value.encode("ascii")))
    except (UnicodeEncodeError, binascii.Error, orjson.JSONDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    status = document.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        return None
    if "error" not in document:
        return AttemptReport(status)
    error = _error(document["error"])
    return AttemptReport(status, error) if error is not None else None


def _error(found: Any) -> ProviderAnswerError | UnreadableAnswerError | None:
    if not isinstance(found, dict):
        return None
    kind, message = found.get("kind"), found.get("message")
    error_type, code = found.get("type"), found.get("code")
    if not isinstance(message, str) or not isinstance(error_type, str):
        return None
    if code is not None and not isinstance(code, str):
        return None
    if kind == _PROVIDER:
        return ProviderAnswerError(message, error_type=error_type, code=code)
    if kind == _UNREADABLE:
        return UnreadableAnswerError(message[:MAX_PROVIDER_MESSAGE], code=code)
    return None
