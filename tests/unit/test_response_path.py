"""Which requests take the lean response path, and how the processor serves them."""

from __future__ import annotations

from typing import Any

import orjson
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from google.protobuf import struct_pb2

from extproc.config import GatewayConfig, load_config
from extproc.headers import BODY_HINTS_NAMESPACE, METADATA_NAMESPACE
from extproc.processor import ATTRIBUTES_KEY, Processor, lean_response_headers
from extproc.response_path import lean_routes
from extproc.runtime import Runtime, Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, response_body, run_stream

AUTH = {"authorization": "Bearer team1-key"}
OPENAI_ONLY = """
version: 1
providers:
  - {name: openai, base_url: "https://api.openai.com", api_key: sk-test}
  - {name: openai-b, base_url: "https://b.example.com", api_key: sk-b}
  - {name: claude, type: anthropic, base_url: "https://api.anthropic.com", api_key: sk-ant}
models:
  - {name: gpt-4o-mini, provider: openai}
  - {name: gpt-4o-b, provider: openai-b}
  - {name: gpt-4o, provider: openai, fallbacks: [gpt-4o-b]}
  - {name: claude-3-5-haiku-latest, provider: claude}
routes:
  - {name: everything, path: /v1/chat/completions}
  - {name: openai-only, path: /openai/chat, provider: openai}
  - {name: messages, path: /v1/messages, api: anthropic_messages}
  - {name: by-path, path_prefix: /m, model_from_path: true}
"""


def test_routes_reaching_only_pass_through_providers_without_failover_are_lean(
    tmp_path: Any,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(OPENAI_ONLY)
    config = load_config(path)

    # `everything` may translate to Anthropic; `openai-only` reaches gpt-4o's failover
    # chain; Messages routes only ever pass through to Anthropic.
    assert lean_routes(config) == frozenset({"messages"})

    path.write_text(OPENAI_ONLY.replace(", fallbacks: [gpt-4o-b]", ""))
    assert lean_routes(load_config(path)) == frozenset({"openai-only", "messages"})

    path.write_text(OPENAI_ONLY + "envoy: {lean_responses: false}\n")
    assert lean_routes(load_config(path)) == frozenset()


def test_a_model_named_outside_the_body_decides_alone(tmp_path: Any) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(OPENAI_ONLY)
    runtime = Runtime(load_config(path), Services(GatewayMetrics(), AccessLog(stdout=False)))
    by_path = runtime.routes.resolve("/m/x")
    assert by_path is not None
    assert runtime.lean_response(by_path, "gpt-4o-mini") is True
    assert runtime.lean_response(by_path, "gpt-4o") is False  # failover chain
    assert runtime.lean_response(by_path, "claude-3-5-haiku-latest") is False  # translated
    assert runtime.lean_response(by_path, "no-such-model") is False
    assert runtime.lean_response(by_path, None) is False  # the body may name anything


def first_chunk(chunk: bytes, code: int, details: str = "via_upstream") -> Any:
    message = response_body(chunk, end_of_stream=False)
    attributes = struct_pb2.Struct()
    attributes.update({"response.code": code, "response.code_details": details})
    message.attributes[ATTRIBUTES_KEY].CopyFrom(attributes)
    return message


def test_the_first_body_message_tells_the_status_and_the_kind_of_answer() -> None:
    assert lean_response_headers(first_chunk(b'{"id":1}', 200), stream=False) == {
        ":status": "200",
        "x-envoy-upstream-service-time": "0",
        "content-type": "application/json",
    }
    streamed = lean_response_headers(first_chunk(b"data: {}", 200), stream=True)
    assert streamed["content-type"] == "text/event-stream"
    local_reply = lean_response_headers(first_chunk(b"upstream timeout", 504, "timeout"), False)
    assert local_reply == {":status": "504"}
    # A provider that ignored "stream": true answers JSON, and is read as JSON.
    ignored = lean_response_headers(first_chunk(b' {"id":1}', 200), stream=True)
    assert ignored["content-type"] == "application/json"


async def test_a_stream_answered_with_json_on_the_lean_path_is_counted(
    services: Services, processor: Processor
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    answer = orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }
    )
    await run_stream(
        processor,
        [
            request_headers("/openai/gpt-4o-mini", headers=AUTH),
            request_body(orjson.dumps(body)),
            first_chunk(answer, 200),
            response_body(b"", end_of_stream=True),
        ],
    )
    line = services.access_log.lines()[-1]  # type: ignore[attr-defined]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 3)


async def test_a_lean_answer_in_two_chunks_is_counted_from_the_whole_body(
    config: GatewayConfig, services: Services, processor: Processor
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    answer = orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }
    )
    responses = await run_stream(
        processor,
        [
            request_headers("/openai/gpt-4o-mini", headers=AUTH),
            request_body(orjson.dumps(body)),
            first_chunk(answer[:20], 200),
            response_body(answer[20:], end_of_stream=True),
        ],
    )

    assert responses[0].mode_override.response_header_mode == 2  # SKIP
    assert responses[0].mode_override.request_body_mode == 2  # still BUFFERED
    line = services.access_log.lines()[-1]  # type: ignore[attr-defined]
    assert line["http_status_code"] == 200
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 3)


async def test_a_stream_read_to_its_end_is_complete_even_if_envoy_never_sends_the_end(
    services: Services, processor: Processor
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    events = (
        b'data: {"choices":[{"index":0,"delta":{"content":"data: [DONE]"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,'
        b'"total_tokens":7}}\n\n'
        b"data: [DONE]\n\n"
    )
    # The client hung up after [DONE]: Envoy ends the stream before its empty end.
    await run_stream(
        processor,
        [
            request_headers("/openai/gpt-4o-mini", headers=AUTH),
            request_body(orjson.dumps(body)),
            first_chunk(events, 200),
        ],
    )

    line = services.access_log.lines()[-1]  # type: ignore[attr-defined]
    assert line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (5, 2)
    assert not line.get("usage_estimated")


def hinted_headers(path: str, hints: dict[str, Any]) -> Any:
    """Request headers with the body hints Envoy's json_to_metadata filter forwards."""
    message = request_headers(path, headers=AUTH)
    message.metadata_context.filter_metadata[BODY_HINTS_NAMESPACE].update(hints)
    return message


def whole_answer(chunk: bytes, code: int) -> Any:
    message = first_chunk(chunk, code)
    message.response_body.end_of_stream = True
    return message


ANSWER = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
)


async def test_a_non_streamed_pass_through_comes_whole_in_one_buffered_message(
    services: Services, processor: Processor
) -> None:
    # /v1/chat/completions may reach Anthropic: without hints it keeps every message.
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    responses = await run_stream(
        processor,
        [
            hinted_headers("/v1/chat/completions", {"model": "gpt-4o-mini"}),
            request_body(orjson.dumps(body)),
            whole_answer(ANSWER, 200),
        ],
    )

    mode = responses[0].mode_override
    assert mode.response_header_mode == ProcessingMode.SKIP
    assert mode.response_body_mode == ProcessingMode.BUFFERED
    assert mode.request_body_mode == ProcessingMode.BUFFERED
    # The usage rides with the one answer Envoy gets for the response.
    assert (
        responses[-1]
        .dynamic_metadata.fields[METADATA_NAMESPACE]
        .struct_value.fields["total_tokens"]
        .number_value
        == 10
    )
    line = services.access_log.lines()[-1]  # type: ignore[attr-defined]
    assert (line["http_status_code"], line["outcome"]) == (200, "completed")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 3)


async def test_streams_and_translated_models_keep_their_paths(processor: Processor) -> None:
    streamed = await run_stream(
        processor,
        [hinted_headers("/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True})],
    )
    assert streamed[0].mode_override.response_body_mode == ProcessingMode.STREAMED
    translated = await run_stream(
        processor, [hinted_headers("/v1/chat/completions", {"model": "claude-sonnet-4-0"})]
    )
    unhinted = await run_stream(processor, [request_headers("/v1/chat/completions", headers=AUTH)])
    # The full path: the response headers are read, then the body.
    for full in (translated[0], unhinted[0]):
        assert full.mode_override.response_header_mode == ProcessingMode.SEND
        assert full.mode_override.response_body_mode == ProcessingMode.BUFFERED


async def test_a_body_that_envoy_and_the_gateway_read_differently_is_refused(
    processor: Processor,
) -> None:
    # Envoy kept one of two "stream" keys, the gateway the other: which one would
    # the provider honour? The answer was set up for the wrong one; refuse.
    raw = b'{"model":"gpt-4o-mini","stream":false,"messages":[{"role":"user","content":"hi"}],'
    raw += b'"stream":true}'
    answers = await run_stream(
        processor,
        [hinted_headers("/v1/chat/completions", {"model": "gpt-4o-mini", "stream": False}),
         request_body(raw)],
    )  # fmt: skip
    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    assert orjson.loads(refusal.body)["error"]["code"] == "ambiguous_body"

    # Likewise a model the gateway reads as a translated one.
    raw = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
    raw += b'"model":"claude-sonnet-4-0"}'
    answers = await run_stream(
        processor,
        [hinted_headers("/v1/chat/completions", {"model": "gpt-4o-mini"}), request_body(raw)],
    )
    assert answers[-1].immediate_response.status.code == 400
