"""Failover, a second review, through real Envoy with the official ``openai`` client.
An Anthropic account whose key the provider refuses (a mock of its own answering
Anthropic's 401 to every request) is the primary of a chat model, and an
OpenAI-compatible account that throttles every request (OpenAI's 429) with a short
``timeout_s`` (to fail over soon) the primary of a Responses model; the stack's mock,
the same model on another account, is the fallback of both."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import default_config, metric, running_stack, scrape, write_config
from tests.integration.failover_support import FaultyMock, log_line, mocks_with_faults

KEY = "review-client-secret"


@dataclass
class Stack:
    gateway: LocalStack
    refusing: FaultyMock  # Anthropic's 401 on every request
    tired: FaultyMock  # OpenAI's 429 on every request


def review_config(refusing: FaultyMock, tired: FaultyMock) -> dict[str, Any]:
    raw = default_config()
    anthropic = next(p for p in raw["providers"] if p["name"] == "mock-anthropic")
    mock = next(p for p in raw["providers"] if p["name"] == "mock")
    raw["providers"] += [
        {**anthropic, "name": "refusing", "base_url": f"{refusing.url}/v1"},
        {**mock, "name": "tired", "base_url": f"{tired.url}/v1", "timeout_s": 1},
    ]
    raw["models"] += [
        {"name": "claude-refused", "provider": "refusing",
         "upstream_model": "claude-3-5-haiku-latest", "fallbacks": ["gpt-4o-mini"]},
        {"name": "gpt-tired", "provider": "tired", "upstream_model": "gpt-4o-mini",
         "fallbacks": ["gpt-4o-mini"]},
    ]  # fmt: skip
    raw["auth"]["api_keys"].append({"id": "review", "key": KEY})
    return raw


@pytest.fixture(scope="module")
def failover(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("failover-review2")
    with mocks_with_faults("status=401", "status=429") as (refusing, tired):
        config = write_config(workdir, review_config(refusing, tired))
        with running_stack(workdir, config) as running:
            yield Stack(running, refusing, tired)


def client(stack: Stack) -> openai.OpenAI:
    """The SDK without retries of its own: the gateway's failover is under test."""
    return openai.OpenAI(
        api_key=KEY, base_url=f"{stack.gateway.base_url}/v1", max_retries=0, timeout=30
    )


def test_a_primary_that_refuses_the_gateways_key_is_counted_when_envoy_fails_over(
    failover: Stack,
) -> None:
    """Anthropic's 401 reaches Envoy as the gateway's 502, which it retries on the mock:
    the client gets the mock's answer, and the refusal shows in
    aigw_upstream_errors_total under the provider that refused, by its own status."""
    before = scrape(failover.gateway.metrics_url)
    raw = client(failover).chat.completions.with_raw_response.create(
        model="claude-refused", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-envoy-attempt-count"] == "2"
    assert failover.refusing.requests()  # tried first
    line = log_line(failover.gateway, raw.headers["x-request-id"])
    assert (line["provider"], line["http_status_code"]) == ("mock", 200)
    after = scrape(failover.gateway.metrics_url)
    refused = {"provider": "refusing", "model": "claude-refused", "status_code": "401"}
    grown = metric(after, "aigw_upstream_errors_total", **refused)
    assert grown - metric(before, "aigw_upstream_errors_total", **refused) == 1


def test_a_response_continued_at_the_fallback_waits_as_that_fallback_does(
    failover: Stack,
) -> None:
    """The mock answered the first turn (the primary throttled), so it stores the response,
    and the next turn goes to it alone. It takes two seconds to answer: longer than the
    primary's one-second ``timeout_s``, well within the mock's own. The client gets the
    answer, as it would naming the mock's model, not Envoy's 504 after the primary's
    timeout."""
    sdk = client(failover)
    first = sdk.responses.create(model="gpt-tired", input="hello")
    slow = {"x-mock-fault": "delay=2"}
    raw = sdk.responses.with_raw_response.create(
        model="gpt-tired", input="and then?", previous_response_id=first.id, extra_headers=slow
    )
    assert raw.http_response.status_code == 200
    assert raw.parse().output_text == "Mock reply to: and then?"
    line = log_line(failover.gateway, raw.headers["x-request-id"])
    assert (line["model"], line["provider"], line["http_status_code"]) == ("gpt-tired", "mock", 200)
