"""Claude's thinking for an OpenAI client's ``reasoning_effort``: the rules both of its
translations (Anthropic's Messages API and Vertex AI's Claude in ``openai_anthropic``,
Bedrock's Converse in ``openai_bedrock``) follow, so a client reads the same answer
whichever provider serves Claude.

``reasoning_effort`` is OpenAI's only switch for reasoning. A level turns on thinking in
the mode the model takes (``takes_adaptive_thinking``): a fixed budget
(``THINKING_BUDGETS``) for the models before Claude 4.6, adaptive thinking at the level's
effort (``adaptive_effort``) after. The budget comes out of ``max_tokens``
(``fit_thinking``); sampling and forced tool calls Anthropic refuses while Claude thinks
are 400s naming the OpenAI field; and thinking stays off while the conversation's last
assistant turn is open (``turn_left_open``), whose thinking block an OpenAI client never
had to send back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from extproc.errors import BadRequestError
from extproc.quota.thinking_budget import MIN_THINKING_BUDGET

__all__ = [
    "THINKING_BUDGETS",
    "adaptive_effort",
    "adaptive_thinking",
    "claude_model_family",
    "fit_thinking",
    "forced_call_with_thinking",
    "reasoning_effort",
    "refuse_sampling_with_thinking",
    "takes_adaptive_thinking",
    "turn_left_open",
]

# reasoning_effort -> extended thinking's budget_tokens; "none" and "minimal" think not.
# OpenAI's "xhigh" (its newest level, above "high") doubles "high", as each level does.
THINKING_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}
_NO_THINKING = ("none", "minimal")
_EFFORTS = "'none', 'minimal', 'low', 'medium' or 'high' (or 'xhigh', above high)"
# With thinking, Anthropic takes top_p from here to 1 only (and temperature 1 only).
_THINKING_MIN_TOP_P = 0.95
# The Claude models that take thinking with a fixed budget only, by their names without
# date or version: they came before adaptive thinking (Claude Opus 4.6 and Sonnet 4.6),
# and refuse it. Claude 3 models before 3.7 do not think at all; they keep the budget the
# translation always sent them, and answer Anthropic's 400 about it. A model not listed
# here, a new one included, thinks adaptively: Opus 4.7 and later refuse a budget.
_BUDGET_ONLY_MODELS = frozenset(
    {
        "claude-3-7-sonnet", "claude-opus-4", "claude-opus-4-0", "claude-opus-4-1",
        "claude-sonnet-4", "claude-sonnet-4-0", "claude-sonnet-4-5", "claude-haiku-4-5",
        "claude-opus-4-5",
    }
)  # fmt: skip
# The adaptive models that came before Anthropic's "xhigh" effort (Opus 4.7 brought it):
# they refuse it, and their one level above "high" is "max".
_NO_XHIGH_MODELS = frozenset({"claude-opus-4-6", "claude-sonnet-4-6", "claude-mythos-preview"})
# The adaptive models that show their thinking (summarized) unless asked not to. Opus 4.7,
# Mythos Preview and the models after them leave a thinking block's text empty unless the
# request asks for it (``thinking.display``), and bill the thinking all the same.
_SHOWN_THINKING_MODELS = frozenset({"claude-opus-4-6", "claude-sonnet-4-6"})
# What follows a model's name in its id: a date snapshot (``-20250929``) or ``-latest``,
# then Bedrock's version (``-v1:0``, ``-v1:0:200k``). Vertex's ``@20250929`` is cut at
# the ``@``.
_MODEL_ID_SUFFIX = re.compile(r"(?:-(?:\d{8}|latest))?(?:-v\d+(?::\w+)*)?$")


def takes_adaptive_thinking(upstream_model: str) -> bool:
    """Whether Claude ``upstream_model`` thinks adaptively (``{"type": "adaptive"}`` with
    ``output_config.effort``) rather than with a fixed budget (``_BUDGET_ONLY_MODELS``).

    The id may be Anthropic's (``claude-sonnet-4-5-20250929``, ``claude-opus-4-7``),
    Vertex AI's (``claude-sonnet-4-5@20250929``) or Bedrock's
    (``us.anthropic.claude-sonnet-4-5-20250929-v1:0``, or an inference profile's ARN
    ending in one); an id the gateway cannot read is a new model, which thinks adaptively."""
    family = claude_model_family(upstream_model)
    return family not in _BUDGET_ONLY_MODELS and not family.startswith("claude-3-")


def adaptive_thinking(upstream_model: str) -> dict[str, Any]:
    """Anthropic's ``thinking`` field for a Claude that thinks adaptively: ``{"type":
    "adaptive"}``, with ``display: "summarized"`` for the models that would otherwise
    answer with an empty thinking block (Opus 4.7, Mythos Preview and later: their
    default display is ``omitted``), since the client asked to see Claude reason and
    pays for the thinking. Opus 4.6 and Sonnet 4.6 show it already and get no more."""
    if claude_model_family(upstream_model) in _SHOWN_THINKING_MODELS:
        return {"type": "adaptive"}
    return {"type": "adaptive", "display": "summarized"}


def adaptive_effort(effort: str, upstream_model: str) -> str:
    """Anthropic's ``output_config.effort`` for a ``reasoning_effort`` level sent to a
    Claude that thinks adaptively: the level itself, but ``xhigh`` is ``max`` for the
    models that came before Anthropic's ``xhigh`` (``_NO_XHIGH_MODELS``), which refuse it
    and have no other level above ``high``."""
    if effort == "xhigh" and claude_model_family(upstream_model) in _NO_XHIGH_MODELS:
        return "max"
    return effort


def claude_model_family(upstream_model: str) -> str:
    """A Claude model's name without date or version (``claude-sonnet-4-5``), from any of
    the ids ``takes_adaptive_thinking`` reads."""
    name = upstream_model.lower().rsplit("/", 1)[-1].partition("@")[0]
    # Bedrock names the maker and, for a cross-region profile, the region before it.
    name = name[name.find("claude-") :] if "claude-" in name else name
    return _MODEL_ID_SUFFIX.sub("", name)


def reasoning_effort(body: dict[str, Any]) -> str | None:
    """The thinking level the body's ``reasoning_effort`` asks for (a key of
    ``THINKING_BUDGETS``); None for no thinking (``none``, ``minimal``, or no value).
    Another value is a 400: a client that asked the model to reason must not get an answer
    without it unawares."""
    effort = body.get("reasoning_effort")
    if effort is None or (isinstance(effort, str) and effort in _NO_THINKING):
        return None
    if isinstance(effort, str) and effort in THINKING_BUDGETS:
        return effort
    raise BadRequestError(
        f"reasoning_effort must be {_EFFORTS} for this model", param="reasoning_effort"
    )


def turn_left_open(
    turns: list[dict[str, Any]], calls_a_tool: Callable[[dict[str, Any]], bool] | None = None
) -> bool:
    """Whether the conversation's last assistant turn is still open: it holds tool calls
    (their results follow, and Claude carries on in the same turn), or it ends the
    conversation (a prefill). With thinking on, Anthropic wants such a turn to start with
    the thinking block Claude wrote in it, signature included ("Expected `thinking` or
    `redacted_thinking`, but found `tool_use`"), and an OpenAI client has none to send
    back; without thinking, the turn goes on as it started.

    ``turns`` are Anthropic's; ``calls_a_tool`` tells another API's tool call blocks
    (Converse's ``toolUse``) for the same rule."""
    is_call = calls_a_tool or _is_tool_use
    for turn in reversed(turns):
        if turn["role"] == "assistant":
            return turn is turns[-1] or any(is_call(block) for block in turn["content"])
    return False


def _is_tool_use(block: dict[str, Any]) -> bool:
    return bool(block["type"] == "tool_use")


def fit_thinking(budget: int, named: tuple[str, int] | None, default: int) -> tuple[int, int]:
    """(budget_tokens, max_tokens) for a thinking budget, which Anthropic wants below
    max_tokens: a body that names no bound gets the default plus the budget, so the
    answer keeps the room it has without thinking; a bound the body names (or a hard cap
    set) stays, as OpenAI's bounds reasoning and answer together, with the budget below
    it, or a 400 when it leaves no room for the least budget."""
    if named is None:
        return budget, default + budget
    field, most = named
    if most <= MIN_THINKING_BUDGET:
        raise BadRequestError(
            f"'{field}' ({most}) leaves Claude no room to think: with reasoning_effort it "
            f"must be above {MIN_THINKING_BUDGET}, Claude's least thinking budget (or "
            "leave reasoning_effort out, or set it to 'none')",
            param=field,
        )
    return min(budget, most - 1), most


def forced_call_with_thinking() -> BadRequestError:
    """The refusal of a ``tool_choice`` that forces a call while Claude thinks, which
    Anthropic refuses ("Thinking may not be enabled when tool_choice forces tool use")."""
    return BadRequestError(
        "Claude cannot think before a forced tool call: with reasoning_effort, "
        "tool_choice must be 'auto' or 'none' (or leave reasoning_effort out, or "
        "set it to 'none', to force the call)",
        param="tool_choice",
    )


def refuse_sampling_with_thinking(temperature: float | None, top_p: float | None) -> None:
    """Anthropic refuses a temperature other than 1 and a top_p below 0.95 while Claude
    thinks; so does OpenAI for its reasoning models, and a client is told which field.
    The values are those the translation sends (clamped, or left out)."""
    if temperature is not None and temperature != 1:
        raise BadRequestError(
            "Claude takes no temperature but 1 while it thinks (reasoning_effort): leave "
            "'temperature' out or set it to 1, or leave reasoning_effort out",
            param="temperature",
        )
    if top_p is not None and top_p < _THINKING_MIN_TOP_P:
        raise BadRequestError(
            f"Claude takes no top_p below {_THINKING_MIN_TOP_P} while it thinks "
            "(reasoning_effort): leave 'top_p' out, or leave reasoning_effort out",
            param="top_p",
        )
