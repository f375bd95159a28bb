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
user turn's content. On Gemini's API (``gemini``) a system message becomes a text part of
``systemInstruction`` (made when the body has none, in the spelling the body uses) and a
user message a ``contents`` entry of its own with the role ``user``, so the client's own
turns (and the thought signatures in them) stay as the client sent them. Both keep the
order they are listed in, before (``prepend``) or after (``append``) the client's.
"""

from __future__ import annotations

from typing import Any

from extproc.config.guard_model import EnrichmentConfig, EnrichmentMessage
from extproc.context import RequestContext
from extproc.gemini_api import SYSTEM as GEMINI_SYSTEM


def template_values(ctx: RequestContext) -> dict[str, str]:
    identity = ctx.identity
    return {
        "user_id": identity.user_id or "",
        "group_id": identity.group_id or "",
        "api_key_id": identity.api_key_id or "",
        "route": ctx.route.name if ctx.route is not None else "",
        # What the client asked for: a model group's name, not the member drawn.
        "model": ctx.asked_model or "",
    }


def _text(message: EnrichmentMessage, values: dict[str, str]) -> str:
    # Values are data, never templates: a user id holding `{model}` stays as it is.
    return message.text(values)


def enrich(
    body: dict[str, Any],
    enrichment: EnrichmentConfig,
    values: dict[str, str],
    *,
    anthropic: bool,
    responses: bool = False,
    converse: bool = False,
    gemini: bool = False,
) -> None:
    """Add the route's messages to ``body`` in place."""
    if gemini:
        _enrich_gemini(body, enrichment, values)
        return
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
    # Each prepended block goes first, so the last one listed goes in first: the blocks
    # end up in the order the route lists them.
    for message in reversed(enrichment.prepend):
        _add_block(body, messages, block(_text(message, values)), message.role, first=True)
    for message in enrichment.append:
        _add_block(body, messages, block(_text(message, values)), message.role, first=False)


def _enrich_gemini(
    body: dict[str, Any], enrichment: EnrichmentConfig, values: dict[str, str]
) -> None:
    """The route's messages as Gemini takes them (the module docstring)."""
    contents = body.get("contents")
    if not isinstance(contents, list):
        return  # refused before the guards (gemini_api.check_body): nothing to add to
    system: dict[str, list[dict[str, Any]]] = {"prepend": [], "append": []}
    user: dict[str, list[dict[str, Any]]] = {"prepend": [], "append": []}
    for where, messages in (("prepend", enrichment.prepend), ("append", enrichment.append)):
        for message in messages:
            part = {"text": _text(message, values)}
            if message.role == "system":
                system[where].append(part)
            else:
                user[where].append({"role": "user", "parts": [part]})
    body["contents"] = [*user["prepend"], *contents, *user["append"]]
    if not system["prepend"] and not system["append"]:
        return
    # The spelling the body gives a value, else one it names (null), else camelCase: the
    # body never names the field twice.
    key = next((name for name in GEMINI_SYSTEM if body.get(name) is not None), None)
    key = key or next((name for name in GEMINI_SYSTEM if name in body), GEMINI_SYSTEM[0])
    instruction = body.get(key)
    if instruction is None:
        instruction = body[key] = {}
    parts = instruction.get("parts") if isinstance(instruction, dict) else None
    if not isinstance(instruction, dict) or not isinstance(parts, list | None):
        return  # not a Content: Google refuses the body as the client sent it
    instruction["parts"] = [*system["prepend"], *(parts or []), *system["append"]]


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
