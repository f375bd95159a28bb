"""Anthropic's token count (``/v1/messages/count_tokens``) for Claude on Bedrock, both ways.

Bedrock Runtime counts a prompt's tokens with its CountTokens operation
(``POST /model/{modelId}/count-tokens``), whose body holds the request to count in one
member of the ``input`` union. The gateway uses ``invokeModel``: the InvokeModel body a
Messages call for the same prompt would send (``anthropic_bedrock.translate_request``:
``model`` and ``stream`` left out, ``anthropic_version: bedrock-2023-05-31``, the betas
folded in and filtered alike), base64-encoded, as a REST-JSON blob is sent. The
``converse`` member would do without the translation, but Bedrock leaves the tool
definitions out of its count, and Claude Code counts prompts that carry many tools.

- Request (``translate_request``, ``request_path``): the CountTokens body and path, the
  model id encoded in the path as for InvokeModel.
- Answer (``CountTranslator``): Bedrock's ``{"inputTokens": N}`` becomes Anthropic's
  ``{"input_tokens": N}``. A count is not usage (nothing was generated or billed), so
  the translator reports none. An answer without a readable count becomes Anthropic's
  ``api_error`` (502): a client must not read a count that is not Bedrock's.
- Errors: Bedrock's, as for Messages calls (``anthropic_bedrock.translate_error``).
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from typing import Any

import orjson

from extproc.context import Usage
from extproc.errors import BadRequestError, anthropic_error_body
from extproc.translators import anthropic_bedrock
from extproc.translators.token_counts import MAX_TOKEN_COUNT, token_count

# The operation's last path segment, after the model id.
_COUNT_ACTION = "count-tokens"
# CountTokens refuses an InvokeModel body without max_tokens, which Claude's Messages API
# requires and Anthropic's count_tokens refuses (a count generates nothing). The count is
# of the prompt alone, so any value Claude takes gives the same count; the smallest one
# stays within every model's output limit.
_PLACEHOLDER_MAX_TOKENS = 1
_UNREADABLE = "the provider's token count could not be read"
_BAD_GATEWAY = 502


def check_request(body: dict[str, Any]) -> None:
    """Refuse a count whose thinking budget no ``max_tokens`` can be set above: one past
    what any count reads (``MAX_TOKEN_COUNT``), as huge as 2**64 - 1, left no integer
    JSON could write (a 500). A budget of another type or below Claude's least is
    Bedrock's to refuse, as for a Messages call."""
    budget = _budget(body.get("thinking"))
    if budget is not None and budget > MAX_TOKEN_COUNT:
        raise BadRequestError(
            f"'thinking.budget_tokens' must be at most {MAX_TOKEN_COUNT}",
            param="thinking.budget_tokens",
        )


def translate_request(
    body: dict[str, Any], beta_header: str | None, allowed_betas: Collection[str] | None = None
) -> dict[str, Any]:
    """The CountTokens body for an Anthropic count_tokens body (``body`` is left as it
    is): the InvokeModel body of the same prompt, in the ``invokeModel`` member."""
    invoke = anthropic_bedrock.translate_request(body, beta_header, allowed_betas)
    if "max_tokens" not in invoke:
        invoke["max_tokens"] = _max_tokens_for(invoke.get("thinking"))
    encoded = base64.b64encode(orjson.dumps(invoke)).decode("ascii")
    return {"input": {"invokeModel": {"body": encoded}}}


def _max_tokens_for(thinking: Any) -> int:
    """A max_tokens Claude takes with this ``thinking``: extended thinking wants one above
    its ``budget_tokens`` (Claude refuses the body otherwise)."""
    budget = _budget(thinking)
    if budget is not None and budget >= 1:
        return budget + 1
    return _PLACEHOLDER_MAX_TOKENS


def _budget(thinking: Any) -> int | None:
    """The integer ``budget_tokens`` of a ``thinking`` object; None for any other."""
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if isinstance(budget, int) and not isinstance(budget, bool):
        return budget
    return None


def request_path(model_id: str) -> str:
    """The CountTokens path for a model id or ARN, e.g.
    ``/model/anthropic.claude-3-haiku-20240307-v1%3A0/count-tokens``."""
    # InvokeModel's path with its operation swapped: one encoding of the model id (an
    # ARN's "/" is encoded, so the last "/" precedes the operation).
    invoke = anthropic_bedrock.request_path(model_id, stream=False)
    return invoke.rpartition("/")[0] + "/" + _COUNT_ACTION


class CountTranslator:
    """CountTokens' answer as Anthropic's count_tokens answer; reports no usage."""

    def __init__(self) -> None:
        self.usage: Usage | None = None  # a count is never usage
        self.response_model: str | None = None
        # 502 when the answer held no count and an error replaced it.
        self.status: int | None = None
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if not end_of_stream:
            return b""  # the answer is rewritten whole
        answer = b"".join(self._parts)
        self._parts = []
        count = _input_tokens(answer)
        if count is None:
            self.status = _BAD_GATEWAY
            return anthropic_error_body(_UNREADABLE, _BAD_GATEWAY)
        return orjson.dumps({"input_tokens": count})


def _input_tokens(answer: bytes) -> int | None:
    """The ``inputTokens`` of Bedrock's answer; None when it holds no whole count."""
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    return token_count(parsed.get("inputTokens")) if isinstance(parsed, dict) else None
