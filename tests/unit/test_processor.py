"""The processor's phases, fed real ext_proc protobuf messages as Envoy sends them."""

from __future__ import annotations

from typing import Any

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.config import load_config
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
CLIENT_HEADERS = {"authorization": "Bearer team1-key", "x-api-key": "sk-other"}


def chat(**fields: Any) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}
    return orjson.dumps(body)


def set_headers(response: ext.ProcessingResponse, phase: str) -> dict[str, str]:
    mutation = getattr(response, phase).response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def log_lines(services: Services) -> list[dict[str, Any]]:
    return services.access_log.lines()  # type: ignore[attr-defined,no-any-return]


async def test_client_credentials_are_removed_at_request_headers(processor: Processor) -> None:
    [answer] = await run_stream(processor, [request_headers(CHAT, headers=CLIENT_HEADERS)])
    removed = list(answer.request_headers.response.header_mutation.remove_headers)
    # ...and the client's accept-encoding: the gateway reads the answer uncompressed.
    assert sorted(removed) == ["accept-encoding", "authorization", "x-api-key"]


async def test_chat_body_routes_to_the_provider_with_its_key(processor: Processor) -> None:
    answers = await run_stream(
        processor, [request_headers(CHAT, headers=AUTH), request_body(chat())]
    )
    body_answer = answers[1]
    assert body_answer.request_body.response.clear_route_cache
    mutated = set_headers(body_answer, "request_body")
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    # The client's path is the provider's: no rewrite for Envoy to apply.
    assert ":path" not in mutated
    # A non-streaming body the provider can take as is is not re-serialised.
    assert not body_answer.request_body.response.HasField("body_mutation")


async def test_a_route_path_naming_the_model_is_rewritten_to_the_providers(
    processor: Processor,
) -> None:
    answers = await run_stream(
        processor,
        [request_headers("/openai/gpt-4o-mini", headers=AUTH), request_body(chat())],
    )
    mutated = set_headers(answers[1], "request_body")
    assert mutated[":path"] == "/v1/chat/completions"
    assert mutated[headers.CLUSTER] == "provider_mock"


async def test_streaming_request_gets_include_usage_injected(processor: Processor) -> None:
    answers = await run_stream(
        processor, [request_headers(CHAT, headers=AUTH), request_body(chat(stream=True))]
    )
    sent = orjson.loads(answers[1].request_body.response.body_mutation.body)
    assert sent["stream_options"] == {"include_usage": True}
    mutated = set_headers(answers[1], "request_body")
    assert mutated["content-length"] == str(
        len(answers[1].request_body.response.body_mutation.body)
    )


async def test_sse_response_switches_to_streamed_and_hides_the_usage_chunk(
    processor: Processor, services: Services
) -> None:
    events = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}'
        b"\n\ndata: [DONE]\n\n"
    )
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat(stream=True)),
            response_headers(200, {"content-type": "text/event-stream"}),
            # The usage event is split across two body chunks.
            response_body(events[:70], end_of_stream=False),
            response_body(events[70:150], end_of_stream=False),
            response_body(events[150:], end_of_stream=True),
        ],
    )
    assert answers[2].mode_override.response_body_mode == 1  # STREAMED
    delivered = b"".join(a.response_body.response.body_mutation.body for a in answers[3:])
    assert b"usage" not in delivered
    assert delivered.count(b"data: ") == 3
    assert delivered.endswith(b"data: [DONE]\n\n")
    metadata = answers[-1].dynamic_metadata.fields[headers.METADATA_NAMESPACE].struct_value
    assert metadata.fields["total_tokens"].number_value == 11
    [line] = log_lines(services)
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (9, 2, 11)


async def test_stream_with_client_usage_passes_unchanged(processor: Processor) -> None:
    events = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat(stream=True, stream_options={"include_usage": True})),
            response_headers(200, {"content-type": "text/event-stream"}),
            response_body(events),
        ],
    )
    assert not answers[1].request_body.response.HasField("body_mutation")
    assert not answers[3].response_body.response.HasField("body_mutation")


async def test_buffered_completion_usage_is_logged_once(
    processor: Processor, services: Services
) -> None:
    completion = orjson.dumps(
        {
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        }
    )
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat()),
            response_headers(),
            response_body(completion),
        ],
    )
    [line] = log_lines(services)
    assert line["total_tokens"] == 15
    assert line["response_model"] == "gpt-4o-mini-2024-07-18"
    assert line["outcome"] == "completed"


async def test_bad_body_is_an_immediate_openai_error(
    processor: Processor, services: Services
) -> None:
    answers = await run_stream(
        processor, [request_headers(CHAT, headers=AUTH), request_body(b"{nope")]
    )
    immediate = answers[1].immediate_response
    assert immediate.status.code == 400
    assert orjson.loads(immediate.body)["error"]["type"] == "invalid_request_error"
    [line] = log_lines(services)
    assert line["http_status_code"] == 400
    assert line["outcome"] == "rejected"


async def test_content_length_over_the_limit_is_refused_before_the_body(
    processor: Processor,
) -> None:
    [answer] = await run_stream(
        processor,
        [request_headers(CHAT, headers={**AUTH, "content-length": str(50 * 1024 * 1024)})],
    )
    assert answer.immediate_response.status.code == 413


async def test_non_ai_path_skips_every_later_phase(
    processor: Processor, services: Services
) -> None:
    [answer] = await run_stream(processor, [request_headers("/static/logo.png", method="GET")])
    override = answer.mode_override
    assert override.request_body_mode == 0  # NONE
    assert override.response_header_mode == 2  # SKIP
    assert override.response_body_mode == 0  # NONE
    assert log_lines(services) == []


async def test_models_route_is_answered_by_the_gateway(processor: Processor) -> None:
    [answer] = await run_stream(
        processor, [request_headers("/v1/models", method="GET", headers=AUTH)]
    )
    assert answer.immediate_response.status.code == 200
    listed = orjson.loads(answer.immediate_response.body)
    models = load_config("config/gateway.yaml", environ={}).models
    expected = [name for m in models for name in (m.name, *m.aliases)]  # aliases are names too
    assert [m["id"] for m in listed["data"]] == expected


async def test_stream_cut_before_the_response_ends_is_logged_as_aborted(
    processor: Processor, services: Services
) -> None:
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat(stream=True)),
            response_headers(200, {"content-type": "text/event-stream"}),
            response_body(b'data: {"choices":[]}\n\n', end_of_stream=False),
        ],
    )
    [line] = log_lines(services)
    assert line["outcome"] == "aborted"


async def test_non_json_upstream_error_is_replaced_by_an_openai_error(
    processor: Processor,
) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat()),
            # From the provider (Envoy marks upstream answers), not an Envoy local reply.
            response_headers(
                502, {"content-type": "text/html", "x-envoy-upstream-service-time": "3"}
            ),
            response_body(b"<html>bad gateway</html>"),
        ],
    )
    assert set_headers(answers[2], "response_headers")["content-type"] == "application/json"
    replaced = orjson.loads(answers[3].response_body.response.body_mutation.body)
    assert replaced["error"]["code"] == "upstream_error"
