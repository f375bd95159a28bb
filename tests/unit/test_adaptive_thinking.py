"""OpenAI's ``reasoning_effort`` sent to the Claude models that think adaptively (Opus 4.6,
Sonnet 4.6 and every later one): ``thinking: {"type": "adaptive"}`` with
``output_config.effort``, never the fixed budget Opus 4.7 and later refuse with a 400; the
older models keep their budget. The mock refuses the wrong mode as Anthropic does, so
every request these tests build passes through its checks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.errors import BadRequestError
from extproc.mock_llm.anthropic_api import (
    THOUGHT,
    InvalidRequestError,
    build_reply,
    parse_messages_request,
)
from extproc.mock_llm.faults import Fault
from extproc.mock_llm.recorder import Body
from extproc.quota.store import QuotaStore
from extproc.translators.claude_thinking import THINKING_BUDGETS, takes_adaptive_thinking
from extproc.translators.openai_anthropic import DEFAULT_MAX_TOKENS, translate_request
from tests.unit.quota_helpers import used_tokens
from tests.unit.test_reasoning_effort_claude import (
    ASK,
    CALL,
    RESULT,
    TOOLS,
    capped_chat,
    chat,
    sent_body,
)

OPUS_47 = "claude-opus-4-7"


def translate(body: dict[str, Any], model: str = OPUS_47, **options: Any) -> dict[str, Any]:
    sent = translate_request(body, model, stream=False, **options)
    # What Anthropic would answer for this model: a thinking mode it does not take is a 400.
    parse_messages_request(Body.parse(orjson.dumps({**sent, "model": model})))
    return sent


def refusal(body: dict[str, Any], model: str = OPUS_47) -> BadRequestError:
    with pytest.raises(BadRequestError) as caught:
        translate_request(body, model, stream=False)
    assert caught.value.status == 400
    return caught.value


# --- which mode a model takes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "adaptive"),
    [
        # Anthropic's ids, snapshots and aliases.
        ("claude-3-7-sonnet-20250219", False),
        ("claude-3-7-sonnet-latest", False),
        ("claude-opus-4-20250514", False),
        ("claude-opus-4-0", False),
        ("claude-opus-4-1-20250805", False),
        ("claude-opus-4-1", False),
        ("claude-sonnet-4-20250514", False),
        ("claude-sonnet-4-0", False),
        ("claude-sonnet-4-5-20250929", False),
        ("claude-sonnet-4-5", False),
        ("claude-haiku-4-5-20251001", False),
        ("claude-opus-4-5-20251101", False),
        ("claude-3-5-haiku-latest", False),  # thinks not at all: as before
        ("claude-opus-4-6", True),
        ("claude-sonnet-4-6", True),
        ("claude-opus-4-7", True),
        ("claude-opus-4-8", True),
        ("claude-opus-5", True),
        ("claude-sonnet-5", True),
        ("claude-mythos-preview", True),
        ("claude-mythos-5", True),
        ("claude-fable-5-1", True),
        ("claude-sonnet-4-5-thinking-next", True),  # not a known id: a new model
        ("CLAUDE-SONNET-4-5-20250929", False),
        # Vertex AI's.
        ("claude-sonnet-4-5@20250929", False),
        ("claude-opus-4-1@20250805", False),
        ("claude-3-7-sonnet@20250219", False),
        ("claude-opus-4@20250514", False),
        ("claude-haiku-4-5@20251001", False),
        ("claude-opus-4-6@default", True),
        ("claude-opus-4-7", True),
        # Bedrock's, cross-region profiles and ARNs included.
        ("anthropic.claude-3-7-sonnet-20250219-v1:0", False),
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", False),
        ("us.anthropic.claude-opus-4-1-20250805-v1:0", False),
        ("global.anthropic.claude-haiku-4-5-20251001-v1:0", False),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            False,
        ),
        ("anthropic.claude-opus-4-6-v1", True),
        ("anthropic.claude-opus-4-7", True),
        ("eu.anthropic.claude-sonnet-4-6", True),
        ("anthropic.claude-fable-5", True),
    ],
)
def test_the_thinking_mode_follows_the_upstream_model_id(model: str, adaptive: bool) -> None:
    assert takes_adaptive_thinking(model) is adaptive


# --- the request ------------------------------------------------------------------------


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
@pytest.mark.parametrize("model", [OPUS_47, "claude-sonnet-4-6", "claude-fable-5"])
def test_an_adaptive_model_thinks_adaptively_at_the_effort_asked(model: str, effort: str) -> None:
    """Before: a fixed budget, which Opus 4.7 and later answer with a 400."""
    sent = translate(chat(reasoning_effort=effort), model)

    assert sent["thinking"]["type"] == "adaptive"
    assert sent["output_config"] == {"effort": effort}
    # The same room as a budget would have: the answer keeps what it has without thinking.
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS + THINKING_BUDGETS[effort]


def test_a_budget_model_keeps_its_budget() -> None:
    sent = translate(chat(reasoning_effort="medium"), "claude-sonnet-4-5@20250929")

    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "output_config" not in sent


def test_a_fixed_budget_for_an_adaptive_only_model_is_what_anthropic_refuses() -> None:
    """The mock answers as Anthropic did to the gateway before: the mode is checked."""
    budget = {"type": "enabled", "budget_tokens": 1024}
    doc = {"model": OPUS_47, "max_tokens": 5000, "messages": [ASK], "thinking": budget}

    with pytest.raises(InvalidRequestError, match=r"thinking\.type\.enabled"):
        parse_messages_request(Body.parse(orjson.dumps(doc)))


def test_adaptive_thinking_for_a_budget_only_model_is_what_anthropic_refuses() -> None:
    doc = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 5000,
        "messages": [ASK],
        "thinking": {"type": "adaptive"},
    }

    with pytest.raises(InvalidRequestError, match=r"thinking\.type\.adaptive"):
        parse_messages_request(Body.parse(orjson.dumps(doc)))


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens"])
@pytest.mark.parametrize("most", [1, 500, 1024, 20_000])
def test_any_bound_the_client_names_is_kept_with_adaptive_thinking(field: str, most: int) -> None:
    """No least budget: a bound of 1,024 or less is no 400 (it is for a budget model)."""
    sent = translate(chat(reasoning_effort="high", **{field: most}))

    assert sent["max_tokens"] == most
    assert sent["thinking"]["type"] == "adaptive"


def test_the_effort_goes_beside_the_structured_output_format() -> None:
    schema = {"type": "object", "properties": {"product": {"type": "integer"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}

    sent = translate(chat(reasoning_effort="low", response_format=response_format))

    assert sent["output_config"]["effort"] == "low"
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert sent["thinking"]["type"] == "adaptive"


@pytest.mark.parametrize("effort", ["none", "minimal", None])
def test_no_thinking_and_no_effort_for_none_and_minimal(effort: str | None) -> None:
    sent = translate(chat(reasoning_effort=effort))

    assert "thinking" not in sent and "output_config" not in sent
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS


def test_an_unknown_effort_is_still_a_400_naming_it() -> None:
    assert refusal(chat(reasoning_effort="max")).param == "reasoning_effort"


@pytest.mark.parametrize(("field", "value"), [("temperature", 0.3), ("top_p", 0.5)])
def test_sampling_refused_while_thinking_is_a_400_naming_it(field: str, value: float) -> None:
    """Anthropic refuses them with adaptive thinking as with a budget."""
    assert refusal(chat(reasoning_effort="medium", **{field: value})).param == field


def test_a_forced_tool_call_with_adaptive_thinking_is_a_400_naming_tool_choice() -> None:
    error = refusal(chat(tools=TOOLS, tool_choice="required", reasoning_effort="low"))

    assert error.param == "tool_choice"


def test_inside_a_tool_loop_adaptive_thinking_is_left_off_too() -> None:
    sent = translate(chat(ASK, CALL, RESULT, tools=TOOLS, reasoning_effort="high"))

    assert "thinking" not in sent and "output_config" not in sent
    # What the gateway guards against: Anthropic's rule holds for adaptive thinking.
    with pytest.raises(InvalidRequestError, match="Expected `thinking`"):
        parse_messages_request(
            Body.parse(orjson.dumps({**sent, "model": OPUS_47, "thinking": {"type": "adaptive"}}))
        )


# --- the mock's answer ------------------------------------------------------------------


def test_the_mock_thinks_adaptively_and_counts_the_thought_as_output() -> None:
    sent = translate(chat(reasoning_effort="low"))
    reply = build_reply(parse_messages_request(Body.parse(orjson.dumps(sent))), Fault())

    blocks = reply.content("msg_mock_1")
    assert blocks[0]["type"] == "thinking" and blocks[0]["thinking"] == THOUGHT
    assert reply.output_tokens > len(reply.pieces) > 0


def test_a_bound_too_small_for_the_thought_ends_in_it() -> None:
    sent = translate(chat(reasoning_effort="high", max_completion_tokens=3))
    reply = build_reply(parse_messages_request(Body.parse(orjson.dumps(sent))), Fault())

    assert reply.stop_reason == "max_tokens"
    assert reply.output_tokens == 3 and reply.pieces == []


def test_the_mock_refuses_an_effort_anthropic_does_not_know() -> None:
    doc = {"model": OPUS_47, "max_tokens": 10, "messages": [ASK], "output_config": {"effort": "x"}}

    with pytest.raises(InvalidRequestError, match=r"output_config\.effort"):
        parse_messages_request(Body.parse(orjson.dumps(doc)))


# --- the quota --------------------------------------------------------------------------

ADAPTIVE_CHAT = {"model": OPUS_47, "messages": [ASK], "reasoning_effort": "high"}


async def test_the_reservation_holds_what_an_adaptive_request_gets(quota_store: QuotaStore) -> None:
    sent = sent_body(await capped_chat(quota_store, 1_000_000, ADAPTIVE_CHAT))

    # What the translation sends uncapped (its 4,096 and high's room), not
    # quotas.default_max_tokens (1000), as for a budget model.
    assert sent["max_tokens"] == 4096 + 4096
    assert sent["thinking"]["type"] == "adaptive"
    assert sent["output_config"] == {"effort": "high"}
    used = await used_tokens(quota_store, 1_000_000)
    assert used - sent["max_tokens"] < 20  # the rest is the prompt's estimate


async def test_a_small_hard_cap_lets_an_adaptive_request_through(quota_store: QuotaStore) -> None:
    """A budget model needs 1,025 tokens left (a 429 below); adaptive thinking needs one."""
    answer = await capped_chat(quota_store, 600, ADAPTIVE_CHAT)

    assert answer.WhichOneof("response") == "request_body"
    sent = sent_body(answer)
    assert 0 < sent["max_tokens"] < 600
    assert sent["thinking"]["type"] == "adaptive"


# --- OpenAI's xhigh, and an empty stop ----------------------------------------------------


@pytest.mark.parametrize(
    ("model", "effort"),
    [
        (OPUS_47, "xhigh"),
        ("claude-opus-5", "xhigh"),
        # Before Anthropic's xhigh: their one level above high.
        ("claude-opus-4-6", "max"),
        ("claude-sonnet-4-6", "max"),
        ("claude-mythos-preview", "max"),
    ],
)
def test_xhigh_is_the_next_level_above_high_the_model_has(model: str, effort: str) -> None:
    """Before: a 400 for OpenAI's newest level."""
    sent = translate(chat(reasoning_effort="xhigh"), model)

    assert sent["thinking"]["type"] == "adaptive"
    assert sent["output_config"] == {"effort": effort}
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS + THINKING_BUDGETS["xhigh"]


def test_xhigh_doubles_high_s_budget_for_a_budget_model() -> None:
    sent = translate(chat(reasoning_effort="xhigh"), "claude-sonnet-4-5-20250929")

    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS + 8192


@pytest.mark.parametrize(("stop", "sent"), [("", None), ([""], None), (["", "END"], ["END"])])
def test_an_empty_stop_sequence_is_left_out(stop: Any, sent: list[str] | None) -> None:
    """Before: a 400 about whitespace; it marks no place to stop, as on Bedrock."""
    assert translate(chat(stop=stop)).get("stop_sequences") == sent


@pytest.mark.parametrize("stop", ["\n", ["", " "]])
def test_a_stop_sequence_of_whitespace_alone_is_still_a_400(stop: Any) -> None:
    assert refusal(chat(stop=stop)).param == "stop"
