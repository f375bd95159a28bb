"""Failover for Anthropic's clients: the official ``anthropic`` client (and once
``AnthropicVertex``) through real Envoy, a primary that misbehaves on every request (a
mock of its own: Anthropic's 529 ``overloaded_error``, Bedrock's 503) and the stack's mock
as Claude on Anthropic, Bedrock and Vertex. What the client got, what each provider got,
and what the log line, the metrics and the quota count."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import anthropic
import orjson
import pytest
from anthropic.types import Message, MessageParam

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    REFUSED_PORT,
    default_config,
    metric,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.failover_support import (
    FaultyMock,
    failover_budget,
    log_line,
    mocks_with_faults,
    quota_used,
)
from tests.integration.mock_vertex import LOCATION, vertex_provider
from tests.integration.test_failover import BlackHole

MESSAGES: list[MessageParam] = [{"role": "user", "content": "fail over please"}]
REPLY = "Mock reply to: fail over please"
BEDROCK_CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"  # on mock-bedrock
VERTEX_CLAUDE = "claude-sonnet-4-5@20250929"
# Client keys: one per scenario, so metrics and quotas are the scenario's alone.
KEYS = {
    name: f"{name}-client-secret"
    for name in (
        "tobedrock",
        "elsewhere",
        "stream",
        "reverse",
        "vertex",
        "vclient",
        "doomed",
        "narrow",
        "mixed",
    )
}
# The API version the client asks for: not the providers' default (2023-06-01).
CLIENT_API_VERSION = "2026-10-21"
FLAKY_ANTHROPIC_KEY = "flaky-anthropic-provider-key"
# USD per million input and output tokens: the primary is priced dear, so a request billed
# at its price rather than the answering fallback's shows.
PRIMARY_PRICE = {"input_per_million": 50, "output_per_million": 100}
BEDROCK_CLAUDE_PRICE = (Decimal("0.25"), Decimal("1.25"))  # the default config's
ANTHROPIC_HAIKU_PRICE = (Decimal("0.80"), Decimal("4.00"))  # claude-3-5-haiku-latest


@dataclass
class Stack:
    gateway: LocalStack
    overloaded: FaultyMock  # Anthropic answering 529
    unavailable: FaultyMock  # Bedrock answering 503


def failover_config(overloaded: str, unavailable: str, silent: str) -> dict[str, Any]:
    """``silent``: a base URL that accepts connections and never answers."""
    raw = default_config()
    raw["providers"] += [
        # Nothing listens there: the connection is refused.
        {
            "name": "gone-anthropic",
            "type": "anthropic",
            "base_url": f"http://127.0.0.1:{REFUSED_PORT}/v1",
            "api_key": "gone-provider-key",
        },
        {
            "name": "silent-anthropic",
            "type": "anthropic",
            "base_url": f"{silent}/v1",
            "api_key": "silent-provider-key",
            "timeout_s": 1,
        },
        {
            "name": "flaky-anthropic",
            "type": "anthropic",
            "base_url": f"{overloaded}/v1",
            "api_key": FLAKY_ANTHROPIC_KEY,
        },
        {
            "name": "flaky-bedrock",
            "type": "bedrock",
            "base_url": unavailable,
            # The credentials the mock takes: it answers 503 to a request it would serve.
            "aws": {
                "region": "us-east-1",
                "access_key_id": "AKIDMOCK",
                "secret_access_key": "mock-secret-key",
            },
        },
        vertex_provider(),
    ]
    raw["models"] += [
        {"name": VERTEX_CLAUDE, "provider": "vertex"},
        {
            "name": "sonnet-flaky",
            "provider": "flaky-anthropic",
            "upstream_model": "claude-sonnet-4-0",
            "fallbacks": [BEDROCK_CLAUDE],
        },
        {
            "name": "sonnet-gone",
            "provider": "gone-anthropic",
            "upstream_model": "claude-sonnet-4-0",
            "fallbacks": [BEDROCK_CLAUDE],
        },
        {
            "name": "sonnet-silent",
            "provider": "silent-anthropic",
            "upstream_model": "claude-sonnet-4-0",
            "fallbacks": [BEDROCK_CLAUDE],
        },
        {
            "name": "bedrock-claude-flaky",
            "provider": "flaky-bedrock",
            "upstream_model": BEDROCK_CLAUDE,
            "fallbacks": ["claude-3-5-haiku-latest"],
        },
        {
            "name": "sonnet-to-vertex",
            "provider": "flaky-anthropic",
            "upstream_model": "claude-sonnet-4-0",
            "fallbacks": [VERTEX_CLAUDE],
        },
        {
            "name": "sonnet-doomed",
            "provider": "flaky-anthropic",
            "upstream_model": "claude-sonnet-4-0",
            "fallbacks": ["bedrock-claude-flaky"],
        },
        # gpt-4.1-nano (the mock's OpenAI API) cannot answer Anthropic's: skipped for
        # Messages clients, tried first for OpenAI's.
        {
            "name": "sonnet-mixed",
            "provider": "flaky-anthropic",
            "upstream_model": "claude-sonnet-4-0",
            "fallbacks": ["gpt-4.1-nano", "claude-3-5-haiku-latest"],
        },
    ]
    for name in ("sonnet-flaky", "bedrock-claude-flaky", "sonnet-to-vertex", "sonnet-mixed"):
        raw["pricing"]["models"][name] = PRIMARY_PRICE
    raw["auth"]["api_keys"] += [
        {"id": name, "key": secret} for name, secret in KEYS.items() if name != "narrow"
    ]
    # The narrow key may use sonnet-flaky but not its fallback.
    raw["auth"]["api_keys"].append(
        {"id": "narrow", "key": KEYS["narrow"], "allowed_models": ["sonnet-flaky"]}
    )
    raw["quotas"] = failover_budget()
    return raw


@pytest.fixture(scope="module")
def failover(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("anthropic-failover")
    with mocks_with_faults("status=529", "status=503") as (overloaded, unavailable):
        silent = BlackHole()
        try:
            raw = failover_config(
                overloaded.url, unavailable.url, f"http://127.0.0.1:{silent.port}"
            )
            with running_stack(workdir, write_config(workdir, raw)) as running:
                yield Stack(running, overloaded, unavailable)
        finally:
            silent.close()


def client(stack: Stack, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.gateway.base_url,
        api_key=KEYS[key],
        max_retries=0,
        timeout=30.0,
        default_headers={"anthropic-version": CLIENT_API_VERSION},
    )


def received(stack: Stack, path: str) -> dict[str, Any]:
    """What the stack's mock received last at ``path`` (decoded, without its query)."""
    [*_, sent] = [
        r for r in mock_requests(stack.gateway) if unquote(r["path"].partition("?")[0]) == path
    ]
    return sent


def invoke_path(model_id: str, stream: bool = False) -> str:
    return f"/model/{model_id}/{'invoke-with-response-stream' if stream else 'invoke'}"


def vertex_path(model: str, stream: bool = False) -> str:
    operation = "streamRawPredict" if stream else "rawPredict"
    return f"{LOCATION}/publishers/anthropic/models/{model}:{operation}"


def assert_no_secret_of_the_client(sent: dict[str, Any], key: str) -> None:
    text = orjson.dumps(sent).decode()
    assert KEYS[key] not in text
    assert "x-aigw" not in text and "x_aigw" not in text  # the gateway's own notes


def assert_counted(
    stack: Stack,
    before: dict[Any, float],
    key: str,
    line: dict[str, Any],
    usage: anthropic.types.Usage,
    price: tuple[Decimal, Decimal],
) -> None:
    """The answer's usage, once, in the log line, tokens_consumed_total (under the
    client's model and the answering provider) and the quota, at ``price``."""
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.input_tokens,
        usage.output_tokens,
    )
    expected = (usage.input_tokens * price[0] + usage.output_tokens * price[1]) / 10**6
    assert Decimal(str(line["cost_usd"])) == expected
    after = scrape(stack.gateway.metrics_url)
    for token_type, count in (("prompt", usage.input_tokens), ("completion", usage.output_tokens)):
        labels = {"api_key_id": key, "token_type": token_type}
        total = metric(after, "tokens_consumed_total", **labels)
        assert total - metric(before, "tokens_consumed_total", **labels) == count
        answered = {"model": line["model"], "provider": line["provider"], **labels}
        assert metric(after, "tokens_consumed_total", **answered) == count
    total_tokens = usage.input_tokens + usage.output_tokens
    assert wait_for(lambda: quota_used(stack.gateway, key) == total_tokens, 5.0)


def test_an_overloaded_anthropic_fails_over_to_claude_on_bedrock(failover: Stack) -> None:
    before = scrape(failover.gateway.metrics_url)
    raw = client(failover, "tobedrock").messages.with_raw_response.create(
        model="sonnet-flaky", max_tokens=200, messages=MESSAGES
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    assert raw.headers["x-envoy-attempt-count"] == "2"
    assert "x-aigw-provider" not in raw.headers
    # The primary got the client's body under its own name and key, and answered 529.
    first = failover.overloaded.requests()[-1]
    assert first["path"] == "/v1/messages"
    assert first["headers"]["x-api-key"] == FLAKY_ANTHROPIC_KEY
    assert first["json"]["model"] == "claude-sonnet-4-0"
    # Bedrock got Claude's body as InvokeModel takes it, signed with its AWS key.
    sent = received(failover, invoke_path(BEDROCK_CLAUDE))
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    assert sent["json"]["anthropic_version"] == "bedrock-2023-05-31"
    assert sent["json"]["messages"] == MESSAGES
    assert "model" not in sent["json"]
    assert "x-api-key" not in sent["headers"]  # the first attempt's credential
    assert_no_secret_of_the_client(sent, "tobedrock")
    line = log_line(failover.gateway, raw.headers["x-request-id"])
    assert (line["model"], line["provider"], line["upstream_model"]) == (
        "sonnet-flaky",
        "mock-bedrock",
        BEDROCK_CLAUDE,
    )
    assert_counted(failover, before, "tobedrock", line, message.usage, BEDROCK_CLAUDE_PRICE)
    after = scrape(failover.gateway.metrics_url)
    failovers = {"model": "sonnet-flaky", "to_model": BEDROCK_CLAUDE}
    assert (
        metric(after, "aigw_failovers_total", **failovers)
        - metric(before, "aigw_failovers_total", **failovers)
        == 1
    )


@pytest.mark.parametrize("model", ["sonnet-gone", "sonnet-silent"])
def test_a_refused_connection_or_a_timeout_fails_over_too(failover: Stack, model: str) -> None:
    raw = client(failover, "elsewhere").messages.with_raw_response.create(
        model=model, max_tokens=200, messages=MESSAGES
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    line = log_line(failover.gateway, raw.headers["x-request-id"])
    assert (line["model"], line["provider"]) == (model, "mock-bedrock")
    assert line["total_tokens"] == message.usage.input_tokens + message.usage.output_tokens


def test_a_stream_fails_over_to_bedrocks_event_stream_as_anthropics_sse(failover: Stack) -> None:
    before = scrape(failover.gateway.metrics_url)
    with client(failover, "stream").messages.stream(
        model="sonnet-flaky", max_tokens=200, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert text == REPLY
    assert message.stop_reason == "end_turn"
    sent = received(failover, invoke_path(BEDROCK_CLAUDE, stream=True))
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert_no_secret_of_the_client(sent, "stream")
    line = log_line(failover.gateway, request_id)
    assert (line["model"], line["provider"]) == ("sonnet-flaky", "mock-bedrock")
    assert_counted(failover, before, "stream", line, message.usage, BEDROCK_CLAUDE_PRICE)


@pytest.mark.parametrize("stream", [False, True])
def test_an_unavailable_bedrock_fails_over_to_anthropic(failover: Stack, stream: bool) -> None:
    before = scrape(failover.gateway.metrics_url)
    claude = client(failover, "reverse")
    message: Message
    if stream:
        with claude.messages.stream(
            model="bedrock-claude-flaky", max_tokens=200, messages=MESSAGES
        ) as events:
            message = events.get_final_message()
            request_id = events.response.headers["x-request-id"]
    else:
        raw = claude.messages.with_raw_response.create(
            model="bedrock-claude-flaky", max_tokens=200, messages=MESSAGES
        )
        message, request_id = raw.parse(), raw.headers["x-request-id"]
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    first = failover.unavailable.requests()[-1]
    assert unquote(first["path"]) == invoke_path(BEDROCK_CLAUDE, stream)
    assert first["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    sent = received(failover, "/v1/messages")
    assert sent["headers"]["x-api-key"] == "mock-provider-key"
    # The client's own API version, though Bedrock's attempt went first.
    assert sent["headers"]["anthropic-version"] == CLIENT_API_VERSION
    assert "authorization" not in sent["headers"]  # the Bedrock attempt's signature
    assert sent["json"]["model"] == "claude-3-5-haiku-latest"
    assert sent["json"]["messages"] == MESSAGES
    assert "anthropic_version" not in sent["json"]
    assert_no_secret_of_the_client(sent, "reverse")
    line = log_line(failover.gateway, request_id)
    assert (line["model"], line["provider"]) == ("bedrock-claude-flaky", "mock-anthropic")
    # A new key per scenario would do better: two requests share this one's counters.
    if not stream:
        assert_counted(failover, before, "reverse", line, message.usage, ANTHROPIC_HAIKU_PRICE)


@pytest.mark.parametrize("stream", [False, True])
def test_claude_on_vertex_serves_as_a_fallback(failover: Stack, stream: bool) -> None:
    claude = client(failover, "vertex")
    message: Message
    if stream:
        with claude.messages.stream(
            model="sonnet-to-vertex", max_tokens=200, messages=MESSAGES
        ) as events:
            message = events.get_final_message()
            request_id = events.response.headers["x-request-id"]
    else:
        raw = claude.messages.with_raw_response.create(
            model="sonnet-to-vertex", max_tokens=200, messages=MESSAGES
        )
        message, request_id = raw.parse(), raw.headers["x-request-id"]
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    sent = received(failover, vertex_path(VERTEX_CLAUDE, stream))
    assert sent["headers"]["authorization"].startswith("Bearer ")
    assert "x-api-key" not in sent["headers"]
    assert sent["json"]["anthropic_version"] == "vertex-2023-10-16"
    assert "model" not in sent["json"]
    assert_no_secret_of_the_client(sent, "vertex")
    line = log_line(failover.gateway, request_id)
    assert (line["model"], line["provider"], line["upstream_model"]) == (
        "sonnet-to-vertex",
        "vertex",
        VERTEX_CLAUDE,
    )
    assert line["total_tokens"] == message.usage.input_tokens + message.usage.output_tokens


def test_a_vertex_client_fails_over_too(failover: Stack) -> None:
    vertex = anthropic.AnthropicVertex(
        project_id="client-project",
        region="europe-west1",
        base_url=f"{failover.gateway.base_url}/vertex/v1",
        access_token=KEYS["vclient"],
        max_retries=0,
        timeout=30.0,
    )
    raw = vertex.messages.with_raw_response.create(
        model="sonnet-flaky", max_tokens=200, messages=MESSAGES
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    first = failover.overloaded.requests()[-1]
    assert first["json"]["model"] == "claude-sonnet-4-0"
    assert "anthropic_version" not in first["json"]  # Vertex's, not Anthropic's
    sent = received(failover, invoke_path(BEDROCK_CLAUDE))
    assert sent["json"]["anthropic_version"] == "bedrock-2023-05-31"
    assert_no_secret_of_the_client(sent, "vclient")
    line = log_line(failover.gateway, raw.headers["x-request-id"])
    assert (line["model"], line["provider"]) == ("sonnet-flaky", "mock-bedrock")


def test_when_every_attempt_fails_the_last_error_reaches_the_client_in_anthropics_shape(
    failover: Stack,
) -> None:
    with pytest.raises(anthropic.APIStatusError) as raised:
        client(failover, "doomed").messages.create(
            model="sonnet-doomed", max_tokens=200, messages=MESSAGES
        )
    error = raised.value
    # Bedrock's 503 (the last attempt), as Anthropic's API shapes an error.
    assert error.status_code == 503
    assert error.response.headers["x-envoy-attempt-count"] == "2"
    body = error.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "overloaded_error"
    assert failover.overloaded.requests()[-1]["json"]["model"] == "claude-sonnet-4-0"
    assert failover.unavailable.requests()[-1]["json"]["anthropic_version"] == (
        "bedrock-2023-05-31"
    )
    line = log_line(failover.gateway, error.response.headers["x-request-id"])
    assert (line["model"], line["provider"], line["http_status_code"]) == (
        "sonnet-doomed",
        "flaky-bedrock",
        503,
    )
    assert (line["total_tokens"], line["cost_usd"]) == (0, 0)
    # Nothing was generated: the reservation is given back.
    assert quota_used(failover.gateway, "doomed") == 0


def test_a_fallback_the_key_may_not_use_is_never_tried(failover: Stack) -> None:
    bedrock_calls = len(
        [r for r in mock_requests(failover.gateway) if r["path"].startswith("/model/")]
    )
    with pytest.raises(anthropic.APIStatusError) as raised:
        client(failover, "narrow").messages.create(
            model="sonnet-flaky", max_tokens=200, messages=MESSAGES
        )
    # The primary's own answer: Anthropic's 529.
    assert raised.value.status_code == 529
    assert raised.value.response.json()["error"]["type"] == "overloaded_error"
    assert raised.value.response.headers["x-envoy-attempt-count"] == "1"
    after = [r for r in mock_requests(failover.gateway) if r["path"].startswith("/model/")]
    assert len(after) == bedrock_calls


def test_a_fallback_that_speaks_only_openais_api_is_skipped_for_messages_clients(
    failover: Stack,
) -> None:
    chat_calls = len(received_all(failover, "/v1/chat/completions"))
    raw = client(failover, "mixed").messages.with_raw_response.create(
        model="sonnet-mixed", max_tokens=200, messages=MESSAGES
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    assert raw.headers["x-envoy-attempt-count"] == "2"  # the primary, then Claude
    assert len(received_all(failover, "/v1/chat/completions")) == chat_calls
    line = log_line(failover.gateway, raw.headers["x-request-id"])
    assert (line["model"], line["provider"]) == ("sonnet-mixed", "mock-anthropic")


def received_all(stack: Stack, path: str) -> list[dict[str, Any]]:
    return [r for r in mock_requests(stack.gateway) if r["path"].partition("?")[0] == path]
