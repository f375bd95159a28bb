"""The gateway's first answer names the API its client speaks, for Envoy's own replies.

Envoy answers some requests itself (a body over its buffer, a provider unreachable or
slow, an answer over its buffer) and shapes the reply by the client's API
(envoy_bootstrap: local replies). By then the request may be the provider's: the
gateway adds ``anthropic-version`` to an OpenAI client's request for Claude and gives a
model on Bedrock Bedrock's path. So the gateway names the client's API in dynamic
metadata in its answer to the request headers, before it changes anything.
"""

from __future__ import annotations

from unittest.mock import ANY

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.headers import CLIENT_API_KEY, METADATA_NAMESPACE
from extproc.processor import Processor
from extproc.testing import request_body, request_headers, run_stream

OPENAI_KEY = {"authorization": "Bearer team1-key"}
ANTHROPIC_KEY = {"x-api-key": "team1-key", "anthropic-version": "2023-06-01"}
VERTEX = (
    "/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models/"
    "claude-3-5-haiku-latest:rawPredict"
)
CHAT = {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hi"}]}


def client_api(answer: ext.ProcessingResponse) -> str | None:
    fields = answer.dynamic_metadata.fields
    if METADATA_NAMESPACE not in fields:
        return None
    said = fields[METADATA_NAMESPACE].struct_value.fields
    return said[CLIENT_API_KEY].string_value if CLIENT_API_KEY in said else None


@pytest.mark.parametrize(
    ("path", "sent", "api"),
    [
        pytest.param("/v1/chat/completions", OPENAI_KEY, "openai", id="openai"),
        # OpenAI's API in, Anthropic's out: the client reads OpenAI's errors.
        pytest.param("/anthropic", OPENAI_KEY, "openai", id="openai-for-claude"),
        pytest.param("/bedrock/haiku", OPENAI_KEY, "openai", id="openai-for-bedrock"),
        pytest.param("/v1/messages", ANTHROPIC_KEY, "anthropic", id="anthropic"),
        pytest.param(VERTEX, {"authorization": "Bearer team1-key"}, "anthropic", id="vertex"),
        pytest.param(
            "/model/amazon.titan-text-express-v1/converse", OPENAI_KEY, "bedrock", id="converse"
        ),
    ],
)
async def test_the_first_answer_names_the_clients_api(
    processor: Processor, path: str, sent: dict[str, str], api: str
) -> None:
    [answer] = await run_stream(processor, [request_headers(path, headers=sent)])
    assert answer.WhichOneof("response") == "request_headers"
    assert client_api(answer) == api


async def test_an_openai_clients_request_for_claude_is_named_openai_before_it_turns_anthropic(
    processor: Processor,
) -> None:
    """What broke Envoy's replies keyed on anthropic-version: the gateway sets that header
    on the request it sends Claude, after it named the client's API."""
    sent = [
        request_headers("/v1/chat/completions", headers=OPENAI_KEY),
        request_body(orjson.dumps(CHAT)),
    ]
    first, body = await run_stream(processor, sent)
    assert client_api(first) == "openai"
    mutation = body.request_body.response.header_mutation
    added = {option.header.key for option in mutation.set_headers}
    assert "anthropic-version" in added
    assert client_api(body) in (None, "openai")


async def test_a_path_no_route_serves_names_no_api(processor: Processor) -> None:
    """Envoy's catch-all 404 then goes by the SDK's own header (route misses)."""
    [answer] = await run_stream(processor, [request_headers("/healthz", method="GET")])
    assert client_api(answer) is None


@pytest.mark.parametrize(
    ("sent", "error_shape"),
    [
        pytest.param(ANTHROPIC_KEY, {"type": "error", "error": ANY}, id="anthropic-sdk"),
        pytest.param(OPENAI_KEY, {"error": ANY}, id="openai-sdk"),
    ],
)
async def test_the_model_list_answers_in_the_shape_of_the_sdk_that_asks(
    processor: Processor, sent: dict[str, str], error_shape: dict[str, object]
) -> None:
    """Anthropic's SDKs list models at OpenAI's path, and read Anthropic's errors there."""
    [answer] = await run_stream(processor, [request_headers("/v1/models", "DELETE", sent)])
    assert answer.immediate_response.status.code == 405
    assert orjson.loads(answer.immediate_response.body) == error_shape


async def test_each_request_names_its_own_api(processor: Processor) -> None:
    """The metadata is built once per API: one request's answer never shows another's."""
    for path, sent, api in [
        ("/v1/messages", ANTHROPIC_KEY, "anthropic"),
        ("/v1/chat/completions", OPENAI_KEY, "openai"),
        ("/v1/messages", ANTHROPIC_KEY, "anthropic"),
    ]:
        [answer] = await run_stream(processor, [request_headers(path, headers=sent)])
        assert client_api(answer) == api
        said = answer.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields
        # Beside it, the method and path Envoy's access log prints (envoy_request_record).
        assert {key: value.string_value for key, value in said.items()} == {
            CLIENT_API_KEY: api,
            "method": "POST",
            "path": path,
        }
