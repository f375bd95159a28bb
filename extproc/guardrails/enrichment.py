"""Prompt enrichment: messages a route adds before and after the client's.

Applied to the parsed request before translation, so every provider gets
them. On OpenAI routes the messages are inserted as they are (the Anthropic
and Bedrock translators move system messages where their APIs want them). On
Anthropic Messages routes a system message goes into the top-level ``system``
prompt and a user message joins the first (or last) user turn as a text
block, because that API wants user and assistant turns to alternate. On OpenAI
Responses API routes they become messages of ``input`` around the client's items
(a string ``input`` is one user message first), as the API takes system and user
messages there. On Bedrock Converse routes they go where they go on Anthropic routes,
as Converse's blocks (``{"text": ...}``): the ``system`` list, or the first (or last)
user turn's content.
"""

from __future__ import annotations

from typing import Any

from extproc.config.guard_model import EnrichmentConfig, EnrichmentMessage
from extproc.context import RequestContext


def template_values(ctx: RequestContext) -> dict[str, str]:
    identity = ctx.identity
    return {
        "user_id": identity.user_id or "",
        "group_id": identity.group_id or "",
        "api_key_id": identity.api_key_id or "",
        "route": ctx.route.name if ctx.route is not None else "",
        "model": ctx.model or "",
    }


def _text(message: EnrichmentMessage, values: dict[str, str]) -> str:
    # Only known placeholders get past config validation; values are data, never templates.
    return message.content.format_map(values)


def enrich(
    body: dict[str, Any],
    enrichment: EnrichmentConfig,
    values: dict[str, str],
    *,
    anthropic: bool,
    responses: bool = False,
    converse: bool = False,
) -> None:
    """Add the route's messages to ``body`` in place."""
    key = "input" if responses else "messages"
    messages = body.get(key)
    if responses and isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    elif responses and messages is None:
        # No input: a stored prompt or conversation is the input; the route's messages
        # still go with it (extproc.responses_api).
        messages = []
    if not isinstance(messages, list):
        return
    if not anthropic and not converse:
        before = [{"role": m.role, "content": _text(m, values)} for m in enrichment.prepend]
        after = [{"role": m.role, "content": _text(m, values)} for m in enrichment.append]
        body[key] = [*before, *messages, *after]
        return
    block = _converse_block if converse else _anthropic_block
    for message in enrichment.prepend:
        _add_block(body, messages, block(_text(message, values)), message.role, first=True)
    for message in enrichment.append:
        _add_block(body, messages, block(_text(message, values)), message.role, first=False)


def _anthropic_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _converse_block(text: str) -> dict[str, Any]:
    return {"text": text}


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content) if isinstance(content, list) else []


def _add_block(
    body: dict[str, Any], messages: list[Any], block: dict[str, Any], role: str, *, first: bool
) -> None:
    """A system block first or last in ``system``; any other joins the first or last user
    turn, or makes one when there is none (turns must alternate in both APIs)."""
    if role == "system":
        existing = _blocks(body.get("system"))
        body["system"] = [block, *existing] if first else [*existing, block]
        return
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not turns:
        messages.insert(0 if first else len(messages), {"role": "user", "content": [block]})
        return
    turn = turns[0] if first else turns[-1]
    existing = _blocks(turn.get("content"))
    turn["content"] = [block, *existing] if first else [*existing, block]
