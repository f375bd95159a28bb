"""Content capture of Bedrock's Converse API: the conversation a request holds, and the
text of its answer, whole or streamed in AWS's frames."""

from __future__ import annotations

from typing import Any

import orjson

from extproc.aws_eventstream import encode_event
from extproc.telemetry.content import ContentCapture

REQUEST: dict[str, Any] = {
    "system": [{"text": "Be brief."}],
    "messages": [
        {"role": "user", "content": [{"text": "What is the weather?"},
                                     {"image": {"format": "png", "source": {"bytes": "AA=="}}}]},
        {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Paris"}}}]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "t1", "content": [{"text": "Sunny"}]}}]},
    ],
}  # fmt: skip


def capture(limit: int = 10_000) -> ContentCapture:
    return ContentCapture(anthropic=False, max_chars=limit, converse=True)


def test_the_prompt_is_the_conversation_with_its_blocks_text() -> None:
    assert capture().prompt(REQUEST) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the weather?\n[image]"},
        {"role": "assistant", "content": '[tool_call weather] {"city":"Paris"}'},
        {"role": "user", "content": "Sunny"},
    ]


def test_a_whole_answer_is_its_messages_text() -> None:
    answer = {"output": {"message": {"role": "assistant", "content": [{"text": "It is sunny."}]}},
              "stopReason": "end_turn", "usage": {"inputTokens": 3, "outputTokens": 4}}  # fmt: skip
    content = capture()
    content.add_response_chunk(orjson.dumps(answer), streamed=False)
    assert content.completion() == "It is sunny."


def test_a_streamed_answer_is_read_from_its_frames_however_they_are_cut() -> None:
    events = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "It is "}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "sunny."}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "end_turn"}),
    ]
    stream = b"".join(encode_event(kind, orjson.dumps(payload)) for kind, payload in events)
    content = capture()
    for start in range(0, len(stream), 11):
        content.add_response_chunk(stream[start : start + 11], streamed=True)
    assert content.completion() == "It is sunny."


def test_an_answer_that_is_not_converse_leaves_the_field_out() -> None:
    content = capture()
    content.add_response_chunk(b"not json", streamed=False)
    assert content.completion() is None
