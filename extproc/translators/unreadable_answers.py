"""A provider's success answer a translator could not turn into the client's API.

Where the gateway translates the answer (an OpenAI client on Anthropic, Bedrock or
Vertex), a ``200`` whose body is no answer is replaced by an error: the client's
status and body change (the answer is buffered, its headers have not left). Two kinds:

- the provider's error in the ``200`` (``answer_errors``: ``{"error": ...}``,
  Anthropic's ``{"type": "error", ...}``, Google's list). The client reads the
  provider's words in its API's shape, with the status the same error gets without a
  status of its own (``anthropic_errors.typed_error``: an ``overloaded_error`` is a
  ``503``, a ``rate_limit_error`` a ``429``, what names no known type a ``502``); the
  request records the provider's error, as it does when the answer passes through;
- anything else the translation cannot read: the gateway's ``502``
  ``invalid_upstream_response`` (``UnreadableAnswerError``), which the request records.

Either way the provider generated nothing the gateway could deliver: nothing is charged.
A translator that replaced its answer keeps the request's error as ``error``
(``replaced_error`` reads it from any translator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from extproc.errors import GatewayError, UpstreamError
from extproc.translators.answer_errors import ProviderAnswerError, error_in_answer
from extproc.translators.anthropic_errors import typed_error


class UnreadableAnswerError(UpstreamError):
    """The gateway's ``502`` for a provider's success answer it could not translate."""

    default_code = "invalid_upstream_response"


@dataclass(frozen=True, slots=True)
class ReplacedAnswer:
    """What replaced an answer: ``recorded``, the request's error (the log line's),
    and ``shown``, the error the client reads (its status and body)."""

    recorded: ProviderAnswerError | UnreadableAnswerError
    shown: GatewayError


def replaced_answer(parsed: Any, unreadable: str) -> ReplacedAnswer:
    """The error for a parsed answer that is none (``unreadable``: the gateway's message
    when it is not the provider's error either)."""
    found = error_in_answer(parsed)
    if found is None:
        error = UnreadableAnswerError(unreadable)
        return ReplacedAnswer(error, error)
    return ReplacedAnswer(found, typed_error(found.error_type, found.message, found.code))


def replaced_error(translator: object) -> ProviderAnswerError | UnreadableAnswerError | None:
    """The error a translator replaced its answer with, if it replaced it."""
    found = getattr(translator, "error", None)
    return found if isinstance(found, ProviderAnswerError | UnreadableAnswerError) else None


def unusable_answer(error: GatewayError | None) -> bool:
    """Whether the request's error is its provider's success answer that did no work: a
    provider's error in it, or one the gateway could not read. The provider was reached
    and answered: the log line says ``upstream_error``, and the usage rollup counts it."""
    return isinstance(error, ProviderAnswerError | UnreadableAnswerError)
