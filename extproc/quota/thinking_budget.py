"""Extended thinking under a hard cap (Anthropic's Messages API; Claude on Bedrock too).

A Messages body that asks for extended thinking (``"thinking": {"type": "enabled",
"budget_tokens": N}``) must keep N at least 1,024 and below ``max_tokens``: Anthropic
and Bedrock refuse either with a 400. Clients such as Claude Code ask for a budget just
below a large ``max_tokens``, so a hard cap that lowered ``max_tokens`` alone would turn
every such request into the provider's 400 once the budget ran low. The cap lowers the
thinking budget with it (``cap_thinking``), and a cap that leaves less room than the
least thinking needs (1,025 tokens: a budget of 1,024 and one more) refuses the request
as it refuses a prompt that does not fit (``least_completion``), rather than send what
the provider refuses. Adaptive thinking (``"type": "adaptive"``) names no budget and is
left as it is. Bedrock's Converse API passes Anthropic's ``thinking`` on to Claude in
``additionalModelRequestFields`` (``converse_fields``), bounded by
``inferenceConfig.maxTokens``: the same rules hold there.
"""

from __future__ import annotations

from typing import Any

# Anthropic's least thinking budget; max_tokens must exceed the budget. The OpenAI
# translation (openai_anthropic, reasoning_effort) fits its budgets by the same rule.
MIN_THINKING_BUDGET = 1024


def thinking_budget(body: dict[str, Any]) -> int | None:
    """The thinking budget a Messages body asks for; None when it asks for none."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    # A budget below one is none the provider takes (it refuses the request): reserved
    # as none, never as a negative allowance that would give tokens back to the quota.
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        return None
    return budget


def least_completion(body: dict[str, Any]) -> int:
    """The least ``max_tokens`` a hard cap may leave this body: room for the least
    thinking budget and one token more, or one token without thinking."""
    return MIN_THINKING_BUDGET + 1 if thinking_budget(body) is not None else 1


def cap_thinking(body: dict[str, Any], most: int | None = None) -> bool:
    """Lower the thinking budget below the body's (capped) ``max_tokens``, or below
    ``most`` when given (Converse's ``maxTokens``, the body being its
    ``additionalModelRequestFields``); whether the body changed."""
    budget = thinking_budget(body)
    bound = body.get("max_tokens") if most is None else most
    if budget is None or not isinstance(bound, int) or isinstance(bound, bool) or budget < bound:
        return False
    body["thinking"]["budget_tokens"] = max(MIN_THINKING_BUDGET, bound - 1)
    return True


def converse_fields(body: dict[str, Any]) -> dict[str, Any]:
    """A Converse body's ``additionalModelRequestFields``, where Claude's ``thinking`` is
    asked (empty when there are none)."""
    fields = body.get("additionalModelRequestFields")
    return fields if isinstance(fields, dict) else {}
