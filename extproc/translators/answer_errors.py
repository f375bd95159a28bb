"""A provider's error in the body of a success answer: a ``200`` that did no work.

Some OpenAI-compatible servers, and proxies in front of providers, answer ``200`` with
an error body instead of an error status: OpenAI's ``{"error": {"message", "type",
"code"}}``, a bare ``{"error": "..."}``, Anthropic's ``{"type": "error", "error":
{...}}``, or Google's ``{"error": {"code", "message", "status"}}``, which Google's
fronts (Gemini's OpenAI-compatible endpoint, streamGenerateContent) wrap in a
one-element list. The provider generated nothing and reports no usage. Read as an
answer, such a body was logged ``completed`` and charged the gateway's estimate of a
whole answer (``cut_answer``); it is the provider's error, as a stream's error event is
(``base.StreamFailure``), and as its ``4xx``/``5xx`` would have been.

A body is such an error only when it carries no usable result: an error at its top
level, no result (``choices``, ``data``, ``output``, ``content``, ``candidates``) and no
usage report (a body with either beside an error, which no provider sends whole, is an
answer and billed as one). A Responses API response whose ``status`` is ``failed``
(its ``error`` names why) is the provider's error too, billed the usage it reports,
as its stream's ``response.failed`` is.

The client's bytes and status are left as the provider sent them: on the lean response
path the status has left before the body is read, and a pass-through answer reaches
every client the same way on both paths.
"""

from __future__ import annotations

import re
from typing import Any

from extproc.errors import without_secrets
from extproc.translators.base import MAX_PROVIDER_MESSAGE, ProviderStreamError
from extproc.translators.google_statuses import google_error_type

# The message when the provider's error names none.
_NO_MESSAGE = "the provider answered 200 with an error and no result"
# A name of one of Google's enums (RESOURCE_EXHAUSTED): its error's status, which is the
# log line's code. Anything else a proxy sends cannot grow the log line.
_GOOGLE_STATUS = re.compile(r"[A-Z][A-Z_]{0,63}")
# Where each API's answer holds its result (chat and completions, embeddings, Responses,
# Anthropic's messages, Gemini, rerank): a body with one of them filled is an answer,
# billed as one, whatever error it also names.
_RESULTS = ("choices", "data", "output", "content", "candidates", "results")


class ProviderAnswerError(ProviderStreamError):
    """A provider's error in its success answer's body, with the OpenAI type and code
    the log line names. It never becomes the client's status (the module docstring)."""


def answer_error(reader: object) -> ProviderAnswerError | None:
    """The provider's error a whole buffered answer turned out to be (the module
    docstring), read from the reader that parsed it (its ``answer`` and ``usage``);
    None for a usable answer, and for readers that keep no parsed answer."""
    answer = getattr(reader, "answer", None)
    if getattr(reader, "usage", None) is not None:
        return failed_response(answer)
    return failed_response(answer) or error_in_answer(answer)


def error_in_answer(answer: Any) -> ProviderAnswerError | None:
    """The provider's error a parsed answer holds at its top level (unwrapped from a
    one-element list), else None."""
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    if not isinstance(answer, dict) or any(answer.get(key) for key in _RESULTS):
        return None
    error = answer.get("error")
    if isinstance(error, str) and error.strip():
        # A bare message, as some model servers (Ollama's) write their errors.
        return ProviderAnswerError(
            without_secrets(error[:MAX_PROVIDER_MESSAGE]), error_type="upstream_error", code=None
        )
    if not isinstance(error, dict) or not error:
        return None  # a Responses API answer's "error": null names no error
    status = error.get("status")
    if isinstance(status, str) and _GOOGLE_STATUS.fullmatch(status):
        return _google_error(error, status)
    found = ProviderAnswerError.from_openai(error, _NO_MESSAGE)
    found.message = without_secrets(found.message)
    return found


def failed_response(answer: Any) -> ProviderAnswerError | None:
    """The error of a Responses API response whose ``status`` is ``failed``; None for
    any other answer."""
    if not isinstance(answer, dict) or answer.get("status") != "failed":
        return None
    error = answer.get("error")
    found = error if isinstance(error, dict) else {}
    # Its error is {"code", "message"}: the code names what failed, not a type.
    failed = ProviderAnswerError.from_openai(
        {**found, "type": "server_error"}, "the provider failed the response"
    )
    failed.message = without_secrets(failed.message)
    return failed


def _google_error(error: dict[str, Any], status: str) -> ProviderAnswerError:
    """Google's ``{"code", "message", "status"}``, named by its status as its stream
    errors are (``gemini_gemini.stream_error``): the type of the HTTP status Google
    answers it with (``google_statuses``), its status name as the code."""
    message = error.get("message")
    text = without_secrets(message[:MAX_PROVIDER_MESSAGE]) if isinstance(message, str) else ""
    return ProviderAnswerError(
        text or _NO_MESSAGE,
        error_type=google_error_type(status, error.get("code")),
        code=status.lower(),
    )
