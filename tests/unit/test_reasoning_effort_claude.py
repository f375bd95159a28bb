"""OpenAI's ``reasoning_effort`` sent to Claude: extended thinking with a budget per level,
what Anthropic refuses beside it told as OpenAI-shaped 400s naming the field, agent loops
kept working, Claude's thinking shown as ``reasoning_content``, and the quota reserving
and capping the same ``max_tokens`` the provider gets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

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
from extproc.quota.thinking_budget import MIN_THINKING_BUDGET
from extproc.translators.openai_anthropic import (
    DEFAULT_MAX_TOKENS,
    CompletionTranslator,
    StreamTranslator,
    translate_request,
)
from tests.unit.quota_helpers import capped_request, used_tokens
from tests.unit.test_thinking_budget import sent_body as changed_body

MODEL = "claude-sonnet-4-5-20250929"
ASK = {"role": "user", "content": "What is 17 * 23?"}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "multiply", "arguments": '{"a": 17, "b": 23}'},
        }
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "391"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "multiply",
            "parameters": {"type": "object", "properties": {"a": {}, "b": {}}},
        },
    }
]


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet", "messages": list(messages or [ASK]), **fields}


def translate(body: dict[str, Any], **options: Any) -> dict[str, Any]:
    sent = translate_request(body, MODEL, stream=False, **options)
    # The mock checks what Anthropic checks (thinking's rules included): it must pass.
    parse_messages_request(Body.parse(orjson.dumps(sent)), options.get("anthropic_version"))
    return sent


def refusal(body: dict[str, Any], **options: Any) -> BadRequestError:
    with pytest.raises(BadRequestError) as caught:
        translate_request(body, MODEL, stream=False, **options)
    assert caught.value.status == 400
    return caught.value


# --- the request ------------------------------------------------------------------------


@pytest.mark.parametrize(("effort", "budget"), [("low", 1024), ("medium", 2048), ("high", 4096)])
def test_reasoning_effort_turns_on_thinking_and_keeps_the_answer_its_room(
    effort: str, budget: int
) -> None:
    sent = translate(chat(reasoning_effort=effort))

    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS + budget


@pytest.mark.parametrize("effort", ["none", "minimal", None])
def test_no_thinking_is_sent_for_none_and_minimal(effort: str | None) -> None:
    sent = translate(chat(reasoning_effort=effort))

    assert "thinking" not in sent
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS


@pytest.mark.parametrize("effort", ["maximum", "HIGH", "", 3, ["high"], {"effort": "high"}])
def test_an_unknown_reasoning_effort_is_a_400_naming_it(effort: Any) -> None:
    error = refusal(chat(reasoning_effort=effort))

    assert error.param == "reasoning_effort"
    assert "'low', 'medium' or 'high'" in error.message


def test_an_unknown_reasoning_effort_is_refused_inside_a_tool_loop_too() -> None:
    error = refusal(chat(ASK, CALL, RESULT, tools=TOOLS, reasoning_effort="extreme"))

    assert error.param == "reasoning_effort"


@pytest.mark.parametrize(
    ("field", "most", "effort", "budget"),
    [
        ("max_completion_tokens", 8000, "high", 4096),
        ("max_completion_tokens", 3000, "high", 2999),
        ("max_tokens", 1025, "low", 1024),
    ],
)
def test_a_bound_the_client_names_stays_and_the_budget_fits_below_it(
    field: str, most: int, effort: str, budget: int
) -> None:
    sent = translate(chat(reasoning_effort=effort, **{field: most}))

    assert sent["max_tokens"] == most
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens"])
def test_a_bound_with_no_room_to_think_is_a_400_naming_it(field: str) -> None:
    error = refusal(chat(reasoning_effort="low", **{field: MIN_THINKING_BUDGET}))

    assert error.param == field
    assert "1024" in error.message


@pytest.mark.parametrize("temperature", [0, 0.7])
def test_a_temperature_claude_cannot_think_at_is_a_400_naming_it(temperature: float) -> None:
    error = refusal(chat(reasoning_effort="medium", temperature=temperature))

    assert error.param == "temperature"


@pytest.mark.parametrize("temperature", [1, 1.5])
def test_temperature_one_thinks(temperature: float) -> None:
    # OpenAI's 0..2 is clamped to Claude's 0..1: 1.5 goes out as 1.
    sent = translate(chat(reasoning_effort="medium", temperature=temperature))

    assert sent["temperature"] == 1 and sent["thinking"]["budget_tokens"] == 2048


def test_a_temperature_the_api_version_does_not_send_is_no_conflict() -> None:
    sent = translate(chat(reasoning_effort="low", temperature=0.2), anthropic_version="2026-10-21")

    assert "temperature" not in sent and sent["thinking"]["budget_tokens"] == 1024


def test_a_top_p_below_what_thinking_takes_is_a_400_naming_it() -> None:
    error = refusal(chat(reasoning_effort="low", top_p=0.5))

    assert error.param == "top_p"
    assert translate(chat(reasoning_effort="low", top_p=0.97))["top_p"] == 0.97


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "multiply"}}]
)
def test_a_forced_tool_call_is_a_400_naming_tool_choice(choice: Any) -> None:
    error = refusal(chat(tools=TOOLS, tool_choice=choice, reasoning_effort="high"))

    assert error.param == "tool_choice"


def test_tool_choice_auto_thinks() -> None:
    sent = translate(chat(tools=TOOLS, tool_choice="auto", reasoning_effort="high"))

    assert sent["tool_choice"] == {"type": "auto"}
    assert sent["thinking"]["budget_tokens"] == 4096


def test_inside_a_tool_loop_the_request_goes_without_thinking() -> None:
    """The client never got the thinking block's signature to send back, and Anthropic
    refuses a thinking request whose last tool-calling turn does not start with it."""
    body = chat(ASK, CALL, RESULT, tools=TOOLS, reasoning_effort="high")

    sent = translate(body)

    assert "thinking" not in sent
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS
    # What the gateway guards against: the same conversation with thinking on.
    with pytest.raises(InvalidRequestError, match="Expected `thinking`"):
        parse_messages_request(
            Body.parse(
                orjson.dumps({**sent, "thinking": {"type": "enabled", "budget_tokens": 1024}})
            )
        )


def test_a_tool_loop_with_the_user_speaking_after_it_is_still_one_turn() -> None:
    sent = translate(chat(ASK, CALL, RESULT, {"role": "user", "content": "Thanks, and 2*3?"},
                          tools=TOOLS, reasoning_effort="low"))  # fmt: skip

    assert "thinking" not in sent


def test_after_a_tool_loop_ends_in_an_answer_the_next_question_thinks() -> None:
    answer = {"role": "assistant", "content": "17 * 23 = 391."}
    sent = translate(
        chat(ASK, CALL, RESULT, answer, {"role": "user", "content": "And 2 * 3?"},
             tools=TOOLS, reasoning_effort="low")
    )  # fmt: skip

    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_a_prefill_goes_without_thinking() -> None:
    sent = translate(chat(ASK, {"role": "assistant", "content": "The answer is"},
                          reasoning_effort="medium"))  # fmt: skip

    assert "thinking" not in sent


# --- the answer -------------------------------------------------------------------------


def completion(message: dict[str, Any]) -> dict[str, Any]:
    translator = CompletionTranslator(request_id="r", created=0)
    answer: dict[str, Any] = orjson.loads(translator.feed(orjson.dumps(message), True) or b"")
    return answer


THINKING_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [
        {"type": "thinking", "thinking": "17 * 23 = 340 + 51.", "signature": "EqQBsig"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"},
        {"type": "text", "text": "391"},
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 20, "output_tokens": 180},
}


def test_thinking_comes_back_as_reasoning_content_and_is_billed_as_anthropic_counted() -> None:
    answer = completion(THINKING_MESSAGE)

    message = answer["choices"][0]["message"]
    assert message["content"] == "391"
    assert message["reasoning_content"] == "17 * 23 = 340 + 51."
    assert b"EqQBsig" not in orjson.dumps(answer) and b"EmwKAhgBEgy3va" not in orjson.dumps(answer)
    # Anthropic's output_tokens counts the thinking: that is the completion billed.
    assert answer["usage"]["completion_tokens"] == 180
    assert answer["usage"]["total_tokens"] == 200
    assert "completion_tokens_details" not in answer["usage"]


def test_an_answer_without_thinking_has_no_reasoning_content() -> None:
    plain = {**THINKING_MESSAGE, "content": [{"type": "text", "text": "391"}]}

    assert "reasoning_content" not in completion(plain)["choices"][0]["message"]


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def block(index: int, kind: str, **fields: Any) -> bytes:
    return sse("content_block_start", {"index": index, "content_block": {"type": kind, **fields}})


def delta(index: int, kind: str, **fields: Any) -> bytes:
    return sse("content_block_delta", {"index": index, "delta": {"type": kind, **fields}})


def stop(index: int) -> bytes:
    return sse("content_block_stop", {"index": index})


def test_streamed_thinking_comes_as_reasoning_content_deltas() -> None:
    body = b"".join(
        [
            sse("message_start", {"message": {"model": MODEL, "usage": {"input_tokens": 20}}}),
            block(0, "thinking", thinking=""),
            delta(0, "thinking_delta", thinking="17 * 23"),
            delta(0, "thinking_delta", thinking=" = 391."),
            delta(0, "signature_delta", signature="EqQBsig"),
            stop(0),
            block(1, "redacted_thinking", data="Emw"),
            stop(1),
            block(2, "text", text=""),
            delta(2, "text_delta", text="391"),
            stop(2),
            sse(
                "message_delta",
                {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 90}},
            ),
            sse("message_stop", {}),
        ]
    )
    translator = StreamTranslator(include_usage=True, request_id="r", created=0)

    out = translator.feed(body, True)

    events = [e.removeprefix(b"data: ") for e in out.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]" and b"EqQBsig" not in out and b"Emw" not in out
    chunks = [orjson.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert [d["reasoning_content"] for d in deltas if "reasoning_content" in d] == [
        "17 * 23",
        " = 391.",
    ]
    assert "".join(d.get("content") or "" for d in deltas) == "391"
    assert chunks[-1]["usage"]["completion_tokens"] == 90


def test_the_mock_thinks_when_asked_and_the_client_reads_its_thought() -> None:
    sent = translate(chat(reasoning_effort="low"))
    reply = build_reply(parse_messages_request(Body.parse(orjson.dumps(sent))), Fault())
    message = {
        "model": MODEL,
        "content": reply.content("msg_mock_1"),
        "stop_reason": reply.stop_reason,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
    }

    answer = completion(message)

    assert answer["choices"][0]["message"]["reasoning_content"] == THOUGHT
    assert answer["usage"]["completion_tokens"] == reply.output_tokens > len(reply.pieces)


# --- the quota --------------------------------------------------------------------------

AUTH = {"authorization": "Bearer team1-key"}


async def capped_chat(
    quota_store: QuotaStore, budget: int, body: dict[str, Any]
) -> ext.ProcessingResponse:
    return await capped_request(quota_store, budget, "/v1/chat/completions", body)


def sent_body(answer: ext.ProcessingResponse) -> dict[str, Any]:
    sent = changed_body(answer)
    # What reaches Anthropic must pass its checks (the mock's).
    parse_messages_request(Body.parse(orjson.dumps(sent)))
    return sent


THINKING_CHAT = {"model": "claude-sonnet-4-0", "messages": [ASK], "reasoning_effort": "high"}


async def test_the_reservation_holds_the_budget_the_provider_gets(quota_store: QuotaStore) -> None:
    answer = await capped_chat(quota_store, 1_000_000, THINKING_CHAT)

    sent = sent_body(answer)
    # What the translation sends uncapped (its 4,096 and high's budget), not
    # quotas.default_max_tokens (1000): reserved, capped at, and sent.
    assert sent["max_tokens"] == 4096 + 4096
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    used = await used_tokens(quota_store, 1_000_000)
    assert used - sent["max_tokens"] < 20  # the rest is the prompt's estimate


async def test_a_hard_cap_leaves_room_and_the_budget_fits_below_it(quota_store: QuotaStore) -> None:
    answer = await capped_chat(quota_store, 3_000, THINKING_CHAT)

    sent = sent_body(answer)
    assert MIN_THINKING_BUDGET < sent["max_tokens"] < 3_000
    assert MIN_THINKING_BUDGET <= sent["thinking"]["budget_tokens"] < sent["max_tokens"]


async def test_a_hard_cap_too_small_to_think_is_a_429_not_a_400(quota_store: QuotaStore) -> None:
    answer = await capped_chat(quota_store, 600, THINKING_CHAT)

    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 429
    error = orjson.loads(answer.immediate_response.body)["error"]
    assert error["code"] == "insufficient_quota"


async def test_a_tool_loop_under_a_small_cap_goes_without_thinking(quota_store: QuotaStore) -> None:
    body = {**THINKING_CHAT, "messages": [ASK, CALL, RESULT], "tools": TOOLS}

    sent = sent_body(await capped_chat(quota_store, 600, body))

    assert "thinking" not in sent and sent["max_tokens"] < 600
