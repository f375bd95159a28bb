"""Anthropic Messages clients to Claude on Bedrock: the InvokeModel body, and the event
stream turned back into the SSE stream Anthropic's own API sends, read for usage."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.aws_eventstream import encode_event, encode_exception
from extproc.config.loader import ConfigError, load_config
from extproc.translators.anthropic_bedrock import (
    BEDROCK_ANTHROPIC_VERSION,
    StreamTranslator,
    request_path,
    translate_error,
    translate_request,
)
from extproc.translators.base import counts_so_far, stream_failure

EVENTS: list[dict[str, Any]] = [
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
     "model": "claude-3-haiku-20240307", "content": [], "stop_reason": None,
     "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 3}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
    {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": 12, "outputTokenCount": 2, "invocationLatency": 40,
        "firstByteLatency": 20}},
]  # fmt: skip


def chunk(event: dict[str, Any]) -> bytes:
    """One InvokeModelWithResponseStream frame carrying ``event`` as Bedrock does."""
    encoded = base64.b64encode(orjson.dumps(event)).decode()
    return encode_event("chunk", orjson.dumps({"bytes": encoded}))


def sse_events(stream: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in stream.split(b"\n\n"):
        if not block:
            continue
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        events.append((name[7:].decode(), orjson.loads(data[6:])))
    return events


def test_the_body_loses_model_and_stream_and_gains_bedrocks_version_and_the_betas() -> None:
    body = {"model": "haiku", "stream": True, "max_tokens": 50, "messages": [],
            "anthropic_beta": ["a-1"]}  # fmt: skip
    sent = translate_request(body, "a-1, b-2")
    assert sent == {
        "max_tokens": 50,
        "messages": [],
        "anthropic_version": BEDROCK_ANTHROPIC_VERSION,
        "anthropic_beta": ["a-1", "b-2"],
    }
    assert body["model"] == "haiku"  # the client's body is left as it came
    assert "anthropic_beta" not in translate_request({"messages": []}, None)


def test_the_path_encodes_the_model_id_as_aws_sdks_do() -> None:
    model = "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-x-v1:0"
    path = request_path(model, stream=True)
    # The ARN is one segment: its slash is encoded, as its colons are.
    assert path.count("/") == 3 and "%2F" in path and "%3A" in path
    assert unquote(path) == f"/model/{model}/invoke-with-response-stream"
    assert request_path("anthropic.claude-3-haiku-20240307-v1:0", stream=False) == (
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"
    )


def test_a_stream_becomes_anthropics_sse_and_its_usage_is_read() -> None:
    translator = StreamTranslator()
    out = b"".join(translator.feed(chunk(event), False) for event in EVENTS)
    out += translator.feed(b"", True)

    assert sse_events(out) == [(event["type"], event) for event in EVENTS]
    usage = translator.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (15, 2, 3)
    assert translator.response_model == "claude-3-haiku-20240307"
    assert translator.generated_chars == len("Hello there")


@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30))
def test_frames_cut_anywhere_give_the_same_stream(cuts: list[int]) -> None:
    whole = b"".join(chunk(event) for event in EVENTS)
    translator = StreamTranslator()
    out, start = [], 0
    for size in cuts:
        out.append(translator.feed(whole[start : start + size], False))
        start += size
    out.append(translator.feed(whole[start:], True))
    assert sse_events(b"".join(out)) == [(event["type"], event) for event in EVENTS]
    assert translator.usage is not None and translator.usage.completion_tokens == 2


def test_an_exception_frame_ends_the_stream_with_anthropics_error_and_is_charged() -> None:
    translator = StreamTranslator()
    out = b"".join(translator.feed(chunk(event), False) for event in EVENTS[:3])
    exception = orjson.dumps({"message": "Model is overloaded"})
    out += translator.feed(encode_exception("throttlingException", exception), False)
    # Nothing after the error reaches the client.
    assert translator.feed(chunk(EVENTS[3]), True) == b""

    name, error = sse_events(out)[-1]
    assert name == "error" and error["error"]["type"] == "rate_limit_error"
    assert error["error"]["message"] == "Model is overloaded"
    failure = stream_failure(translator)
    assert failure is not None and failure.prompt_tokens == 15
    assert translator.usage is None


def test_a_corrupt_frame_ends_the_stream_with_an_api_error() -> None:
    translator = StreamTranslator()
    good = translator.feed(chunk(EVENTS[0]), False)
    broken = bytearray(chunk(EVENTS[2]))
    broken[-1] ^= 0xFF  # the message CRC no longer matches
    out = translator.feed(bytes(broken), False)
    assert sse_events(good)[0][0] == "message_start"
    name, error = sse_events(out)[-1]
    assert name == "error" and error["error"]["type"] == "api_error"
    assert stream_failure(translator) is not None


def test_a_stream_cut_after_its_start_reports_the_prompt_it_had() -> None:
    translator = StreamTranslator()
    for event in EVENTS[:4]:
        translator.feed(chunk(event), False)
    reported = counts_so_far(translator)
    assert reported is not None and reported.prompt_tokens == 15
    assert translator.usage is None and translator.generated_chars == len("Hello there")


def test_bedrocks_errors_come_in_anthropics_shape() -> None:
    status, body = translate_error(
        400, orjson.dumps({"message": "messages: field required"}), "ValidationException:http"
    )
    assert status == 400
    assert orjson.loads(body) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "messages: field required"},
    }
    status, body = translate_error(429, b"{}", "ThrottlingException")
    assert status == 429 and orjson.loads(body)["error"]["type"] == "rate_limit_error"
    # A refusal of the gateway's AWS identity is the operator's problem: a 502.
    status, body = translate_error(403, b'{"message": "denied for AKIAEXAMPLE"}', None)
    assert status == 502 and b"AKIA" not in body


def test_a_provider_that_lists_its_betas_gets_only_those() -> None:
    """Claude Code sends Anthropic's own flags, which Bedrock refuses ("invalid beta
    flag"): a provider's anthropic_betas keeps only the flags it lists."""
    allowed = {"interleaved-thinking-2025-05-14", "context-1m-2025-08-07"}
    body = {"messages": [], "anthropic_beta": ["context-1m-2025-08-07", "files-api-2025-04-14"]}
    header = "claude-code-20250219, interleaved-thinking-2025-05-14"
    sent = translate_request(body, header, allowed)
    assert sent["anthropic_beta"] == ["context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]
    # None left: no empty list (Bedrock would read it as asking for nothing anyway).
    assert "anthropic_beta" not in translate_request(
        {"messages": []}, "claude-code-20250219", allowed
    )
    # No list: every flag goes on.
    assert translate_request({"messages": []}, "claude-code-20250219")["anthropic_beta"] == [
        "claude-code-20250219"
    ]


def test_only_bedrock_providers_list_anthropic_betas(tmp_path: Path) -> None:
    config = """
version: 1
providers:
  - {name: claude, type: anthropic, base_url: "https://api.anthropic.com", api_key: k,
     anthropic_betas: [context-1m-2025-08-07]}
models:
  - {name: claude-sonnet-4-0, provider: claude}
"""
    path = tmp_path / "gateway.yaml"
    path.write_text(config)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "providers[0].anthropic_betas" in str(refused.value)
