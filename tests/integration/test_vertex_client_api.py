"""Clients of Vertex AI behind the gateway: the official ``anthropic.AnthropicVertex``
client, its base URL the gateway's anthropic_vertex route and its access token the gateway
key, through real Envoy and the gateway to each provider type that serves Claude: the
mock's Anthropic (a Messages call), the mock's Vertex AI (rawPredict under the provider's
own project) and the mock's Bedrock (InvokeModel, SigV4 checked)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import anthropic
import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    metric,
    mock_requests,
    scrape,
)
from tests.integration.mock_vertex import CLAUDE_ON_VERTEX, LOCATION, stack_serving, vertex_config

CLIENT_KEY = "team1-key"
PREFIX = "/gcp"
# Where the client believes its Claude lives: the gateway serves it from the provider's.
CLIENT_PROJECT, CLIENT_REGION = "client-project", "europe-west1"
PROMPT = [{"role": "user", "content": "Say hello to the gateway, please."}]
ON_ANTHROPIC = "claude-3-5-haiku-latest"  # mock-anthropic's, in the default config
ON_VERTEX = CLAUDE_ON_VERTEX
ON_BEDROCK = "anthropic.claude-3-haiku-20240307-v1:0"
# Each model, the provider serving it, and where that provider got the call (the path
# without a query, decoded; the stream's path).
PROVIDERS = {
    ON_ANTHROPIC: ("mock-anthropic", "/v1/messages", "/v1/messages"),
    ON_VERTEX: (
        "vertex",
        f"{LOCATION}/publishers/anthropic/models/{ON_VERTEX}:rawPredict",
        f"{LOCATION}/publishers/anthropic/models/{ON_VERTEX}:streamRawPredict",
    ),
    ON_BEDROCK: (
        "mock-bedrock",
        f"/model/{ON_BEDROCK}/invoke",
        f"/model/{ON_BEDROCK}/invoke-with-response-stream",
    ),
}
VERTEX_COUNT = f"{LOCATION}/publishers/anthropic/models/count-tokens:rawPredict"
# The API version each provider takes in the body (Anthropic's is a header).
VERSIONS = {
    ON_ANTHROPIC: None,
    ON_VERTEX: "vertex-2023-10-16",
    ON_BEDROCK: "bedrock-2023-05-31",
}


def vertex_clients_config() -> dict[str, Any]:
    """The default config with the mock's Vertex AI, Claude on it, and an anthropic_vertex
    route under PREFIX."""
    raw = vertex_config({ON_VERTEX: ON_VERTEX})
    raw["routes"].insert(
        0, {"name": "vertex-clients", "path_prefix": PREFIX, "api": "anthropic_vertex"}
    )
    return raw


stack = stack_serving(vertex_clients_config, "vertex-clients")


def vertex_client(stack: LocalStack, key: str = CLIENT_KEY) -> anthropic.AnthropicVertex:
    # Google's own base URL ends in /v1; the gateway's may, or not.
    return anthropic.AnthropicVertex(
        project_id=CLIENT_PROJECT,
        region=CLIENT_REGION,
        base_url=f"{stack.base_url}{PREFIX}/v1",
        access_token=key,
        max_retries=0,
        timeout=30.0,
    )


def last_call(stack: LocalStack, model: str, stream: bool = False) -> dict[str, Any]:
    """What the model's provider received last, checked to be the call at its path."""
    _, json_path, stream_path = PROVIDERS[model]
    path = stream_path if stream else json_path
    [*_, sent] = [r for r in mock_requests(stack) if unquote(r["path"].partition("?")[0]) == path]
    return sent


def assert_sent_as_the_providers_messages_call(sent: dict[str, Any], model: str) -> None:
    body = orjson.loads(sent["body"])
    assert body.get("anthropic_version") == VERSIONS[model]
    assert body.get("model") == (model if model == ON_ANTHROPIC else None)
    assert CLIENT_KEY not in orjson.dumps(sent).decode(), "the client's key stays behind"
    assert CLIENT_PROJECT not in orjson.dumps(sent).decode()


@pytest.mark.parametrize("model", list(PROVIDERS))
def test_a_message_reaches_each_provider_and_is_billed(
    stack: LocalStack, gateway_log: GatewayLog, model: str
) -> None:
    before = scrape(stack.metrics_url)
    reply = vertex_client(stack).messages.with_raw_response.create(
        model=model, max_tokens=200, messages=PROMPT
    )
    message = reply.parse()

    assert message.content[0].type == "text" and message.content[0].text
    assert_sent_as_the_providers_messages_call(last_call(stack, model), model)
    [line] = gateway_log.for_request(reply.headers["x-request-id"])
    provider = PROVIDERS[model][0]
    assert (line["route"], line["provider"], line["model"], line["http_status_code"]) == (
        "vertex-clients",
        provider,
        model,
        200,
    )
    usage = message.usage
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.input_tokens,
        usage.output_tokens,
    )
    labels = {"model": model, "provider": provider, "token_type": "completion"}
    grown = metric(scrape(stack.metrics_url), "tokens_consumed_total", **labels)
    assert grown - metric(before, "tokens_consumed_total", **labels) == usage.output_tokens


@pytest.mark.parametrize("model", list(PROVIDERS))
def test_a_stream_comes_back_as_anthropics_events_with_its_usage(
    stack: LocalStack, gateway_log: GatewayLog, model: str
) -> None:
    with vertex_client(stack).messages.stream(
        model=model, max_tokens=200, messages=PROMPT
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
        content_type = stream.response.headers["content-type"]

    assert text and final.usage.output_tokens > 0
    assert content_type.startswith("text/event-stream")
    sent = last_call(stack, model, stream=True)
    assert_sent_as_the_providers_messages_call(sent, model)
    assert orjson.loads(sent["body"]).get("stream") is (None if model == ON_BEDROCK else True)
    [line] = gateway_log.for_request(request_id)
    assert (line["route"], line["stream"], line["usage_reported"]) == ("vertex-clients", True, True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


@pytest.mark.parametrize(
    ("model", "count_path", "counted_as"),
    [
        (ON_ANTHROPIC, "/v1/messages/count_tokens", ON_ANTHROPIC),
        # Vertex's count takes the model's name without its @version.
        (ON_VERTEX, VERTEX_COUNT, "claude-sonnet-4-5"),
        # Bedrock's CountTokens names the model in the path, the InvokeModel body within.
        (ON_BEDROCK, f"/model/{ON_BEDROCK}/count-tokens", None),
    ],
)
def test_a_token_count_is_answered_and_never_billed(
    stack: LocalStack, gateway_log: GatewayLog, model: str, count_path: str, counted_as: str | None
) -> None:
    reply = vertex_client(stack).messages.with_raw_response.count_tokens(
        model=model, messages=PROMPT
    )

    assert reply.parse().input_tokens > 0
    counts = [r for r in mock_requests(stack) if unquote(r["path"]) == count_path]
    assert orjson.loads(counts[-1]["body"]).get("model") == counted_as
    [line] = gateway_log.for_request(reply.headers["x-request-id"])
    assert (line["route"], line["model"], line["total_tokens"], line["cost_usd"]) == (
        "vertex-clients",
        model,
        0,
        0,
    )


def test_a_bad_key_is_a_401_in_anthropics_shape(stack: LocalStack) -> None:
    with pytest.raises(anthropic.AuthenticationError) as refused:
        vertex_client(stack, key="not-a-key").messages.create(
            model=ON_ANTHROPIC, max_tokens=20, messages=PROMPT
        )
    assert refused.value.status_code == 401
    error = refused.value.response.json()
    assert (error["type"], error["error"]["type"]) == ("error", "authentication_error")
    assert "not-a-key" not in refused.value.response.text


def test_an_unknown_model_is_a_404_in_anthropics_shape(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    with pytest.raises(anthropic.NotFoundError) as refused:
        vertex_client(stack).messages.create(model="gpt-nope", max_tokens=20, messages=PROMPT)
    error = refused.value.response.json()
    assert (error["type"], error["error"]["type"]) == ("error", "not_found_error")
    assert "gpt-nope" in error["error"]["message"]
    [line] = gateway_log.for_request(refused.value.response.headers["x-request-id"])
    assert (line["route"], line["http_status_code"]) == ("vertex-clients", 404)


@pytest.mark.parametrize(
    ("model_path", "said"),
    [
        ("publishers/google/models/gemini-2.5-flash:generateContent", "publishers/anthropic"),
        (f"publishers/anthropic/models/{ON_ANTHROPIC}:predict", ":rawPredict"),
    ],
)
def test_what_vertex_clients_may_not_call_here_is_a_404_in_anthropics_shape(
    stack: LocalStack, model_path: str, said: str
) -> None:
    path = f"{PREFIX}/v1/projects/{CLIENT_PROJECT}/locations/{CLIENT_REGION}/{model_path}"
    answer = httpx.post(
        f"{stack.base_url}{path}",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"anthropic_version": "vertex-2023-10-16", "max_tokens": 20, "messages": PROMPT},
        timeout=30.0,
    )
    assert answer.status_code == 404
    error = answer.json()
    assert (error["type"], error["error"]["type"]) == ("error", "not_found_error")
    assert said in error["error"]["message"]


def test_claude_codes_vertex_name_reaches_anthropic_as_anthropic_spells_it(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # Claude Code in its Vertex mode asks for Vertex's name of a model the config does not
    # list; the default config's `claude-` prefix sends it to mock-anthropic, which (as
    # Anthropic) knows it only as claude-haiku-4-5-20251001.
    vertex_name = "claude-haiku-4-5@20251001"
    with vertex_client(stack).messages.stream(
        model=vertex_name, max_tokens=200, messages=PROMPT
    ) as stream:
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]

    assert final.content[0].type == "text" and final.content[0].text
    [*_, sent] = [r for r in mock_requests(stack) if r["path"] == "/v1/messages"]
    assert orjson.loads(sent["body"])["model"] == "claude-haiku-4-5-20251001"
    [line] = gateway_log.for_request(request_id)
    assert (line["model"], line["provider"], line["http_status_code"]) == (
        vertex_name,
        "mock-anthropic",
        200,
    )
    assert line["completion_tokens"] == final.usage.output_tokens
