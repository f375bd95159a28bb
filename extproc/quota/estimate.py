"""How many tokens to reserve before the provider says how many were used.

Prompt tokens are estimated at one per four characters of message text (the
common rule of thumb for English with OpenAI's tokenizers), plus the request's
``max_tokens`` (or the configured default) for the completion. The estimate
only sizes the reservation: the settlement replaces it with the provider's
own count.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
PER_MESSAGE_OVERHEAD = 4


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part.get("text", ""))
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else 0
            for part in content
        )
    return 0


def completion_allowance(body: dict[str, Any], default_max_tokens: int) -> int:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default_max_tokens


def estimate_tokens(body: dict[str, Any], default_max_tokens: int) -> int:
    return estimate_prompt_tokens(body) + completion_allowance(body, default_max_tokens)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    prompt = 0
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                prompt += _text_length(message.get("content")) // CHARS_PER_TOKEN
                prompt += PER_MESSAGE_OVERHEAD
    prompt += _text_length(body.get("system")) // CHARS_PER_TOKEN
    return prompt


def cap_completion(body: dict[str, Any], most: int) -> bool:
    """Lower the request's completion allowance to ``most``; True when the body changed."""
    changed = False
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > most:
            body[field] = most
            changed = True
    if "max_completion_tokens" not in body and (
        not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool)
    ):
        body["max_tokens"] = most
        changed = True
    return changed
