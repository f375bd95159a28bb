"""The mock's deterministic reply and token counts, shared by every provider surface.

Tests predict replies and usage exactly, whichever API they speak, so the rules live here once:

- ``count_tokens(text)`` is the number of matches of ``\\w+|[^\\w\\s]``: each word and each
  punctuation character is one token; whitespace is free.
- A message's text is its content when that is a string, else its ``{"type": "text"}`` parts
  (OpenAI) or blocks (Anthropic) joined with a single space; other parts count for nothing.
- Input tokens = sum over messages of (``count_tokens(message text)`` + 4) + 2, a fixed
  per-message and per-request overhead in the spirit of OpenAI's chat format.
- The reply is ``"Mock reply to: "`` followed by the first 200 characters of the last user
  message's text. It is sent as one piece per token, each piece carrying the whitespace before
  its token, so the pieces concatenate back to the exact reply; output tokens = pieces sent.
- The ``chunks=N`` fault cycles through the pieces until there are N; a token limit then keeps
  the first pieces only.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 2
REPLY_PREFIX = "Mock reply to: "
QUOTED_CHARS = 200


def count_tokens(text: str) -> int:
    """The mock's tokenizer: words and single punctuation characters (see module docstring)."""
    return len(TOKEN_PATTERN.findall(text))


def token_pieces(text: str) -> list[str]:
    """Split text into one piece per token, whitespace attached to the following token."""
    pieces: list[str] = []
    start = 0
    for match in TOKEN_PATTERN.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        # Trailing whitespace has no following token; keep it so the pieces rebuild the text.
        if pieces:
            pieces[-1] += text[start:]
        else:
            pieces.append(text[start:])
    return pieces


def message_text(content: object) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    per_message = (count_tokens(message_text(m.get("content"))) for m in messages)
    return sum(n + MESSAGE_OVERHEAD_TOKENS for n in per_message) + REQUEST_OVERHEAD_TOKENS


def reply_text(messages: Sequence[dict[str, Any]]) -> str:
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    quoted = message_text(last_user.get("content")) if last_user is not None else ""
    return REPLY_PREFIX + quoted[:QUOTED_CHARS]


def reply_pieces(
    messages: Sequence[dict[str, Any]],
    *,
    max_tokens: int | None,
    chunks: int | None,
    text: str | None = None,
) -> tuple[list[str], bool]:
    """The reply's pieces to send (of ``text`` when given, e.g. a JSON answer), and
    whether the token limit cut them short."""
    pieces = token_pieces(reply_text(messages) if text is None else text)
    if chunks is not None and pieces:
        pieces = list(itertools.islice(itertools.cycle(pieces), chunks))
    if max_tokens is not None and max_tokens < len(pieces):
        return pieces[:max_tokens], True
    return pieces, False
