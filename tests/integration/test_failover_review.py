"""Failover, as a client and an operator see it: who answered, who is billed, whose key went where.

Each primary below is a mock provider of its own that misbehaves on every request (429,
500, slow, reset mid-stream); the fallbacks are the stack's ordinary mock provider in
OpenAI, Anthropic and Bedrock form. The official SDKs are the clients.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from openai import OpenAI, RateLimitError

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.store.embedded import free_port
from tests.integration.conftest import (
    REFUSED_PORT,
    GatewayLog,
    metric,
    mock_answers,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
)

MESSAGES = [{"role": "user", "content": "fail over please"}]
REPLY = "Mock reply to: fail over please"
# Client keys: one per scenario, so metrics, rollups and quotas are the scenario's alone.
KEYS = {
    name: f"{name}-client-secret"
    for name in ("bill", "slow", "reset", "creds", "bedrock", "logs", "narrow", "retries", "doomed")
}
PROVIDER_KEYS = {"p429": "p429-provider-key", "p500": "p500-provider-key"}
# USD per million input and output tokens: the primary m429 is priced dear, so a request
# billed at its price instead of its fallback's shows. The fallback's is the default config's.
PRIMARY_PRICE = "m429: {input_per_million: 50, output_per_million: 100}"
FALLBACK_PRICE = (Decimal("0.80"), Decimal("4.00"))  # claude-3-5-haiku-latest


@dataclass
class Faulty:
    """A mock provider that answers every request with the same fault."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(f"{self.url}/_mock/requests").json()
        return found


def start_faulty(fault: str) -> Faulty:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "extproc", "mock-llm", "--port", str(port), "--fault", fault],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    faulty = Faulty(port, process)
    wait_for(lambda: mock_answers(faulty.url), 15.0)
    return faulty


@dataclass
class Stack:
    gateway: LocalStack
    faulty: dict[str, Faulty]
    dead_port: int


@pytest.fixture(scope="module")
def review(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("failover-review")
    faulty = {
        "p429": start_faulty("status=429"),
        "p500": start_faulty("status=500"),
        "pslow": start_faulty("delay=3"),
        "preset": start_faulty("reset_after=3;interval=0.2"),
        # Answers at once, then takes 0.25 s per event (~2.5 s): past its 1 s per attempt.
        "pdrip": start_faulty("chunks=8;interval=0.25"),
    }
    dead_port = REFUSED_PORT
    url = {name: f.url for name, f in faulty.items()}
    providers = f"""
  - {{name: p429, base_url: "{url["p429"]}/v1", api_key: {PROVIDER_KEYS["p429"]}}}
  - {{name: p500, base_url: "{url["p500"]}/v1", api_key: {PROVIDER_KEYS["p500"]}}}
  - {{name: p429-anthropic, type: anthropic, base_url: "{url["p429"]}/v1",
      api_key: p429-anthropic-provider-key}}
  - {{name: pslow, base_url: "{url["pslow"]}/v1", api_key: pslow-provider-key, timeout_s: 1}}
  - {{name: preset, base_url: "{url["preset"]}/v1", api_key: preset-provider-key}}
  - {{name: pdrip, base_url: "{url["pdrip"]}/v1", api_key: pdrip-provider-key, timeout_s: 1}}
  - name: bedrock-flaky
    type: bedrock
    base_url: "{url["p500"]}"
    aws: {{region: us-east-1, access_key_id: AKIDMOCK, secret_access_key: mock-secret-key}}
  - name: bedrock-eu-dead
    type: bedrock
    base_url: "http://127.0.0.1:{dead_port}"
    aws: {{region: eu-west-1, access_key_id: AKIDEUROPE, secret_access_key: eu-secret-key}}
"""
    models = """
  - {name: m429, provider: p429, fallbacks: [claude-3-5-haiku-latest]}
  - {name: m500, provider: p500, fallbacks: [claude-3-5-haiku-latest, gpt-4.1-nano]}
  - {name: m500-to-bedrock, provider: p500, fallbacks: ["anthropic.claude-3-haiku-20240307-v1:0"]}
  - {name: mslow, provider: pslow, fallbacks: [claude-3-5-haiku-latest]}
  - {name: mreset, provider: preset, fallbacks: [claude-3-5-haiku-latest]}
  - {name: mdrip, provider: pdrip, fallbacks: [claude-3-5-haiku-latest]}
  - {name: mdoomed, provider: p429, fallbacks: [m500]}
  - {name: claude-flaky, provider: p429-anthropic, fallbacks: [claude-3-5-haiku-latest]}
  - {name: mrenamed, provider: p429, fallbacks: [claude-renamed]}
  - {name: claude-renamed, provider: mock-anthropic, upstream_model: claude-3-5-haiku-20241022}
  - {name: mprimary-renamed, provider: mock, upstream_model: gpt-4o, fallbacks: [claude-renamed]}
  - {name: bedrock-flaky-model, provider: bedrock-flaky,
     upstream_model: "amazon.titan-text-express-v1", fallbacks: [gpt-4.1-nano]}
  - {name: bedrock-eu-model, provider: bedrock-eu-dead,
     upstream_model: "amazon.titan-text-express-v1",
     fallbacks: ["anthropic.claude-3-haiku-20240307-v1:0"]}
"""
    keys = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in KEYS.items())
    # The narrow key may use m429 and m500 but none of their fallbacks but gpt-4.1-nano.
    keys = keys.replace(
        "{id: narrow, key: narrow-client-secret}",
        "{id: narrow, key: narrow-client-secret, allowed_models: [m429, m500, gpt-4.1-nano]}",
    )
    quotas = """
quotas:
  rules:
    - {name: review-budget, subject: api_key, tokens_per_day: 1000000}
"""
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:" + providers, 1)
    text = text.replace("\nmodels:\n", "\nmodels:" + models, 1)
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    text = text.replace(
        "\npricing:\n  models:\n", f"\npricing:\n  models:\n    {PRIMARY_PRICE}\n", 1
    )
    config = workdir / "gateway.yaml"
    config.write_text(text + quotas)
    try:
        with running_stack(workdir, config) as running:
            yield Stack(running, faulty, dead_port)
    finally:
        for f in faulty.values():
            f.process.terminate()
            f.process.wait(10)


def openai_client(stack: Stack, key: str) -> OpenAI:
    return OpenAI(
        base_url=f"{stack.gateway.base_url}/v1", api_key=KEYS[key], max_retries=0, timeout=30
    )


def log_line(stack: Stack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway.gateway_log).for_request(request_id)
    return line


def quota_used(stack: Stack, key: str) -> int:
    """Tokens the key's `review-budget` counter holds, as `extproc quota get` shows it."""
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "quota", "get", "--kind", "api_key", "--subject", key,
         "--format", "json", "--config", str(stack.gateway.config_path),
         "--token", "dev-admin-token"],
        env=stack.gateway.env, capture_output=True, check=True,
    )  # fmt: skip
    found = orjson.loads(result.stdout)
    return _tokens_used(found)


def _tokens_used(found: Any) -> int:
    for limit in found.get("limits", []):
        if limit.get("rule") == "review-budget":
            return int(limit["used"])
    raise AssertionError(f"no review-budget counter in {found}")


def rollup(stack: Stack, key: str) -> dict[str, dict[str, Any]]:
    """`extproc usage report --by api_key,model,provider` rows of one key, by model."""
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "usage", "report", "--by", "api_key,model,provider",
         "--format", "json", "--config", str(stack.gateway.config_path)],
        env=stack.gateway.env, capture_output=True, check=True,
    )  # fmt: skip
    rows: list[dict[str, Any]] = orjson.loads(result.stdout)["rows"]
    return {row["model"]: row for row in rows if row["api_key_id"] == key}


def test_only_the_answering_attempt_is_billed_counted_rolled_up_and_charged(
    review: Stack,
) -> None:
    """m429's provider refuses (no tokens); the Anthropic fallback answers. Everything that
    counts counts the fallback's usage once, under the model asked for, at the fallback's price."""
    before = scrape(review.gateway.metrics_url)
    raw = openai_client(review, "bill").chat.completions.with_raw_response.create(
        model="m429",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == REPLY
    assert reply.usage is not None
    usage = reply.usage
    line = log_line(review, raw.headers["x-request-id"])
    assert (line["model"], line["provider"]) == ("m429", "mock-anthropic")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    # At the fallback's price, not the (dear) primary's.
    price_in, price_out = FALLBACK_PRICE
    expected = (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 10**6
    assert Decimal(str(line["cost_usd"])) == expected
    after = scrape(review.gateway.metrics_url)
    for token_type, count in (
        ("prompt", usage.prompt_tokens),
        ("completion", usage.completion_tokens),
    ):
        labels = {"api_key_id": "bill", "token_type": token_type}
        assert (
            metric(after, "tokens_consumed_total", **labels)
            - metric(before, "tokens_consumed_total", **labels)
            == count
        )
        assert (
            metric(
                after, "tokens_consumed_total", model="m429", provider="mock-anthropic", **labels
            )
            == count
        )
    rows = wait_for(lambda: rollup(review, "bill"), 15.0)
    assert list(rows) == ["m429"]
    assert rows["m429"]["provider"] == "mock-anthropic"
    assert rows["m429"]["total_tokens"] == usage.total_tokens
    assert rows["m429"]["requests"] == 1
    # The quota holds the answer's tokens, not the reservation nor the failed attempt's.
    assert wait_for(lambda: quota_used(review, "bill") == usage.total_tokens, 5.0)


def test_the_fallback_gets_a_body_translated_for_it_and_its_own_key(review: Stack) -> None:
    raw = openai_client(review, "creds").chat.completions.with_raw_response.create(
        model="m429",
        messages=[{"role": "system", "content": "be brief"}, *MESSAGES],  # type: ignore[list-item]
        temperature=1.5,
    )
    assert raw.parse().choices[0].message.content == REPLY
    primary = review.faulty["p429"].requests()[-1]
    assert primary["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['p429']}"
    assert primary["json"]["model"] == "m429"
    fallback = mock_requests(review.gateway)[-1]
    assert fallback["path"] == "/v1/messages"
    assert fallback["json"]["model"] == "claude-3-5-haiku-latest"
    assert fallback["json"]["max_tokens"] == 4096
    assert fallback["json"]["system"] == "be brief"
    assert fallback["json"]["temperature"] == 1.0
    sent = {name.lower(): value for name, value in fallback["headers"].items()}
    assert sent["x-api-key"] == "mock-provider-key"
    assert "authorization" not in sent  # neither the primary's key nor the client's
    everything = orjson.dumps([primary, fallback]).decode()
    assert KEYS["creds"] not in everything
    assert PROVIDER_KEYS["p429"] not in orjson.dumps(fallback).decode()


def test_a_bedrock_fallback_is_signed_for_its_own_region_and_model(review: Stack) -> None:
    """The primary is a Bedrock provider in eu-west-1 that cannot be reached; the fallback,
    Bedrock in us-east-1 with other credentials, checks its SigV4 signature like AWS."""
    reply = openai_client(review, "bedrock").chat.completions.create(
        model="bedrock-eu-model",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == REPLY
    fallback = mock_requests(review.gateway)[-1]
    assert fallback["path"] == "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
    assert "/us-east-1/bedrock/" in fallback["headers"]["authorization"]
    assert "AKIDEUROPE" not in orjson.dumps(fallback).decode()


def test_an_openai_fallback_after_a_bedrock_primary_has_no_aws_headers(review: Stack) -> None:
    reply = openai_client(review, "bedrock").chat.completions.create(
        model="bedrock-flaky-model",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == REPLY
    primary = review.faulty["p500"].requests()[-1]
    assert primary["path"] == "/model/amazon.titan-text-express-v1/converse"
    fallback = mock_requests(review.gateway)[-1]
    sent = {name.lower(): value for name, value in fallback["headers"].items()}
    assert sent["authorization"] == "Bearer mock-provider-key"
    assert not [name for name in sent if name.startswith("x-amz-")]


def test_a_bedrock_fallback_after_an_openai_primary(review: Stack) -> None:
    raw = openai_client(review, "bedrock").chat.completions.with_raw_response.create(
        model="m500-to-bedrock",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert raw.parse().choices[0].message.content == REPLY
    line = log_line(review, raw.headers["x-request-id"])
    assert line["provider"] == "mock-bedrock"
    assert line["total_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_slow_primary_fails_over_and_only_the_fallback_is_billed(
    review: Stack, stream: bool
) -> None:
    client = openai_client(review, "slow")
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="mslow",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            request_id = response.headers["x-request-id"]
            chunks = list(response.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        raw = client.chat.completions.with_raw_response.create(
            model="mslow",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
        request_id = raw.headers["x-request-id"]
        text = raw.parse().choices[0].message.content or ""
        usage = raw.parse().usage
    assert text == REPLY and usage is not None
    line = log_line(review, request_id)
    assert line["provider"] == "mock-anthropic"
    assert line["total_tokens"] == usage.total_tokens
    assert line["usage_estimated"] is False


def test_a_stream_reset_after_its_200_is_charged_its_estimate_not_failed_over(
    review: Stack,
) -> None:
    before_fallback = len(mock_requests(review.gateway))
    received: list[str] = []
    stream = openai_client(review, "reset").chat.completions.create(
        model="mreset",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    request_id = stream.response.headers["x-request-id"]
    with pytest.raises(Exception):  # noqa: B017 - the client sees its stream break
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert received
    assert len(mock_requests(review.gateway)) == before_fallback  # no second answer
    line = log_line(review, request_id)
    assert line["provider"] == "preset"
    assert line["usage_estimated"] is True
    assert line["completion_tokens"] > 0 and line["prompt_tokens"] > 0
    assert wait_for(lambda: quota_used(review, "reset") == line["total_tokens"], 5.0)


def test_a_non_streamed_reset_before_any_byte_fails_over(review: Stack) -> None:
    raw = openai_client(review, "reset").chat.completions.with_raw_response.create(
        model="mreset",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert raw.parse().choices[0].message.content == REPLY
    assert log_line(review, raw.headers["x-request-id"])["provider"] == "mock-anthropic"


def test_one_log_line_per_request_naming_who_answered_and_the_failover_metric(
    review: Stack,
) -> None:
    """m500 fails over to claude-3-5-haiku-latest: one line, one failover counted."""
    before = scrape(review.gateway.metrics_url)
    raw = openai_client(review, "logs").chat.completions.with_raw_response.create(
        model="m500",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert raw.parse().choices[0].message.content == REPLY
    line = log_line(review, raw.headers["x-request-id"])
    assert (line["model"], line["provider"], line["upstream_model"]) == (
        "m500",
        "mock-anthropic",
        "claude-3-5-haiku-latest",
    )
    assert line["http_status_code"] == 200 and line["outcome"] == "completed"
    assert raw.headers["x-envoy-attempt-count"] == "2"
    after = scrape(review.gateway.metrics_url)
    labels = {"model": "m500", "to_model": "claude-3-5-haiku-latest"}
    assert (
        metric(after, "aigw_failovers_total", **labels)
        - metric(before, "aigw_failovers_total", **labels)
        == 1
    )
    # The request counts once, under the model asked for and the provider that answered.
    assert (
        metric(after, "aigw_requests_total", model="m500", provider="mock-anthropic")
        - metric(before, "aigw_requests_total", model="m500", provider="mock-anthropic")
        == 1
    )
    assert metric(after, "aigw_requests_total", model="m500", provider="p500") == metric(
        before, "aigw_requests_total", model="m500", provider="p500"
    )


def test_a_fallback_the_key_may_not_use_is_skipped(review: Stack) -> None:
    """The narrow key may use m429 but not its fallback claude-3-5-haiku-latest: the
    primary's 429 reaches the client, and the fallback's provider is never asked."""
    before = len(mock_requests(review.gateway))
    with pytest.raises(RateLimitError):
        openai_client(review, "narrow").chat.completions.create(
            model="m429",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    assert len(mock_requests(review.gateway)) == before


def test_a_fallback_the_key_may_use_is_still_tried_after_one_it_may_not(review: Stack) -> None:
    """m500 -> claude-3-5-haiku-latest (not allowed for narrow) -> gpt-4.1-nano (allowed)."""
    raw = openai_client(review, "narrow").chat.completions.with_raw_response.create(
        model="m500",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert raw.parse().choices[0].message.content == REPLY
    line = log_line(review, raw.headers["x-request-id"])
    assert (line["provider"], line["upstream_model"]) == ("mock", "gpt-4.1-nano")
    assert mock_requests(review.gateway)[-1]["path"] == "/v1/chat/completions"


def test_a_client_cannot_make_envoy_retry_answers_it_is_billed_once_for(review: Stack) -> None:
    """Envoy honours x-envoy-retry-on and friends from requests it trusts: a client that
    set them could have each 200 answer thrown away and asked again, the provider billing
    every answer and the gateway counting one."""
    before = len(mock_requests(review.gateway))
    reply = openai_client(review, "retries").chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={
            "x-envoy-retry-on": "retriable-status-codes",
            "x-envoy-retriable-status-codes": "200",
            "x-envoy-max-retries": "3",
        },
    )
    assert reply.choices[0].message.content == REPLY
    assert len(mock_requests(review.gateway)) == before + 1


def test_anthropic_messages_clients_fail_over_as_openai_clients_do(review: Stack) -> None:
    """On /v1/messages the same model fails over too: the Anthropic client gets the
    fallback's answer in Anthropic's API, as an OpenAI client gets it in OpenAI's
    (tests/integration/test_anthropic_failover.py has the rest)."""
    before = len(mock_requests(review.gateway))
    client = anthropic.Anthropic(
        base_url=review.gateway.base_url, api_key=KEYS["logs"], max_retries=0
    )
    message = client.messages.create(
        model="claude-flaky",
        max_tokens=50,
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    assert len(mock_requests(review.gateway)) == before + 1
    reply = openai_client(review, "logs").chat.completions.create(
        model="claude-flaky",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == REPLY


def test_a_stream_that_outlives_its_attempt_timeout_after_its_200_is_served_whole(
    review: Stack,
) -> None:
    """The primary's 200 left at once, its answer then drips on past the attempt's 1 s:
    the attempt timeout only covers the wait for the answer's headers, so the client gets
    the whole answer from the primary and is charged what the primary reported."""
    with openai_client(review, "slow").chat.completions.with_streaming_response.create(
        model="mdrip",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 8
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 8
    line = log_line(review, request_id)
    assert (line["provider"], line["usage_estimated"]) == ("pdrip", False)
    assert line["total_tokens"] == usage.total_tokens


def test_when_every_member_fails_the_last_error_reaches_the_client_and_nothing_is_charged(
    review: Stack,
) -> None:
    before = scrape(review.gateway.metrics_url)
    with pytest.raises(openai.InternalServerError) as raised:
        openai_client(review, "doomed").chat.completions.create(
            model="mdoomed",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    line = log_line(review, raised.value.response.headers["x-request-id"])
    assert (line["provider"], line["http_status_code"], line["outcome"]) == (
        "p500",
        500,
        "upstream_error",
    )
    assert line["total_tokens"] == 0 and line["cost_usd"] == 0
    after = scrape(review.gateway.metrics_url)
    assert metric(after, "tokens_consumed_total", api_key_id="doomed") == metric(
        before, "tokens_consumed_total", api_key_id="doomed"
    )
    assert wait_for(lambda: quota_used(review, "doomed") == 0, 5.0)


def test_the_log_names_the_model_name_each_provider_was_sent(review: Stack) -> None:
    """`upstream_model` is the name sent to the provider (docs/logging.md), failover or not."""
    client = openai_client(review, "logs")
    raw = client.chat.completions.with_raw_response.create(
        model="mrenamed",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert mock_requests(review.gateway)[-1]["json"]["model"] == "claude-3-5-haiku-20241022"
    line = log_line(review, raw.headers["x-request-id"])
    assert (line["provider"], line["upstream_model"]) == (
        "mock-anthropic",
        "claude-3-5-haiku-20241022",
    )
    raw = client.chat.completions.with_raw_response.create(
        model="mprimary-renamed",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert mock_requests(review.gateway)[-1]["json"]["model"] == "gpt-4o"
    line = log_line(review, raw.headers["x-request-id"])
    assert (line["provider"], line["upstream_model"]) == ("mock", "gpt-4o")
