"""FramedStreamGuard: Claude's InvokeModel stream guarded inside AWS's frames, which the
client's SDK reads (and CRC-checks) as it reads Bedrock's."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer

from extproc.aws_eventstream import encode_event, encode_exception
from extproc.config.guard_model import GuardConfig
from extproc.errors import anthropic_error_body
from extproc.guardrails.framed_stream import ConverseStreamGuard, FramedStreamGuard
from extproc.guardrails.matching import MatcherGuard, Matchers

PII = GuardConfig(name="pii", builtins=["EMAIL"], action="mask")
NO_SECRETS = GuardConfig(name="secrets", literals=["hunter2"], action="reject")


def guard_of(*configs: GuardConfig) -> FramedStreamGuard:
    return FramedStreamGuard(Matchers(tuple(MatcherGuard(c, 256) for c in configs)))


def frame(event: dict[str, Any]) -> bytes:
    encoded = base64.b64encode(orjson.dumps(event)).decode()
    return encode_event("chunk", orjson.dumps({"bytes": encoded}))


def claude_stream(*pieces: str) -> list[dict[str, Any]]:
    deltas = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in pieces
    ]
    return [
        {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 5}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *deltas,
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 3},
        },
        {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 5}},
    ]


def play(guard: FramedStreamGuard, stream: bytes, step: int) -> bytes:
    """What the client gets when the provider's bytes come ``step`` at a time."""
    out = []
    for start in range(0, len(stream), step):
        last = start + step >= len(stream)
        events = guard.split(stream[start : start + step], last)
        sse = guard.render(events, last, lambda _: anthropic_error_body("refused: secret", 403))
        out.append(guard.reframe(sse))
    return b"".join(out)


def read(frames: bytes) -> list[tuple[str, Any]]:
    """The messages as the client's SDK decodes them (botocore checks every CRC)."""
    buffer = EventStreamBuffer()
    buffer.add_data(frames)
    messages: list[tuple[str, Any]] = []
    for message in buffer:
        headers = message.headers
        if headers[":message-type"] == "exception":
            messages.append((headers[":exception-type"], orjson.loads(message.payload)))
        else:
            event = orjson.loads(base64.b64decode(orjson.loads(message.payload)["bytes"]))
            messages.append(("chunk", event))
    return messages


def text_of(messages: list[tuple[str, Any]]) -> str:
    return "".join(
        event["delta"].get("text", "")
        for kind, event in messages
        if kind == "chunk" and event["type"] == "content_block_delta"
    )


@pytest.mark.parametrize("step", [1, 7, 64, 100_000])
def test_an_address_cut_over_frames_is_masked_and_the_frames_stay_readable(step: int) -> None:
    stream = b"".join(frame(event) for event in claude_stream("Mail bob@exa", "mple.com today."))
    guard = guard_of(PII)
    messages = read(play(guard, stream, step))
    text = text_of(messages)
    assert "bob@example.com" not in text and text.startswith("Mail ") and text.endswith(" today.")
    # Every other event as it came, Bedrock's metrics included.
    assert messages[-1] == ("chunk", claude_stream()[-1])
    assert [event["type"] for _, event in messages][:2] == ["message_start", "content_block_start"]
    assert guard.masked == {0}


def test_a_reject_guard_ends_the_stream_with_an_exception_the_sdk_raises() -> None:
    stream = b"".join(frame(event) for event in claude_stream("the password is hunter2", "!"))
    messages = read(play(guard_of(NO_SECRETS), stream, 100_000))
    kind, payload = messages[-1]
    # Of the exceptions the stream declares (boto3 reads no other's name or message).
    assert kind == "validationException" and payload["message"] == "refused: secret"
    assert "hunter2" not in text_of(messages)


def test_exception_frames_follow_the_events_released_before_them() -> None:
    events = claude_stream("Hello")[:3]
    stream = b"".join(frame(event) for event in events) + encode_exception(
        "throttlingException", b'{"message": "slow down"}'
    )
    messages = read(play(guard_of(PII), stream, 100_000))
    assert messages[-1] == ("throttlingException", {"message": "slow down"})
    # The text held back (it could begin an address) goes out before the exception.
    assert {kind for kind, _ in messages[:-1]} == {"chunk"}
    assert text_of(messages) == "Hello"


def test_nothing_after_a_broken_frame_is_sent() -> None:
    good = frame(claude_stream("Hello")[0])
    broken = bytearray(frame(claude_stream("Hello")[2]))
    broken[-1] ^= 0xFF  # its CRC no longer holds
    guard = guard_of(PII)
    out = play(guard, good + bytes(broken) + frame(claude_stream("Hello")[-1]), 100_000)
    messages = read(out)
    assert [event["type"] for _, event in messages[:-1]] == ["message_start"]
    # The client's SDK raises, as it would at the broken frame itself.
    assert messages[-1][0] == "internalServerException"
    assert guard.ended


def test_the_events_released_are_kept_for_telemetry_as_anthropics_sse() -> None:
    guard = guard_of(PII)
    play(guard, frame(claude_stream("Hi")[-2]), 100_000)
    assert guard.unwrapped.startswith(b"event: message_delta\ndata: ")
    assert b'"stop_reason":"end_turn"' in guard.unwrapped


def converse_frames(*pieces: str, tool_input: list[str] | None = None) -> bytes:
    """A ConverseStream answer as Bedrock frames it: one event per frame, no base64."""
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant", "p": "ab"})]
    events += [("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}, "p": "x"})
               for p in pieces]  # fmt: skip
    events.append(("contentBlockStop", {"contentBlockIndex": 0}))
    if tool_input is not None:
        start = {"toolUse": {"toolUseId": "t1", "name": "send"}}
        events.append(("contentBlockStart", {"contentBlockIndex": 1, "start": start}))
        for piece in tool_input:
            delta = {"toolUse": {"input": piece}}
            events.append(("contentBlockDelta", {"contentBlockIndex": 1, "delta": delta}))
        events.append(("contentBlockStop", {"contentBlockIndex": 1}))
    events.append(("messageStop", {"stopReason": "end_turn"}))
    usage = {"inputTokens": 5, "outputTokens": 3, "totalTokens": 8}
    events.append(("metadata", {"usage": usage, "metrics": {"latencyMs": 9}}))
    return b"".join(encode_event(kind, orjson.dumps(payload)) for kind, payload in events)


def read_converse(frames: bytes) -> list[tuple[str, Any]]:
    buffer = EventStreamBuffer()
    buffer.add_data(frames)
    return [
        (message.headers.get(":event-type") or message.headers[":exception-type"],
         orjson.loads(message.payload))
        for message in buffer
    ]  # fmt: skip


def converse_guard(*configs: GuardConfig) -> ConverseStreamGuard:
    return ConverseStreamGuard(Matchers(tuple(MatcherGuard(c, 256) for c in configs)))


@pytest.mark.parametrize("step", [1, 13, 100_000])
def test_a_converse_stream_is_masked_in_its_frames_and_keeps_bedrocks_events(step: int) -> None:
    stream = converse_frames("Mail bob@exa", "mple.com", " today.")
    messages = read_converse(play(converse_guard(PII), stream, step))
    text = "".join(p["delta"].get("text", "") for k, p in messages if k == "contentBlockDelta")
    assert "bob@example.com" not in text and text.startswith("Mail ") and text.endswith(" today.")
    kinds = [kind for kind, _ in messages]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    # Bedrock's own fields ride along untouched.
    assert messages[0][1] == {"role": "assistant", "p": "ab"}
    assert messages[-1][1]["usage"]["totalTokens"] == 8
    # What a block held goes out before the block closes.
    assert kinds.index("contentBlockStop") > max(
        i for i, k in enumerate(kinds) if k == "contentBlockDelta"
    )


def test_a_converse_tool_calls_input_is_guarded_as_json() -> None:
    stream = converse_frames("ok", tool_input=['{"to": "bob@ex', 'ample.com"}'])
    messages = read_converse(play(converse_guard(PII), stream, 100_000))
    sent = "".join(
        p["delta"]["toolUse"]["input"]
        for k, p in messages
        if k == "contentBlockDelta" and "toolUse" in p["delta"]
    )
    assert "bob@example.com" not in sent
    assert orjson.loads(sent)["to"] != "bob@example.com"  # still JSON, the address masked


def test_a_converse_stream_a_guard_rejects_ends_with_an_exception() -> None:
    stream = converse_frames("the password is hunter2")
    messages = read_converse(play(converse_guard(NO_SECRETS), stream, 100_000))
    kind, payload = messages[-1]
    assert kind == "validationException" and payload["message"] == "refused: secret"
    assert all("hunter2" not in orjson.dumps(p).decode() for _, p in messages)
