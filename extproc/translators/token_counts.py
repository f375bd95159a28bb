"""What the gateway takes as a provider's token count: the one rule every usage reader
applies (OpenAI's chat, completions, Responses and embeddings usage, Anthropic's,
Bedrock's Converse usage, InvokeModel's headers and metrics, Gemini's
``usageMetadata``, and the embeddings of Bedrock and Vertex).

A count is a whole number from 0 to ``MAX_TOKEN_COUNT``, written as a JSON integer
(a header's ASCII digits, for the counts Bedrock sends as headers). Anything else is
no count: JSON's ``true`` (an ``int`` to Python) is not 1, a negative count would
credit the team, a float or a numeric string is no integer, and a count past the
bound is a provider's bug, not usage. The reader then treats the report as it treats a
missing one, and the request is charged the gateway's estimate (``usage_estimated``).

Why ``2**31 - 1``: no request comes near it (the largest context windows hold ten
million tokens, two hundred times fewer), and what passes it is the wrap-around of a
provider's arithmetic (an unsigned -1: ``2**32 - 1``, ``2**64 - 1``). Taken, one such
count used up the team's whole budget in the quota (settled at ``MAX_LIMIT``), priced
the request at billions of dollars, added as much to counters no reset lowers
(``tokens_consumed_total``, the cost), and pushed an hour's rollup past the store's
64-bit integers, so every later count of that hour and team was left out of it. Kept
under the bound, a request's counts, their sum and their cost in picodollars stay
exact in every ledger: the store's 64-bit integers, the doubles of its Lua scripts,
of Prometheus and of Envoy's metadata, and a JSON reader's.
"""

from __future__ import annotations

from typing import Any

MAX_TOKEN_COUNT = 2**31 - 1
# The digits of MAX_TOKEN_COUNT: a longer header value is past it, and is not read
# (int() of thousands of digits raises).
_MAX_DIGITS = len(str(MAX_TOKEN_COUNT))


def token_count(value: Any) -> int | None:
    """``value`` as a token count; None when it is no count (see the module)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_COUNT:
        return value
    return None


def header_token_count(value: str | None) -> int | None:
    """A header's token count (Bedrock's ``x-amzn-bedrock-input-token-count``): ASCII
    digits (``str.isdigit`` also takes "²", which ``int`` refuses) within the bound."""
    text = (value or "").strip()
    if not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0") or "0"
    return token_count(int(digits)) if len(digits) <= _MAX_DIGITS else None


def struct_token_count(value: Any) -> int | None:
    """A count from a protobuf ``Struct`` (Vertex's predictions), where every number is
    a double: a whole float (``6.0``) is the count it writes."""
    if isinstance(value, float) and value.is_integer():
        return token_count(int(value))
    return token_count(value)
