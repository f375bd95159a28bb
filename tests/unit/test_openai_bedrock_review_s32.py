"""Review of the OpenAI chat -> Bedrock Converse translation, as an OpenAI SDK user sees it.

Streams are built as Bedrock frames them (``aws_eventstream``) and read back as the SSE
the client gets.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.aws_eventstream import encode_event
from extproc.translators.openai_bedrock import CompletionTranslator, StreamTranslator

USAGE = {"inputTokens": 20, "outputTokens": 7, "totalTokens": 27}


def converse_answer(content: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    """The finish reason and tool calls of a buffered Converse answer, as the client reads it."""
    translator = CompletionTranslator(model="claude", request_id="r1", created=1)
    body = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": USAGE,
    }
    out = translator.feed(orjson.dumps(body), True)
    choice: dict[str, Any] = orjson.loads(out or b"{}")["choices"][0]
    return choice


def streamed(events: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """The data of each SSE event the client gets for these ConverseStream events."""
    translator = StreamTranslator(model="claude", include_usage=True, request_id="r1", created=1)
    frames = b"".join(encode_event(name, orjson.dumps(payload)) for name, payload in events)
    sse = translator.feed(frames, True)
    lines: list[Any] = []
    for event in sse.split(b"\n\n"):
        if event:
            data = event.removeprefix(b"data: ")
            lines.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return lines


def finish_reasons(lines: list[Any]) -> list[str]:
    return [
        choice["finish_reason"]
        for line in lines
        if isinstance(line, dict)
        for choice in line.get("choices", [])
        if choice["finish_reason"] is not None
    ]


CALL = {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}


def tool_stream(stop_reason: str, *, with_call: bool) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    if with_call:
        start = {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}
        events += [
            ("contentBlockStart", {"contentBlockIndex": 0, "start": start}),
            (
                "contentBlockDelta",
                {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '{"city":"Paris"}'}}},
            ),
            ("contentBlockStop", {"contentBlockIndex": 0}),
        ]
    else:
        events += [
            ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "It is sunny."}}),
            ("contentBlockStop", {"contentBlockIndex": 0}),
        ]
    events += [("messageStop", {"stopReason": stop_reason}), ("metadata", {"usage": USAGE})]
    return events


# --- finish_reason agrees with the tool calls the client gets ------------------------------


def test_tool_calls_ended_with_end_turn_finish_as_tool_calls() -> None:
    # Some Bedrock models end a turn that calls tools with end_turn (AWS's Strands SDK
    # corrects it); an OpenAI agent loop that runs tools on finish_reason "tool_calls"
    # would otherwise take the calls for a final answer.
    choice = converse_answer([{"text": "Let me check."}, CALL], "end_turn")
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert choice["finish_reason"] == "tool_calls"


def test_streamed_tool_calls_ended_with_end_turn_finish_as_tool_calls() -> None:
    lines = streamed(tool_stream("end_turn", with_call=True))
    assert finish_reasons(lines) == ["tool_calls"]
    assert lines[-1] == "[DONE]"


def test_a_text_answer_ended_with_tool_use_finishes_as_stop() -> None:
    # finish_reason "tool_calls" with no tool_calls makes clients that read
    # message.tool_calls on that reason iterate over null.
    choice = converse_answer([{"text": "It is sunny."}], "tool_use")
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    assert finish_reasons(streamed(tool_stream("tool_use", with_call=False))) == ["stop"]


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ],
)
def test_a_cut_or_filtered_tool_call_keeps_its_reason(stop_reason: str, expected: str) -> None:
    # A call cut by the token limit is incomplete: the client must see "length", not be
    # told to run it.
    assert converse_answer([CALL], stop_reason)["finish_reason"] == expected
    assert finish_reasons(streamed(tool_stream(stop_reason, with_call=True))) == [expected]


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        # malformed_model_output and malformed_tool_use are errors, not finish reasons
        # (test_bedrock_malformed_stops).
    ],
)
def test_every_stop_reason_of_a_text_answer(stop_reason: str, expected: str) -> None:
    assert converse_answer([{"text": "Hi."}], stop_reason)["finish_reason"] == expected
    assert finish_reasons(streamed(tool_stream(stop_reason, with_call=False))) == [expected]


# --- usage an OpenAI SDK user can read ---------------------------------------------------


def test_usage_without_cache_hits_still_shows_cached_tokens() -> None:
    # OpenAI always sends prompt_tokens_details; SDK users read
    # usage.prompt_tokens_details.cached_tokens, which fails when the object is missing.
    translator = CompletionTranslator(model="claude", request_id="r1", created=1)
    body = {"output": {"message": {"role": "assistant", "content": [{"text": "Hi."}]}}}
    body |= {"stopReason": "end_turn", "usage": USAGE}
    answer = orjson.loads(translator.feed(orjson.dumps(body), True) or b"{}")
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    usage_chunk = streamed(tool_stream("end_turn", with_call=False))[-2]
    assert usage_chunk["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


# --- a prompt over the context window ------------------------------------------------------


@pytest.mark.parametrize(
    "said",
    [
        "Input is too long for requested model.",
        # Claude on Bedrock passes Anthropic's own words on.
        "The model returned the following errors: prompt is too long: 208310 tokens > 200000"
        " maximum",
    ],
)
def test_a_prompt_over_the_context_window_has_openais_code_for_it(said: str) -> None:
    from extproc.translators.openai_bedrock import translate_error

    status, body = translate_error(400, orjson.dumps({"message": said}), "ValidationException")
    error = orjson.loads(body)["error"]
    # Agents read this code (not the words) to shorten the conversation and retry.
    assert (status, error["code"], error["param"]) == (400, "context_length_exceeded", "messages")
    assert error["message"] == said


def test_other_validation_errors_keep_awss_name() -> None:
    from extproc.translators.openai_bedrock import translate_error

    said = b'{"message": "temperature: must be between 0 and 1"}'
    _, body = translate_error(400, said, "ValidationException")
    assert orjson.loads(body)["error"]["code"] == "ValidationException"
