"""Failover for OpenAI's Responses API, text completions and embeddings, with the official
``openai`` client through real Envoy: a primary account that throttles every request (a
mock of its own: OpenAI's 429 ``rate_limit_exceeded``), another that is down (503), and
the stack's mock as the same models in a third. What the SDK got, what each provider got,
and what the log line, the metrics and the quota count; a response the fallback answered
is retrieved and continued at the provider that stores it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
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

PROMPT = "fail over please"
REPLY = "Mock reply to: " + PROMPT
KEYS = {
    name: f"{name}-client-secret"
    for name in ("rjson", "rstream", "complete", "embed", "doomed", "later")
}
# USD per million input and output tokens: the primaries are priced dear, so a request
# billed at their price rather than the answering fallback's shows.
PRIMARY_PRICE = {"input_per_million": 50, "output_per_million": 100}
MINI_PRICE = (Decimal("0.15"), Decimal("0.60"))  # gpt-4o-mini's, the default config's
EMBED_PRICE = (Decimal("0.02"), Decimal("0"))  # text-embedding-3-small's


@dataclass
class Stack:
    gateway: LocalStack
    tired: FaultyMock  # 429 on every request
    down: FaultyMock  # 503 on every request


def failover_config(tired: FaultyMock, down: FaultyMock) -> dict[str, Any]:
    raw = default_config()
    mock = next(p for p in raw["providers"] if p["name"] == "mock")
    raw["providers"] += [
        {**mock, "name": "tired", "base_url": f"{tired.url}/v1"},
        {**mock, "name": "down", "base_url": f"{down.url}/v1"},
    ]
    raw["models"] += [
        # Claude speaks neither the Responses API nor text completions: skipped.
        {"name": "gpt-tired", "provider": "tired", "upstream_model": "gpt-4o-mini",
         "fallbacks": ["claude-3-5-haiku-latest", "gpt-4o-mini"]},
        {"name": "gpt-doomed", "provider": "tired", "upstream_model": "gpt-4o-mini",
         "fallbacks": ["gpt-down"]},
        {"name": "gpt-down", "provider": "down", "upstream_model": "gpt-4o-mini"},
        # Titan's vectors are of another model: skipped.
        {"name": "embed-tired", "provider": "tired", "upstream_model": "text-embedding-3-small",
         "kind": "embeddings",
         "fallbacks": ["amazon.titan-embed-text-v2:0", "text-embedding-3-small"]},
    ]  # fmt: skip
    for name in ("gpt-tired", "gpt-doomed", "embed-tired"):
        raw["pricing"]["models"][name] = PRIMARY_PRICE
    raw["auth"]["api_keys"] += [{"id": name, "key": secret} for name, secret in KEYS.items()]
    raw["quotas"] = failover_budget()
    return raw


@pytest.fixture(scope="module")
def failover(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("openai-failover")
    with mocks_with_faults("status=429", "status=503") as (tired, down):
        config = write_config(workdir, failover_config(tired, down))
        with running_stack(workdir, config) as running:
            yield Stack(running, tired, down)


def client(stack: Stack, key: str) -> openai.OpenAI:
    """The SDK without retries of its own: the gateway's failover is under test."""
    return openai.OpenAI(
        api_key=KEYS[key], base_url=f"{stack.gateway.base_url}/v1", max_retries=0, timeout=30
    )


def at(requests: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    return [r for r in requests if r["path"].partition("?")[0] == path]


def assert_failed_over(
    stack: Stack,
    before: dict[Any, float],
    key: str,
    headers: Any,
    model: tuple[str, str],
    usage: tuple[int, int],
    price: tuple[Decimal, Decimal],
) -> dict[str, Any]:
    """Envoy tried twice; the log line names the client's model and the stack's mock,
    which answered; the answer's usage counted once, at the answering model's price, in
    the log line, tokens_consumed_total and the quota; one failover and the primary's
    429 counted."""
    assert headers["x-envoy-attempt-count"] == "2"
    assert "x-aigw-provider" not in headers
    line = log_line(stack.gateway, headers["x-request-id"])
    assert (line["model"], line["provider"]) == (model[0], "mock")
    prompt, completion = usage
    assert (line["prompt_tokens"], line["completion_tokens"]) == usage
    assert Decimal(str(line["cost_usd"])) == (prompt * price[0] + completion * price[1]) / 10**6
    after = scrape(stack.gateway.metrics_url)
    for token_type, count in (("prompt", prompt), ("completion", completion)):
        labels = {"api_key_id": key, "token_type": token_type}
        grown = metric(after, "tokens_consumed_total", **labels)
        assert grown - metric(before, "tokens_consumed_total", **labels) == count
        answered = {"model": model[0], "provider": "mock", **labels}
        assert metric(after, "tokens_consumed_total", **answered) == count
    failovers = {"model": model[0], "to_model": model[1]}
    grown = metric(after, "aigw_failovers_total", **failovers)
    assert grown - metric(before, "aigw_failovers_total", **failovers) == 1
    throttled = {"provider": "tired", "status_code": "429"}
    grown = metric(after, "aigw_upstream_errors_total", **throttled)
    assert grown - metric(before, "aigw_upstream_errors_total", **throttled) == 1
    assert wait_for(lambda: quota_used(stack.gateway, key) == prompt + completion, 5.0)
    return line


def assert_sent_to_both(stack: Stack, path: str, key: str) -> dict[str, Any]:
    """The primary got the request with the gateway's key and throttled; the stack's mock
    got the same body; neither got the client's key or the gateway's notes."""
    [first] = at(stack.tired.requests(), path)[-1:]
    [sent] = at(mock_requests(stack.gateway), path)[-1:]
    assert first["json"] == sent["json"]
    assert sent["json"]["model"] == first["json"]["model"]
    for each in (first, sent):
        assert each["headers"]["authorization"] == "Bearer mock-provider-key"
        text = str(each)
        assert KEYS[key] not in text and "x-aigw" not in text
    found: dict[str, Any] = sent
    return found


@pytest.mark.parametrize("stream", [False, True])
def test_a_429_on_the_first_account_is_answered_by_the_responses_api_of_the_next(
    failover: Stack, stream: bool
) -> None:
    key = "rstream" if stream else "rjson"
    before = scrape(failover.gateway.metrics_url)
    raw = client(failover, key).responses.with_raw_response.create(
        model="gpt-tired", input=PROMPT, stream=stream
    )
    parsed: Any = raw.parse()
    if stream:
        events = list(parsed)
        assert events[-1].type == "response.completed"
        completed = events[-1].response
    else:
        completed = parsed
    assert completed.output_text == REPLY
    assert completed.usage is not None
    usage = (completed.usage.input_tokens, completed.usage.output_tokens)
    sent = assert_sent_to_both(failover, "/v1/responses", key)
    assert sent["json"]["model"] == "gpt-4o-mini" and sent["json"]["input"] == PROMPT
    # Claude, between them in the chain, has no Responses API: never tried.
    line = assert_failed_over(
        failover, before, key, raw.headers, ("gpt-tired", "gpt-4o-mini"), usage, MINI_PRICE
    )
    assert line["stream"] is stream


def test_a_response_the_fallback_stored_is_retrieved_and_continued_there(
    failover: Stack,
) -> None:
    sdk = client(failover, "later")
    first = sdk.responses.create(model="gpt-tired", input=PROMPT)
    tired_before = len(at(failover.tired.requests(), "/v1/responses"))
    # Retrieved from the provider that stores it: the one that answered.
    assert sdk.responses.retrieve(first.id).output_text == REPLY
    # Continued with the same model: at that provider alone, not the primary's account,
    # which has no such response.
    raw = sdk.responses.with_raw_response.create(
        model="gpt-tired", input="and again", previous_response_id=first.id
    )
    assert raw.parse().output_text == "Mock reply to: and again"
    assert raw.headers["x-envoy-attempt-count"] == "1"
    assert len(at(failover.tired.requests(), "/v1/responses")) == tired_before
    [sent] = at(mock_requests(failover.gateway), "/v1/responses")[-1:]
    assert sent["json"]["previous_response_id"] == first.id
    line = log_line(failover.gateway, raw.headers["x-request-id"])
    assert (line["model"], line["provider"], line["http_status_code"]) == (
        "gpt-tired",
        "mock",
        200,
    )


def test_a_429_on_the_first_account_is_answered_by_the_text_completions_of_the_next(
    failover: Stack,
) -> None:
    before = scrape(failover.gateway.metrics_url)
    raw = client(failover, "complete").completions.with_raw_response.create(
        model="gpt-tired", prompt=PROMPT, max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].text == REPLY
    assert completion.usage is not None
    usage = (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert_sent_to_both(failover, "/v1/completions", "complete")
    assert_failed_over(
        failover, before, "complete", raw.headers, ("gpt-tired", "gpt-4o-mini"), usage, MINI_PRICE
    )


def test_embeddings_fail_over_to_the_same_model_alone(failover: Stack) -> None:
    before = scrape(failover.gateway.metrics_url)
    titan_before = len(mock_requests(failover.gateway))
    raw = client(failover, "embed").embeddings.with_raw_response.create(
        model="embed-tired", input=PROMPT
    )
    vectors = raw.parse()
    assert len(vectors.data) == 1 and vectors.data[0].embedding
    sent = assert_sent_to_both(failover, "/v1/embeddings", "embed")
    assert sent["json"]["model"] == "text-embedding-3-small"
    # Titan (another model's vectors) was never asked: one request reached the mock.
    assert len(mock_requests(failover.gateway)) == titan_before + 1
    usage = (vectors.usage.prompt_tokens, 0)
    assert_failed_over(
        failover,
        before,
        "embed",
        raw.headers,
        ("embed-tired", "text-embedding-3-small"),
        usage,
        EMBED_PRICE,
    )


def test_when_every_account_fails_the_sdk_gets_the_last_error_in_openais_shape(
    failover: Stack,
) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        client(failover, "doomed").responses.create(model="gpt-doomed", input=PROMPT)
    error = raised.value
    assert error.status_code == 503
    assert isinstance(error.body, dict) and error.body.get("message")
    assert error.response.headers["x-envoy-attempt-count"] == "2"
    assert at(failover.down.requests(), "/v1/responses")
    line = log_line(failover.gateway, error.response.headers["x-request-id"])
    assert (line["model"], line["provider"], line["http_status_code"]) == (
        "gpt-doomed",
        "down",
        503,
    )
    assert (line["total_tokens"], line["cost_usd"]) == (0, 0)
    assert quota_used(failover.gateway, "doomed") == 0
