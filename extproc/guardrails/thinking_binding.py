"""Asking Claude to drop, not refuse, thinking whose history a guard changed.

Claude's models with preserved thinking (Fable 5.1 and later: ``_BINDING_MODELS``) check
each signed thinking block sent back against everything before it (``system``, ``tools``,
the earlier messages, the earlier blocks of its own turn): if any of it differs from what
Claude saw when it wrote the block, the request is a 400 ("The block is bound to a
different conversation"), sent again the same way, and the client cannot repair it. A
route's guards can make that difference without the client doing anything wrong:

- a response guard's mask changes an answer's text, which the client sends back as
  history: thinking Claude wrote after that text, in the same answer, no longer matches;
- a request guard's mask changes text Claude saw unmasked (its own earlier answer);
- a webhook may answer two requests of one conversation differently;
- an enrichment appended to the last user turn is in the prefix of the answer's thinking,
  and gone from that turn when the client sends it back.

On such a route (``may_change_history``), a request to a binding model that sends
thinking back asks Anthropic's API to drop the blocks that fail the check instead
(``thinking.block_binding.prefix_mismatch_behavior: "drop_block"``, with the
``thinking-binding-controls-2026-08-01`` beta flag the setting needs): the answer comes,
without the reasoning Claude can no longer use. A value the client set itself is left as
it is, and so is a request whose thinking is not adaptive (the only mode those models
think in; with thinking turned off, there is nothing to bind). Older models are never
sent the field: it is a beta of the binding models.

The flag joins the client's own: in the ``anthropic-beta`` header for Anthropic's Messages
API (Anthropic, Vertex AI and Bedrock read it from there: ``backends``), in the body's
``anthropic_beta`` list for Bedrock's InvokeModel. A provider whose ``anthropic_betas``
leaves the flag out gets nothing (it would refuse the flag, or the setting without it);
nor does a request that may fail over to a model or provider that would not take it.
"""

from __future__ import annotations

from typing import Any

from extproc.config.guard_model import GuardAction
from extproc.config.model import RouteApi
from extproc.context import PhaseOutput, RequestContext
from extproc.guardrails.policy import RouteGuards
from extproc.runtime import Upstream
from extproc.translators.claude_thinking import claude_model_family

__all__ = ["BETA", "DROP_BLOCK", "ask_to_drop_changed_thinking", "binds_thinking"]

BETA = "thinking-binding-controls-2026-08-01"
DROP_BLOCK = {"prefix_mismatch_behavior": "drop_block"}
# The models that bind a thinking block to what came before it (Anthropic's list of the
# models with preserved thinking), by their names without date or version.
_BINDING_MODELS = frozenset(
    {
        "claude-fable-5-1", "claude-fable-5-2", "claude-mythos-5-1", "claude-mythos-5-2",
        "claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5",
    }
)  # fmt: skip
# The APIs whose body is Anthropic's Messages body, sent to Claude for an answer.
_HEADER_APIS = frozenset({RouteApi.ANTHROPIC_MESSAGES})
_BODY_APIS = frozenset({RouteApi.BEDROCK_INVOKE})
_REASONING_BLOCKS = ("thinking", "redacted_thinking")


def binds_thinking(upstream_model: str) -> bool:
    """Whether Claude ``upstream_model`` (Anthropic's, Vertex's or Bedrock's id) checks
    the thinking sent back against what came before it."""
    return claude_model_family(upstream_model) in _BINDING_MODELS


def may_change_history(guards: RouteGuards) -> bool:
    """Whether the route's guards or enrichment may make the history a client sends back
    differ from what Claude saw (the module docstring). Moderation only refuses."""
    for phase in (guards.request, guards.response):
        if phase.webhooks:
            return True
        if any(guard.action is GuardAction.MASK for guard in phase.matchers.guards):
            return True
    enrichment = guards.enrichment
    return enrichment is not None and any(m.role == "user" for m in enrichment.append)


def ask_to_drop_changed_thinking(
    ctx: RequestContext, guards: RouteGuards, out: PhaseOutput
) -> None:
    """Ask for ``drop_block`` on a request the guards have read (the module docstring)."""
    route = ctx.route
    body = ctx.body
    if route is None or body is None or ctx.upstream is None:
        return
    in_header = route.api in _HEADER_APIS
    if not in_header and route.api not in _BODY_APIS:
        return
    thinking = body.get("thinking", {"type": "adaptive"})
    if not isinstance(thinking, dict) or thinking.get("type") != "adaptive":
        return
    binding = thinking.get("block_binding")
    if binding is not None and (
        not isinstance(binding, dict) or "prefix_mismatch_behavior" in binding
    ):
        return  # the client's own choice
    if not all(_takes_setting(up) for up in _upstreams(ctx)):
        return
    if not may_change_history(guards) or not _sends_thinking_back(body.get("messages")):
        return
    body["thinking"] = {**thinking, "block_binding": {**(binding or {}), **DROP_BLOCK}}
    ctx.body_changed = True
    if in_header:
        flags = _flags(ctx.request_headers.get("anthropic-beta"))
        if BETA not in flags:
            value = ",".join([*flags, BETA])
            ctx.request_headers["anthropic-beta"] = value
            out.set_headers["anthropic-beta"] = value
        return
    listed = body.get("anthropic_beta")
    known = [flag for flag in listed if isinstance(flag, str)] if isinstance(listed, list) else []
    if BETA not in known:
        body["anthropic_beta"] = [*known, BETA]


def _upstreams(ctx: RequestContext) -> list[Upstream]:
    """Every model and provider the request may be sent to: its failover chain's, or its
    own."""
    if ctx.failover_model is not None:
        chain = ctx.runtime.failover.get(ctx.failover_model)
        if chain:
            return [upstream for _, upstream in chain.values()]
    assert ctx.upstream is not None
    return [ctx.upstream]


def _takes_setting(upstream: Upstream) -> bool:
    allowed = upstream.provider.anthropic_betas
    return binds_thinking(upstream.upstream_model) and (allowed is None or BETA in allowed)


def _sends_thinking_back(messages: Any) -> bool:
    """Whether an assistant turn of the history holds a thinking block, signed or
    redacted (a client that left the blocks out sends nothing to bind)."""
    if not isinstance(messages, list):
        return False
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(block, dict) and block.get("type") in _REASONING_BLOCKS for block in content
        ):
            return True
    return False


def _flags(header: str | None) -> list[str]:
    return [flag.strip() for flag in (header or "").split(",") if flag.strip()]
