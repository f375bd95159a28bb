"""OpenAI's legacy text completions through the gateway: the official openai client's
``completions.create``, plain and streamed, real Envoy, the gateway, embedded Valkey and the
mock provider. A completion is billed like a chat completion, and every ledger (the answer,
the log line, the metrics, the usage rollup and the quota) must agree on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.management.client import QuotaClient
from extproc.mock_llm import count_tokens
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    mock_requests,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
    write_config,
)

MODEL = "gpt-4.1-nano"
ROUTE = "openai-completions"
# This module's own keys, so its counters, rollups and quota are its alone; the ledger
# test has one to itself, so that no other request lands in its rollup.
KEY_ID = "completions"
KEY = "completions-key-41b7"
LEDGER_ID = "completions-ledger"
LEDGER_KEY = "completions-ledger-key-93ce"
PROMPT = "Once upon a time, a lighthouse keeper"
# The mock's count: the prompt's words and punctuation, no message overhead.
PROMPT_TOKENS = count_tokens(PROMPT)
REPLY = f"Mock reply to: {PROMPT}"
REPLY_TOKENS = count_tokens(REPLY)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    raw = default_config()
    raw["auth"]["api_keys"].append({"id": KEY_ID, "key": KEY, "user_id": "cora"})
    raw["auth"]["api_keys"].append({"id": LEDGER_ID, "key": LEDGER_KEY, "user_id": "leo"})
    raw["quotas"] = {
        "rules": [
            {
                "name": "completions-tokens",
                "subject": "api_key",
                "match": [KEY_ID, LEDGER_ID],
                "tokens_per_day": 100_000_000,
            }
        ]
    }
    workdir = Path(tmp_path_factory.mktemp("completions"))
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


@pytest.fixture
def gateway_log(stack: LocalStack) -> GatewayLog:
    return GatewayLog(stack.gateway_log)


def client_of(stack: LocalStack, base: str = "/v1", key: str = KEY) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{base}", api_key=key, max_retries=0)


def completions_requests(stack: LocalStack) -> list[dict[str, Any]]:
    return [
        r
        for r in mock_requests(stack)
        if r["path"].endswith("/completions") and not r["path"].endswith("/chat/completions")
    ]


def tokens_used(stack: LocalStack, key_id: str = KEY_ID) -> int:
    """The key's token counter in the store, as the management API reads it."""
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", "dev-admin-token") as client:
        state = client.get("api_key", key_id)
    return sum(limit.used for limit in state.limits if limit.kind == "tokens")


def grown(
    before: dict[Any, float], after: dict[Any, float], token_type: str, key_id: str = KEY_ID
) -> float:
    labels = {"api_key_id": key_id, "model": MODEL, "token_type": token_type}
    return metric(after, "tokens_consumed_total", **labels) - metric(
        before, "tokens_consumed_total", **labels
    )


def test_a_completion_is_answered_billed_and_reported_in_every_ledger(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    raw = client_of(stack, key=LEDGER_KEY).completions.with_raw_response.create(
        model=MODEL, prompt=PROMPT, max_tokens=100
    )
    answer = raw.parse()

    assert answer.choices[0].text == REPLY and answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        PROMPT_TOKENS,
        REPLY_TOKENS,
    )
    upstream = completions_requests(stack)[-1]
    assert upstream["path"] == "/v1/completions"
    assert upstream["headers"]["authorization"] == "Bearer mock-provider-key"
    assert LEDGER_KEY not in str(upstream)

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["route"], line["path"], line["model"]) == (ROUTE, "/v1/completions", MODEL)
    assert line["api_key_id"] == LEDGER_ID
    assert line["http_status_code"] == 200 and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT_TOKENS, REPLY_TOKENS)
    assert line["usage_reported"] is True and line["finish_reasons"] == ["stop"]
    # gpt-4.1-nano: $0.10 in, $0.40 out per million.
    assert line["cost_usd"] == pytest.approx((PROMPT_TOKENS * 0.10 + REPLY_TOKENS * 0.40) / 1e6)

    after = scrape(stack.metrics_url)
    assert grown(before, after, "prompt", LEDGER_ID) == PROMPT_TOKENS
    assert grown(before, after, "completion", LEDGER_ID) == REPLY_TOKENS
    row = wait_for(lambda: usage_rows(stack, "api_key").get(LEDGER_ID), 20)
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        1,
        PROMPT_TOKENS,
        REPLY_TOKENS,
    )
    # Reserved the estimate plus max_tokens, settled on the provider's count.
    total = PROMPT_TOKENS + REPLY_TOKENS
    assert wait_for(lambda: tokens_used(stack, LEDGER_ID) == total, 10)


def test_a_stream_whose_client_did_not_ask_for_usage_gets_none_and_is_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    used_before = tokens_used(stack)
    with client_of(stack).completions.with_streaming_response.create(
        model=MODEL, prompt=PROMPT, max_tokens=100, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == REPLY
    # The gateway asked for the usage chunk; the client, which did not, never sees it.
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert completions_requests(stack)[-1]["json"]["stream_options"] == {"include_usage": True}

    [line] = gateway_log.for_request(request_id)
    assert line["stream"] is True and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT_TOKENS, REPLY_TOKENS)
    assert line["usage_reported"] is True and line["finish_reasons"] == ["stop"]
    after = scrape(stack.metrics_url)
    assert grown(before, after, "prompt") == PROMPT_TOKENS
    assert grown(before, after, "completion") == REPLY_TOKENS
    total = PROMPT_TOKENS + REPLY_TOKENS
    assert wait_for(lambda: tokens_used(stack) - used_before == total, 10)


def test_a_stream_whose_client_asked_for_usage_ends_with_it(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    with client_of(stack).completions.with_streaming_response.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (PROMPT_TOKENS, 3)
    [line] = gateway_log.for_request(request_id)
    assert line["completion_tokens"] == 3 and line["finish_reasons"] == ["length"]


@pytest.mark.parametrize(
    ("base_path", "route"),
    [("/openai/v1", "openai-prefix-completions"), ("/openai", "openai-bare-prefix-completions")],
)
def test_an_sdk_based_at_the_openai_prefix_reaches_completions_too(
    stack: LocalStack, gateway_log: GatewayLog, base_path: str, route: str
) -> None:
    raw = client_of(stack, base_path).completions.with_raw_response.create(
        model=MODEL, prompt=PROMPT, max_tokens=100
    )
    assert raw.parse().choices[0].text == REPLY
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["route"] == route


def test_a_bad_prompt_is_a_400_that_never_reaches_the_provider(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    sent_before = len(completions_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(stack).completions.create(model=MODEL, prompt=[1, "two"])  # type: ignore[list-item]
    body = refused.value.body
    assert isinstance(body, dict) and body["param"] == "prompt"
    assert len(completions_requests(stack)) == sent_before
    [line] = gateway_log.for_request(refused.value.response.headers["x-request-id"])
    assert line["http_status_code"] == 400 and line["quota_decision"] is None


def test_a_model_of_a_provider_without_the_api_is_a_400(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(stack).completions.create(model="claude-3-5-haiku-latest", prompt=PROMPT)
    assert refused.value.code == "unsupported_model_for_route"
    assert "no text completions API" in refused.value.message
    [line] = gateway_log.for_request(refused.value.response.headers["x-request-id"])
    assert line["http_status_code"] == 400 and line["quota_decision"] is None
