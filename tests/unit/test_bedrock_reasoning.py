"""OpenAI's ``reasoning_effort`` sent to Claude on Bedrock's Converse API: Claude thinks in
the mode its model takes (a fixed budget before Opus 4.6 and Sonnet 4.6, adaptive thinking
with ``output_config.effort`` after), by the same decisions as on Anthropic's API; its
thinking comes back as ``reasoning_content`` (whole and streamed), never its signature or
redacted thinking; the quota reserves and caps the ``maxTokens`` Bedrock gets. The mock
checks every request these tests build as Bedrock would, the thinking mode included."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.aws_eventstream import encode_event
from extproc.errors import BadRequestError
from extproc.mock_llm.anthropic_api import THOUGHT, THOUGHT_SIGNATURE
from extproc.mock_llm.bedrock_api import (
    AwsError,
    Reply,
    build_reply,
    check_model_rules,
    claude_thinks,
    content_events,
    parse_converse_request,
)
from extproc.mock_llm.faults import Fault
from extproc.mock_llm.recorder import Body
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.quota.thinking_budget import MIN_THINKING_BUDGET
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream
from extproc.translators.claude_thinking import THINKING_BUDGETS
from extproc.translators.openai_anthropic import DEFAULT_MAX_TOKENS
from extproc.translators.openai_bedrock import (
    CompletionTranslator,
    StreamTranslator,
    translate_request,
)
from tests.unit.quota_helpers import capped_runtime, used_tokens
from tests.unit.test_reasoning_effort_claude import ASK, CALL, RESULT, TOOLS, chat

SONNET_45 = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
OPUS_47 = "global.anthropic.claude-opus-4-7"
SONNET_46 = "anthropic.claude-sonnet-4-6"


def mock_answers(sent: dict[str, Any], model_id: str) -> Reply:
    """What the mock (Bedrock) answers for a Converse body; raises AwsError as it refuses."""
    body = Body.parse(orjson.dumps(sent))
    req = parse_converse_request(model_id, body)
    check_model_rules(model_id, sent, stream=False)
    thinks = claude_thinks(model_id, sent)
    return build_reply(replace(req, thinks=thinks), Fault())


def translate(body: dict[str, Any], model_id: str = SONNET_45, **options: Any) -> dict[str, Any]:
    sent = translate_request(body, model_id=model_id, **options)
    mock_answers(sent, model_id)  # Bedrock takes it
    return sent


def refusal(body: dict[str, Any], model_id: str = SONNET_45) -> BadRequestError:
    with pytest.raises(BadRequestError) as caught:
        translate_request(body, model_id=model_id)
    assert caught.value.status == 400
    return caught.value


# --- the request ------------------------------------------------------------------------


@pytest.mark.parametrize("effort", ["low", "medium", "high", "xhigh"])
def test_a_budget_model_thinks_with_the_level_s_budget(effort: str) -> None:
    """Before: reasoning_effort was dropped, and the answer came without thinking."""
    sent = translate(chat(reasoning_effort=effort))

    budget = THINKING_BUDGETS[effort]
    assert sent["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": budget}
    }
    # The answer keeps the room it has without thinking.
    assert sent["inferenceConfig"]["maxTokens"] == DEFAULT_MAX_TOKENS + budget


@pytest.mark.parametrize("model_id", [OPUS_47, SONNET_46, "anthropic.claude-opus-4-6-v1"])
def test_an_adaptive_model_thinks_adaptively_at_the_effort_asked(model_id: str) -> None:
    sent = translate(chat(reasoning_effort="medium"), model_id)

    fields = sent["additionalModelRequestFields"]
    assert set(fields) == {"thinking", "output_config"}
    assert fields["thinking"]["type"] == "adaptive"
    assert fields["output_config"] == {"effort": "medium"}
    assert sent["inferenceConfig"]["maxTokens"] == DEFAULT_MAX_TOKENS + 2048


@pytest.mark.parametrize(
    ("model_id", "effort"),
    [(OPUS_47, "xhigh"), (SONNET_46, "max"), ("anthropic.claude-opus-4-6-v1", "max")],
)
def test_xhigh_is_the_next_level_above_high_the_model_has(model_id: str, effort: str) -> None:
    sent = translate(chat(reasoning_effort="xhigh"), model_id)

    assert sent["additionalModelRequestFields"]["output_config"] == {"effort": effort}


def test_the_wrong_mode_for_a_model_is_what_bedrock_refuses() -> None:
    """The mock refuses as Bedrock does, both ways."""
    budget = translate_request(chat(reasoning_effort="low"), model_id=SONNET_45)
    adaptive = translate_request(chat(reasoning_effort="low"), model_id=OPUS_47)

    with pytest.raises(AwsError, match=r"thinking\.type\.enabled"):
        mock_answers(budget, OPUS_47)
    with pytest.raises(AwsError, match=r"thinking\.type\.adaptive"):
        mock_answers(adaptive, SONNET_45)


def test_a_bound_the_client_names_stays_and_the_budget_fits_below_it() -> None:
    sent = translate(chat(reasoning_effort="high", max_completion_tokens=2000))

    assert sent["inferenceConfig"]["maxTokens"] == 2000
    assert sent["additionalModelRequestFields"]["thinking"]["budget_tokens"] == 1999


def test_a_bound_with_no_room_to_think_is_a_400_naming_it() -> None:
    assert refusal(chat(reasoning_effort="low", max_tokens=1024)).param == "max_tokens"


def test_the_default_the_caller_gives_is_raised_by_the_budget() -> None:
    sent = translate(chat(reasoning_effort="low"), default_max_tokens=1000)

    assert sent["inferenceConfig"]["maxTokens"] == 1000 + 1024


@pytest.mark.parametrize(("field", "value"), [("temperature", 0.3), ("top_p", 0.5)])
def test_sampling_claude_cannot_think_at_is_a_400_naming_it(field: str, value: float) -> None:
    assert refusal(chat(reasoning_effort="medium", **{field: value})).param == field


@pytest.mark.parametrize("model_id", [SONNET_45, OPUS_47])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "multiply"}}]
)
def test_a_forced_tool_call_is_a_400_naming_tool_choice(model_id: str, choice: Any) -> None:
    body = chat(tools=TOOLS, tool_choice=choice, reasoning_effort="low")

    assert refusal(body, model_id).param == "tool_choice"
    # One call at a time moves the choice to Anthropic's field: still refused.
    one_at_a_time = {**body, "parallel_tool_calls": False}
    assert refusal(one_at_a_time, model_id).param == "tool_choice"


def test_tool_choice_auto_thinks_beside_one_call_at_a_time() -> None:
    sent = translate(chat(tools=TOOLS, reasoning_effort="low", parallel_tool_calls=False))

    fields = sent["additionalModelRequestFields"]
    assert fields["thinking"]["type"] == "enabled"
    assert fields["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_an_unknown_effort_is_a_400_naming_it() -> None:
    assert refusal(chat(reasoning_effort="maximum")).param == "reasoning_effort"


@pytest.mark.parametrize("model_id", [SONNET_45, OPUS_47])
def test_inside_a_tool_loop_the_request_goes_without_thinking(model_id: str) -> None:
    sent = translate(chat(ASK, CALL, RESULT, tools=TOOLS, reasoning_effort="high"), model_id)

    assert "additionalModelRequestFields" not in sent
    # What the gateway guards against: Bedrock wants the turn to start with its thought.
    thinking = {"thinking": {"type": "adaptive"}} if model_id == OPUS_47 else None
    fields = thinking or {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    with pytest.raises(AwsError, match="Expected `thinking`"):
        mock_answers({**sent, "additionalModelRequestFields": fields}, model_id)


def test_a_tool_history_sent_as_text_leaves_no_turn_open() -> None:
    """Without tools the history goes as text: the next question can think."""
    sent = translate(chat(ASK, CALL, RESULT, reasoning_effort="low"))

    assert sent["additionalModelRequestFields"]["thinking"]["type"] == "enabled"


def test_a_prefill_goes_without_thinking() -> None:
    prefill = {"role": "assistant", "content": "The answer is"}

    assert "additionalModelRequestFields" not in translate(
        chat(ASK, prefill, reasoning_effort="low")
    )


@pytest.mark.parametrize(
    "model_id", ["amazon.nova-micro-v1:0", "meta.llama3-8b-instruct-v1:0", "deepseek.r1-v1:0"]
)
def test_other_models_get_no_thinking_fields(model_id: str) -> None:
    """As before: Converse has no common switch for them."""
    sent = translate_request(chat(reasoning_effort="high"), model_id=model_id)

    assert "additionalModelRequestFields" not in sent
    assert "inferenceConfig" not in sent


# --- the answer -------------------------------------------------------------------------


def completion(document: dict[str, Any]) -> dict[str, Any]:
    translator = CompletionTranslator(model="m", request_id="r", created=1)
    out = translator.feed(orjson.dumps(document), True)
    assert out is not None
    answer: dict[str, Any] = orjson.loads(out)
    return answer


def test_the_mock_thinks_and_the_client_reads_the_thought_not_its_signature() -> None:
    sent = translate(chat(reasoning_effort="low"))
    reply = mock_answers(sent, SONNET_45)
    document = {
        "output": {"message": {"role": "assistant", "content": reply.content()}},
        "stopReason": reply.stop_reason,
        "usage": reply.usage(),
    }

    answer = completion(document)

    message = answer["choices"][0]["message"]
    assert message["reasoning_content"] == THOUGHT
    assert message["content"] == reply.text and THOUGHT not in message["content"]
    assert THOUGHT_SIGNATURE not in orjson.dumps(answer).decode()
    # The thought is output, billed as Bedrock counted it.
    assert answer["usage"]["completion_tokens"] == len(reply.thought) + len(reply.pieces)


def test_redacted_thinking_is_not_shown() -> None:
    content = [
        {"reasoningContent": {"redactedContent": "ZW5jcnlwdGVk"}},
        {"text": "42"},
    ]
    document = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14},
    }

    message = completion(document)["choices"][0]["message"]

    assert message["content"] == "42"
    assert "reasoning_content" not in message
    assert "ZW5jcnlwdGVk" not in orjson.dumps(message).decode()


def test_an_answer_without_thinking_has_no_reasoning_content() -> None:
    reply = mock_answers(translate(chat()), SONNET_45)
    document = {
        "output": {"message": {"role": "assistant", "content": reply.content()}},
        "stopReason": reply.stop_reason,
        "usage": reply.usage(),
    }

    assert "reasoning_content" not in completion(document)["choices"][0]["message"]


def streamed(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    translator = StreamTranslator(model="m", include_usage=False, request_id="r", created=1)
    frames = [("messageStart", {"role": "assistant"}), *events]
    frames += [("messageStop", {"stopReason": "end_turn"})]
    usage = {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14}
    frames += [("metadata", {"usage": usage, "metrics": {"latencyMs": 1}})]
    raw = b"".join(encode_event(kind, orjson.dumps(data)) for kind, data in frames)
    out = translator.feed(raw, True)
    chunks = [line.removeprefix(b"data: ") for line in out.split(b"\n\n") if line]
    assert chunks[-1] == b"[DONE]"
    return [orjson.loads(chunk) for chunk in chunks[:-1]]


def test_streamed_thinking_comes_as_reasoning_content_deltas() -> None:
    reply = mock_answers(translate(chat(reasoning_effort="high")), SONNET_45)

    chunks = streamed(content_events(reply))

    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == THOUGHT
    assert "".join(d.get("content", "") for d in deltas) == reply.text
    # The thought streams before the answer, and its signature never does.
    first_text = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first_text:])
    assert THOUGHT_SIGNATURE not in orjson.dumps(chunks).decode()


def interleaved_thinking() -> list[dict[str, Any]]:
    """An answer that thinks, calls a tool, and thinks again (interleaved thinking)."""
    call = {"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {}}}
    return [
        {"reasoningContent": {"reasoningText": {"text": "First thought.", "signature": "s"}}},
        call,
        {"reasoningContent": {"reasoningText": {"text": "Second thought.", "signature": "s"}}},
    ]


def test_two_thoughts_of_one_answer_are_set_apart_as_anthropics_are() -> None:
    document = {
        "output": {"message": {"role": "assistant", "content": interleaved_thinking()}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14},
    }

    message = completion(document)["choices"][0]["message"]

    assert message["reasoning_content"] == "First thought.\n\nSecond thought."


def test_two_streamed_thoughts_read_as_the_whole_answer_reads_them() -> None:
    def thought(index: int, text: str) -> tuple[str, dict[str, Any]]:
        delta = {"reasoningContent": {"text": text}}
        return ("contentBlockDelta", {"contentBlockIndex": index, "delta": delta})

    events = [
        thought(0, "First "),
        thought(0, "thought."),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        thought(1, "Second thought."),
        ("contentBlockStop", {"contentBlockIndex": 1}),
    ]

    deltas = [chunk["choices"][0]["delta"] for chunk in streamed(events)]

    joined = "".join(d.get("reasoning_content", "") for d in deltas)
    assert joined == "First thought.\n\nSecond thought."


REDACTED = {"redactedContent": "c2VjcmV0"}


def test_streamed_redacted_thinking_is_not_shown() -> None:
    events = [
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": REDACTED}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "42"}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
    ]  # fmt: skip

    chunks = streamed(events)

    assert "c2VjcmV0" not in orjson.dumps(chunks).decode()
    assert [c["choices"][0]["delta"] for c in chunks if c["choices"][0]["delta"].get("content")]


def test_a_bound_too_small_for_the_thought_ends_in_it() -> None:
    sent = translate(chat(reasoning_effort="high", max_completion_tokens=3), OPUS_47)

    reply = mock_answers(sent, OPUS_47)

    assert reply.stop_reason == "max_tokens"
    assert len(reply.thought) == 3 and reply.pieces == []


# --- the quota --------------------------------------------------------------------------

AUTH = {"authorization": "Bearer team1-key"}
# The default config's /bedrock route takes any Bedrock model id in its path.
PATH = f"/bedrock/{SONNET_45}/chat/completions"
THINKING_CHAT = {"model": SONNET_45, "messages": [ASK], "reasoning_effort": "high"}


async def capped_chat(
    quota_store: QuotaStore, budget: int, body: dict[str, Any]
) -> ext.ProcessingResponse:
    """The gateway's answer to a chat completion of key team1 for the mock's Bedrock
    Claude, whose hard-capped daily budget is ``budget`` (quotas.default_max_tokens: 1000)."""
    runtime, _ = capped_runtime(quota_store, budget)
    await runtime.start()
    try:
        answers = await run_stream(
            Processor(lambda: runtime, default_stages()),
            [
                request_headers(PATH, headers=AUTH),
                request_body(orjson.dumps(body)),
            ],
        )
    finally:
        await runtime.close()
    return answers[-1]


def sent_converse(answer: ext.ProcessingResponse) -> dict[str, Any]:
    mutation = answer.request_body.response.body_mutation
    assert mutation.WhichOneof("mutation") == "body", "the body went unchanged"
    sent: dict[str, Any] = orjson.loads(mutation.body)
    mock_answers(sent, SONNET_45)  # Bedrock takes it
    return sent


async def test_the_reservation_holds_the_budget_bedrock_gets(quota_store: QuotaStore) -> None:
    """Before: reserved 1,000 for a request whose thinking alone may take 4,096."""
    sent = sent_converse(await capped_chat(quota_store, 1_000_000, THINKING_CHAT))

    # What the translation sends uncapped (its 4,096 and high's budget), not
    # quotas.default_max_tokens (1000): reserved, capped at, and sent.
    assert sent["inferenceConfig"]["maxTokens"] == 4096 + 4096
    assert sent["additionalModelRequestFields"]["thinking"]["budget_tokens"] == 4096
    used = await used_tokens(quota_store, 1_000_000)
    assert used - sent["inferenceConfig"]["maxTokens"] < 20  # the rest is the prompt's


async def test_a_hard_cap_leaves_room_and_the_budget_fits_below_it(quota_store: QuotaStore) -> None:
    sent = sent_converse(await capped_chat(quota_store, 3_000, THINKING_CHAT))

    most = sent["inferenceConfig"]["maxTokens"]
    assert MIN_THINKING_BUDGET < most < 3_000
    budget = sent["additionalModelRequestFields"]["thinking"]["budget_tokens"]
    assert MIN_THINKING_BUDGET <= budget < most


async def test_a_hard_cap_too_small_to_think_is_a_429_not_a_400(quota_store: QuotaStore) -> None:
    answer = await capped_chat(quota_store, 600, THINKING_CHAT)

    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 429


async def test_a_tool_loop_under_a_small_cap_goes_without_thinking(quota_store: QuotaStore) -> None:
    body = {**THINKING_CHAT, "messages": [ASK, CALL, RESULT], "tools": TOOLS}

    sent = sent_converse(await capped_chat(quota_store, 600, body))

    assert "additionalModelRequestFields" not in sent
    assert sent["inferenceConfig"]["maxTokens"] < 600
