"""Prompt-cache breakpoints an OpenAI chat client marks for Claude, read and placed.

OpenAI's chat API has no prompt-cache markers (OpenAI caches on its own), but clients of
Claude through OpenAI-compatible gateways (LiteLLM and the agent frameworks built on it)
send Anthropic's: ``cache_control: {"type": "ephemeral"}``, optionally with ``"ttl":
"5m"`` or ``"1h"``, on a content part, on a whole message (system, developer, user,
assistant or tool) or on a tool definition. Claude caches the prompt up to and including
each marked block, and a later request with the same prefix reads it at a tenth of the
input price; dropped, every call pays the whole prompt again.

``cache_control`` reads a client's marker (a 400 naming it when it is no marker Claude
takes: another type, another ttl, another key, not an object), and the translators put
it where each API takes it: Anthropic's ``cache_control`` on the block
(``openai_anthropic``), Converse's ``cachePoint`` block after it (``openai_bedrock``,
``place_cache_points``).

Claude takes at most four breakpoints a request and refuses a fifth ("A maximum of 4
blocks with cache_control may be provided. Found 5."). Clients that mark every turn
reach it in a long conversation, where the request worked through the gateway before it
carried markers: the last four in the prompt's order (tools, system, messages) are kept
(``keep_last_breakpoints``), those that cover the longest prefix, which the next turn
reads from. Bedrock holds Converse to the same four.

A marker at the top of the body (OpenRouter's, and Anthropic's own "automatic caching")
asks for a breakpoint on the prompt's last block, which moves on as the conversation
grows: it is put there (``mark_last_turn``), unless a marker of the client's is there
already, so that Claude on Bedrock and on Vertex AI get it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from extproc.errors import BadRequestError, quoted
from extproc.providers.bedrock_model_ids import base_model_id

__all__ = [
    "MARKER",
    "MAX_BREAKPOINTS",
    "cache_control",
    "check_cache_controls",
    "keep_last_breakpoints",
    "mark",
    "mark_last_turn",
    "place_cache_points",
]

# The key a marker has on a client's part, message or tool, and on Anthropic's block.
MARKER = "cache_control"
# Claude's limit of breakpoints in one request (Anthropic's and Bedrock's alike).
MAX_BREAKPOINTS = 4
_TYPE = "ephemeral"
_TTLS = ("5m", "1h")
_KEYS = frozenset(("type", "ttl"))
# How much of a refused value the error quotes: it is the client's own input.
_QUOTED_CHARS = 40
# Claude models on Bedrock that take no cache point: those before prompt caching
# (Claude 3.5 Haiku and 3.7 Sonnet were the first to have it there).
_BEDROCK_CLAUDE_WITHOUT_CACHE = (
    "anthropic.claude-v2",
    "anthropic.claude-instant-",
    "anthropic.claude-3-haiku-",
    "anthropic.claude-3-sonnet-",
    "anthropic.claude-3-opus-",
    "anthropic.claude-3-5-sonnet-",
)
# Amazon Nova's chat models cache system and messages, not tool definitions.
_NOVA = "amazon.nova-"


def cache_control(value: Any, where: str) -> dict[str, str] | None:
    """The Anthropic ``cache_control`` for the marker a client put at ``where`` (the
    part's, message's or tool's path); None when it put none (absent or null).

    Anything else than a marker Claude takes is a 400 naming it: dropped, the client
    would pay for a prompt it asked to cache, and sent, Claude's refusal would name a
    path of the translated body the client never wrote."""
    if value is None:
        return None
    param = f"{where}.{MARKER}" if where else MARKER
    if not isinstance(value, dict):
        raise BadRequestError(
            f'\'{param}\' must be an object such as {{"type": "ephemeral"}}', param=param
        )
    kind = value.get("type")
    if kind != _TYPE:
        shown = quoted(kind, _QUOTED_CHARS) if isinstance(kind, str) else "missing or not a string"
        raise BadRequestError(
            f"'{param}.type' is {shown}: Claude's prompt cache takes 'ephemeral'",
            param=f"{param}.type",
        )
    ttl = value.get("ttl")
    if ttl is not None and ttl not in _TTLS:
        shown = quoted(ttl, _QUOTED_CHARS) if isinstance(ttl, str) else "not a string"
        raise BadRequestError(
            f"'{param}.ttl' is {shown}: Claude's prompt cache lasts '5m' (the default) or '1h'",
            param=f"{param}.ttl",
        )
    for key in value:
        if key not in _KEYS:
            raise BadRequestError(
                f"'{param}' has a key Claude's prompt cache does not take, "
                f"{quoted(str(key), _QUOTED_CHARS)}: send 'type' and, optionally, 'ttl'",
                param=param,
            )
    return {"type": _TYPE} if ttl is None else {"type": _TYPE, "ttl": ttl}


def mark(blocks: list[dict[str, Any]], marker: dict[str, str] | None) -> None:
    """Put ``marker`` on the last of ``blocks``: the block a part became, or, for a part
    left out (blank text, which Claude cannot cache), the one before it in the message,
    which ends the same prefix; a message's marker on its last block. Nothing to mark,
    nothing cached: the prefix would be the one the message before it ended."""
    if marker is not None and blocks:
        blocks[-1][MARKER] = marker


def mark_last_turn(turns: list[dict[str, Any]], body: dict[str, Any]) -> None:
    """Put the body's top-level marker, if any, on the last block of the conversation,
    unless the client marked that block itself (its own marker says more)."""
    marker = cache_control(body.get(MARKER), "")
    if marker is not None and turns and MARKER not in turns[-1]["content"][-1]:
        mark(turns[-1]["content"], marker)


def check_cache_controls(body: dict[str, Any]) -> None:
    """Refuse, before the quota counts the request, the markers the translation would
    refuse (``cache_control``): the body's own, on the messages, their parts and the tools.
    What is malformed otherwise is the translation's to name."""
    cache_control(body.get(MARKER), "")
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        if not isinstance(message, dict):
            continue
        cache_control(message.get(MARKER), f"messages[{i}]")
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict):
                cache_control(part.get(MARKER), f"messages[{i}].content[{j}]")
    tools = body.get("tools")
    for k, tool in enumerate(tools if isinstance(tools, list) else ()):
        if isinstance(tool, dict):
            cache_control(tool.get(MARKER), f"tools[{k}]")


def keep_last_breakpoints(request: dict[str, Any]) -> None:
    """Leave at most ``MAX_BREAKPOINTS`` markers in an Anthropic Messages body: the last
    ones in the order Claude reads the prompt (tools, system, messages)."""
    marked = [block for block in _anthropic_blocks(request) if MARKER in block]
    for block in marked[:-MAX_BREAKPOINTS]:
        del block[MARKER]


def _anthropic_blocks(request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from request.get("tools", ())
    system = request.get("system")
    if isinstance(system, list):
        yield from system
    for turn in request["messages"]:
        yield from turn["content"]


def takes_cache_points(model_id: str) -> bool:
    """Whether the Bedrock model takes Converse's ``cachePoint`` (AWS's list of models
    with prompt caching): Claude from 3.5 Haiku and 3.7 Sonnet on, a later Claude the
    gateway does not know included, and Amazon Nova. A model an ARN hides is not known
    to: its markers are dropped, as for every other model, which would refuse them."""
    model = base_model_id(model_id)
    if model.startswith("anthropic.claude"):
        return not model.startswith(_BEDROCK_CLAUDE_WITHOUT_CACHE)
    return model.startswith(_NOVA)


def place_cache_points(converse: dict[str, Any], model_id: str) -> None:
    """Turn the markers the translation left on Converse blocks (``MARKER``, a key
    Converse does not have) into ``cachePoint`` blocks after them, for a model that takes
    them (``takes_cache_points``), the last ``MAX_BREAKPOINTS`` in the prompt's order
    (tools, system, messages); for another model, and on Nova's tools, they are dropped,
    as before the gateway carried them."""
    takes = takes_cache_points(model_id)
    tool_config = converse.get("toolConfig")
    tools: list[dict[str, Any]] = tool_config["tools"] if tool_config is not None else []
    lists = [tools, converse.get("system", []), *(turn["content"] for turn in converse["messages"])]
    if base_model_id(model_id).startswith(_NOVA):
        for tool in tools:
            tool.pop(MARKER, None)
    marked = [block for blocks in lists for block in blocks if MARKER in block]
    for block in marked if not takes else marked[:-MAX_BREAKPOINTS]:
        del block[MARKER]
    for blocks in lists:
        placed: list[dict[str, Any]] = []
        for block in blocks:
            marker = block.pop(MARKER, None)
            placed.append(block)
            if marker is not None:
                placed.append({"cachePoint": _cache_point(marker)})
        blocks[:] = placed


def _cache_point(marker: dict[str, str]) -> dict[str, str]:
    # Converse's one type is "default"; the ttl is Anthropic's, as Bedrock names it.
    point = {"type": "default"}
    if "ttl" in marker:
        point["ttl"] = marker["ttl"]
    return point
