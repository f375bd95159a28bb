"""Failover past a provider's 200 whose body is an error, through real Envoy.

A provider (or a proxy in front of it) that answers ``200`` with an error body (OpenAI's
``{"error": ...}``, Google's one-element list, Anthropic's ``{"type": "error", ...}``)
generated nothing: its "overloaded" is the same error its ``503`` or ``529`` would have
been, and a chain with a fallback left moves on to it, as it does after that status.
Each primary here is a mock of its own answering every request with one such body
(``x-mock-fault: error_body=...``); the fallback is the stack's mock. The official
``openai`` and ``anthropic`` clients send the requests; the log line, the metrics and
the quota say what was counted: the answer alone, the failed attempt as its provider's
error (``status_code="error_body"``) and never billed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import orjson
import pytest

from extproc.devstack import LocalStack
from extproc.mock_llm.error_bodies import ERROR_BODY_MESSAGE
from tests.integration.conftest import (
    default_config,
    metric,
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

QUESTION = "fail over please"
REPLY = f"Mock reply to: {QUESTION}"
# The shape of each primary's error body, by the provider that answers it.
SHAPES = {"erring-openai": "openai", "erring-google": "google", "erring-anthropic": "anthropic"}
# Each scenario's model: (its primary's provider, the model it asks that provider for,
# its fallback on the stack's mock).
MODELS = {
    "gpt-erring": ("erring-openai", "gpt-4o-mini", "gpt-4o-mini"),
    "gemini-erring": ("erring-google", "gpt-4o-mini", "gpt-4o-mini"),
    "claude-erring": ("erring-anthropic", "claude-sonnet-4-0", "claude-3-5-haiku-latest"),
}
# Client keys, one per scenario, so its metrics and quota are its own; the narrow key may
# use gpt-erring but not its fallback, so its chain is the primary alone.
KEYS = {
    name: f"{name}-client-secret"
    for name in ("openai", "stream", "google", "translated", "anthropic", "narrow")
}


@dataclass
class Stack:
    gateway: LocalStack
    primaries: dict[str, FaultyMock]  # by provider name


def failover_config(primaries: dict[str, FaultyMock]) -> dict[str, Any]:
    raw = default_config()
    for name, mock in primaries.items():
        kind = "anthropic" if SHAPES[name] == "anthropic" else "openai"
        raw["providers"].append(
            {"name": name, "type": kind, "base_url": f"{mock.url}/v1", "api_key": f"{name}-key"}
        )
    raw["models"] += [
        {"name": model, "provider": provider, "upstream_model": upstream, "fallbacks": [fallback]}
        for model, (provider, upstream, fallback) in MODELS.items()
    ]
    raw["auth"]["api_keys"] += [
        {"id": name, "key": secret} for name, secret in KEYS.items() if name != "narrow"
    ]
    raw["auth"]["api_keys"].append(
        {"id": "narrow", "key": KEYS["narrow"], "allowed_models": ["gpt-erring"]}
    )
    raw["quotas"] = failover_budget()
    return raw


@pytest.fixture(scope="module")
def failover(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("failover-error-bodies")
    faults = [f"error_body={shape}" for shape in SHAPES.values()]
    with mocks_with_faults(*faults) as mocks:
        primaries = dict(zip(SHAPES, mocks, strict=True))
        with running_stack(workdir, write_config(workdir, failover_config(primaries))) as running:
            yield Stack(running, primaries)


def openai_client(stack: Stack, key: str) -> openai.OpenAI:
    """The SDK without retries of its own: the gateway's failover is under test."""
    return openai.OpenAI(
        api_key=KEYS[key], base_url=f"{stack.gateway.base_url}/v1", max_retries=0, timeout=30
    )


def error_body_count(samples: dict[Any, float], model: str) -> float:
    provider = MODELS[model][0]
    labels = {"provider": provider, "model": model, "status_code": "error_body"}
    return metric(samples, "aigw_upstream_errors_total", **labels)


def upstream_errors_of(samples: dict[Any, float], provider: str) -> float:
    return metric(samples, "aigw_upstream_errors_total", provider=provider)


def assert_answered_by_the_fallback(
    stack: Stack,
    before: dict[Any, float],
    model: str,
    key: str,
    request_id: str,
    total_tokens: int,
) -> None:
    """The fallback's answer alone is counted; the primary's error body once, as its
    provider's error, and never billed."""
    line = log_line(stack.gateway, request_id)
    found = {
        "provider": line["provider"],
        "outcome": line["outcome"],
        "http_status_code": line["http_status_code"],
        "total_tokens": line["total_tokens"],
        "usage_estimated": line["usage_estimated"],
        "cut_attempts": line["cut_attempts"],
    }
    fallback_provider = "mock-anthropic" if model == "claude-erring" else "mock"
    assert found == {
        "provider": fallback_provider,
        "outcome": "completed",
        "http_status_code": 200,
        "total_tokens": total_tokens,
        "usage_estimated": False,
        "cut_attempts": None,
    }
    after = scrape(stack.gateway.metrics_url)
    assert error_body_count(after, model) - error_body_count(before, model) == 1
    primary = MODELS[model][0]
    # Counted once, as the error body it was (not also by a status it never had).
    assert upstream_errors_of(after, primary) - upstream_errors_of(before, primary) == 1
    consumed = metric(after, "tokens_consumed_total", api_key_id=key, provider=primary)
    assert consumed == 0
    assert wait_for(lambda: quota_used(stack.gateway, key) == total_tokens, 5.0)


@pytest.mark.parametrize(("model", "key"), [("gpt-erring", "openai"), ("gemini-erring", "google")])
def test_a_pass_through_error_body_fails_over_to_the_next_model(
    failover: Stack, model: str, key: str
) -> None:
    """OpenAI's error and Google's list, each in a 200 from an OpenAI-compatible primary:
    Envoy retries the request on the fallback, whose answer the client gets."""
    before = scrape(failover.gateway.metrics_url)
    asked = len(failover.primaries[MODELS[model][0]].requests())
    raw = openai_client(failover, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=50
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == REPLY
    assert raw.headers["x-envoy-attempt-count"] == "2"
    assert len(failover.primaries[MODELS[model][0]].requests()) == asked + 1
    assert answer.usage is not None
    total = answer.usage.total_tokens
    assert_answered_by_the_fallback(
        failover, before, model, key, raw.headers["x-request-id"], total
    )


def test_a_stream_whose_primary_answered_an_error_body_fails_over(failover: Stack) -> None:
    """A stream request whose primary answered a JSON error (no event stream): nothing
    reached the client yet, so the fallback's stream is the client's."""
    before = scrape(failover.gateway.metrics_url)
    with openai_client(failover, "stream").chat.completions.with_streaming_response.create(
        model="gpt-erring",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-envoy-attempt-count"] == "2"
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    [usage] = [c.usage for c in chunks if c.usage is not None]
    assert_answered_by_the_fallback(
        failover, before, "gpt-erring", "stream", request_id, usage.total_tokens
    )


def test_an_anthropic_error_body_translated_for_an_openai_client_fails_over(
    failover: Stack,
) -> None:
    """Anthropic's overloaded_error in a 200, for an OpenAI client: the attempt's 503,
    which Envoy retries on the fallback, and counted as the error body it was."""
    before = scrape(failover.gateway.metrics_url)
    raw = openai_client(failover, "translated").chat.completions.with_raw_response.create(
        model="claude-erring", messages=[{"role": "user", "content": QUESTION}], max_tokens=50
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == REPLY
    assert raw.headers["x-envoy-attempt-count"] == "2"
    assert answer.usage is not None
    assert_answered_by_the_fallback(
        failover,
        before,
        "claude-erring",
        "translated",
        raw.headers["x-request-id"],
        answer.usage.total_tokens,
    )


def test_an_anthropic_clients_error_body_fails_over(failover: Stack) -> None:
    """Anthropic's overloaded_error in a 200 from an Anthropic primary, for an Anthropic
    client (passed through): the fallback's message is the client's."""
    before = scrape(failover.gateway.metrics_url)
    client = anthropic.Anthropic(
        base_url=failover.gateway.base_url,
        api_key=KEYS["anthropic"],
        max_retries=0,
        timeout=30.0,
    )
    raw = client.messages.with_raw_response.create(
        model="claude-erring",
        max_tokens=50,
        messages=[{"role": "user", "content": QUESTION}],
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    assert raw.headers["x-envoy-attempt-count"] == "2"
    total = message.usage.input_tokens + message.usage.output_tokens
    assert_answered_by_the_fallback(
        failover, before, "claude-erring", "anthropic", raw.headers["x-request-id"], total
    )


def test_the_last_models_error_body_reaches_the_client_as_it_came(failover: Stack) -> None:
    """A chain of the primary alone (the key may not use its fallback): its error body is
    the client's answer, as without fallbacks, counted once and charged nothing."""
    before = scrape(failover.gateway.metrics_url)
    raw = openai_client(failover, "narrow").chat.completions.with_raw_response.create(
        model="gpt-erring", messages=[{"role": "user", "content": QUESTION}], max_tokens=50
    )
    assert raw.http_response.status_code == 200
    assert orjson.loads(raw.http_response.content)["error"]["message"] == ERROR_BODY_MESSAGE
    assert raw.headers["x-envoy-attempt-count"] == "1"
    line = log_line(failover.gateway, raw.headers["x-request-id"])
    found = (line["provider"], line["outcome"], line["total_tokens"], line["error_message"])
    assert found == ("erring-openai", "upstream_error", 0, ERROR_BODY_MESSAGE)
    after = scrape(failover.gateway.metrics_url)
    grown = error_body_count(after, "gpt-erring") - error_body_count(before, "gpt-erring")
    assert grown == 1
    assert quota_used(failover.gateway, "narrow") == 0
