"""Routes named by a Gateway API controller: Envoy Gateway's route names and metadata.

The attributes are built the way Envoy sends them: a Struct under the filter's
name, the route name as a string, route metadata in protobuf text form.
"""

from __future__ import annotations

from typing import Any

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from google.protobuf import text_format

from extproc import headers
from extproc.controller_routes import route_names
from extproc.processor import Processor
from extproc.testing import request_body, request_headers, run_stream

AUTH = {"authorization": "Bearer team1-key"}


def with_attributes(
    request: ext.ProcessingRequest, route_name: str | None = None, annotations: Any = None
) -> ext.ProcessingRequest:
    fields: dict[str, Any] = {}
    if route_name is not None:
        fields["xds.route_name"] = route_name
    if annotations is not None:
        metadata = base_pb2.Metadata()
        metadata.filter_metadata["envoy-gateway"].update(
            {"resources": [{"kind": "HTTPRoute", "name": "r", "annotations": annotations}]}
        )
        fields["xds.route_metadata"] = text_format.MessageToString(metadata, as_one_line=True)
    request.attributes["envoy.filters.http.ext_proc"].update(fields)
    return request


def chat(model: str = "gpt-4o-mini") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


def routed(answer: ext.ProcessingResponse) -> dict[str, str]:
    mutation = answer.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


async def test_an_envoy_gateway_route_name_puts_any_path_on_the_named_route(
    processor: Processor,
) -> None:
    # HTTPRoute `aigw-openai-chat` sends /team-a/chat to the gateway's openai-chat route.
    first = with_attributes(
        request_headers("/team-a/chat", headers=AUTH),
        route_name="httproute/ai/aigw-openai-chat/rule/0/match/0/*",
    )
    answers = await run_stream(processor, [first, request_body(chat())])
    sent = routed(answers[1])
    assert sent[headers.CLUSTER] == "provider_mock"
    assert sent[":path"] == "/v1/chat/completions"


async def test_the_route_annotation_names_the_route_and_wins_over_the_name(
    processor: Processor,
) -> None:
    # gateway.envoyproxy.io/aigw-route: anthropic -> OpenAI in, Anthropic out.
    first = with_attributes(
        request_headers("/team-b/chat", headers=AUTH),
        route_name="httproute/ai/something-else/rule/0/match/0/*",
        annotations={"aigw-route": "anthropic"},
    )
    answers = await run_stream(processor, [first, request_body(chat("claude-3-5-haiku-latest"))])
    sent = routed(answers[1])
    assert sent[headers.CLUSTER] == "provider_mock_anthropic"
    assert sent[":path"] == "/v1/messages"


async def test_a_route_name_the_gateway_does_not_know_falls_back_to_the_path(
    processor: Processor,
) -> None:
    first = with_attributes(
        request_headers("/v1/chat/completions", headers=AUTH),
        route_name="httproute/ai/aigw-providers/rule/0/match/3/*",
    )
    answers = await run_stream(processor, [first, request_body(chat())])
    assert routed(answers[1])[headers.CLUSTER] == "provider_mock"


async def test_an_unknown_route_on_an_unknown_path_passes_through(processor: Processor) -> None:
    first = with_attributes(
        request_headers("/healthz", method="GET"), route_name="httproute/web/site/rule/0/match/0/*"
    )
    [answer] = await run_stream(processor, [first])
    override = answer.mode_override
    assert override.request_body_mode == override.NONE
    assert not answer.request_headers.response.header_mutation.set_headers


async def test_a_client_sent_routing_header_is_refused(processor: Processor) -> None:
    # Under a controller nothing strips it before the routes: it would pick a provider.
    forged = request_headers("/anything", headers={headers.CLUSTER: "provider_openai"})
    [answer] = await run_stream(processor, [forged])
    assert answer.immediate_response.status.code == 400
    error = orjson.loads(answer.immediate_response.body)["error"]
    assert headers.CLUSTER in error["message"]


def test_route_names_reads_annotation_then_http_route_then_raw_name() -> None:
    request = with_attributes(
        ext.ProcessingRequest(),
        route_name="httproute/ai/aigw-bedrock/rule/1/match/0/llm.example.com",
        annotations={"aigw-route": "openai", "other": "x"},
    )
    assert list(route_names(request.attributes)) == ["openai", "bedrock", "aigw-bedrock"]
    plain = with_attributes(ext.ProcessingRequest(), route_name="openai-chat")
    assert list(route_names(plain.attributes)) == ["openai-chat"]


def test_unparsable_metadata_is_ignored() -> None:
    request = ext.ProcessingRequest()
    request.attributes["envoy.filters.http.ext_proc"].update(
        {"xds.route_metadata": "filter_metadata { not text format", "xds.route_name": "openai"}
    )
    assert list(route_names(request.attributes)) == ["openai"]
