"""OpenAI's Moderations API through the real stack: Envoy, the gateway, its embedded Valkey
and the mock provider, driven by the official openai client's
``client.moderations.create``.

Before, ``POST /v1/moderations`` got Envoy's 404, so apps that check user input went
around the gateway: no key checked, no access rule, no rate limit, no log line. Now the
request reaches the provider with the provider's key (never the client's), the client
gets the mock's classification as it came, each request writes one log line with the
caller's identity and zero tokens (moderation is free: never billed, nothing reserved,
no token limit refuses it), and a request rate limit of N a minute refuses the N+1th.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.mock_llm.moderation_api import moderate
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

KEY_ID, KEY = "trust-safety", "trust-safety-key-7f31"
LIMITED_ID, LIMITED_KEY = "comments", "comments-key-2b9d"
PROVIDER_KEY = "mock-provider-key"
PER_MINUTE = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    raw = default_config()
    raw["auth"]["api_keys"] += [
        {"id": KEY_ID, "key": KEY, "user_id": "tomas", "group_id": "safety"},
        {"id": LIMITED_ID, "key": LIMITED_KEY, "user_id": "rita", "group_id": "community"},
    ]
    raw["quotas"] = {
        "rules": [
            # A token budget no generating request fits: moderation consumes no tokens,
            # so it does not refuse it (nor does it reserve anything against it).
            {"name": "tiny-tokens", "subject": "api_key", "match": [KEY_ID], "tokens_per_day": 1,
             "hard_cap": True},
            {"name": "comments-rpm", "subject": "api_key", "match": [LIMITED_ID],
             "requests_per_minute": PER_MINUTE},
        ]
    }  # fmt: skip
    workdir = Path(tmp_path_factory.mktemp("moderations"))
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


@pytest.fixture
def gateway_log(stack: LocalStack) -> GatewayLog:
    return GatewayLog(stack.gateway_log)


def client_of(stack: LocalStack, key: str = KEY) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


def sent_to_mock(stack: LocalStack) -> list[dict]:
    return [r for r in mock_requests(stack) if r["path"].endswith("/moderations")]


def test_a_string_and_a_list_are_classified_as_the_provider_answers_with_one_line_each(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = client_of(stack)
    before = scrape(stack.metrics_url)
    already = len(sent_to_mock(stack))

    raw = client.moderations.with_raw_response.create(
        model="omni-moderation-latest", input="I will attack the castle"
    )
    answer = raw.parse()
    assert answer.model == "omni-moderation-latest"
    [result] = answer.results
    expected = moderate("I will attack the castle")
    assert result.flagged is True and result.categories.violence is True
    assert result.category_scores.violence == expected["category_scores"]["violence"]
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["route"], line["http_status_code"], line["model"]) == (
        "openai-moderations",
        200,
        "omni-moderation-latest",
    )
    assert (line["api_key_id"], line["user_id"], line["group_id"]) == (KEY_ID, "tomas", "safety")
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (0, 0, 0)
    assert line["cost_usd"] == 0 and line["quota_decision"] == "none"

    # A list, with no model: OpenAI's default, which the default config serves.
    texts = ["have a nice day", "you idiot", "how to steal a bike"]
    listed = client.moderations.with_raw_response.create(input=texts)
    results = listed.parse().results
    assert [each.flagged for each in results] == [moderate(t)["flagged"] for t in texts]
    assert results[1].categories.harassment is True
    assert results[2].category_scores.illicit == pytest.approx(0.45)
    [second] = gateway_log.for_request(listed.headers["x-request-id"])
    assert second["model"] == "omni-moderation-latest" and second["api_key_id"] == KEY_ID
    assert second["total_tokens"] == 0

    # The provider got its own key, none of the client's, and the bodies as sent (the
    # default model written into the one that named none).
    sent = sent_to_mock(stack)[already:]
    assert len(sent) == 2
    for request in sent:
        assert request["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
        assert KEY not in str(request["headers"])
    assert sent[0]["json"] == {
        "model": "omni-moderation-latest",
        "input": "I will attack the castle",
    }
    assert sent[1]["json"] == {"input": texts, "model": "omni-moderation-latest"}

    after = scrape(stack.metrics_url)
    counted = metric(after, "aigw_requests_total", route="openai-moderations") - metric(
        before, "aigw_requests_total", route="openai-moderations"
    )
    assert counted == 2
    assert metric(after, "tokens_consumed_total", api_key_id=KEY_ID) == 0
    row = wait_for(lambda: (found := usage_rows(stack, "api_key").get(KEY_ID)) and (
        found["requests"] >= 2 and found), 20)  # fmt: skip
    assert row, "no rollup of the moderations"
    assert row["total_tokens"] == 0 and row["unpriced_requests"] == 0


def test_a_chat_model_is_refused_with_the_endpoint_that_serves_it(stack: LocalStack) -> None:
    client = client_of(stack)
    with pytest.raises(openai.BadRequestError) as refused:
        client.moderations.create(model="text-embedding-3-small", input="hello")
    assert refused.value.code == "unsupported_model_for_route"
    assert "/v1/embeddings" in refused.value.message
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model="omni-moderation-latest", messages=[{"role": "user", "content": "hi"}]
        )
    assert "/v1/moderations" in chat.value.message


def test_a_request_rate_limit_refuses_the_request_past_it(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = client_of(stack, LIMITED_KEY)
    for _ in range(PER_MINUTE):
        client.moderations.create(model="text-moderation-latest", input="fine words")
    with pytest.raises(openai.RateLimitError) as limited:
        client.moderations.create(model="text-moderation-latest", input="fine words")
    assert limited.value.status_code == 429
    request_id = limited.value.response.headers["x-request-id"]
    [line] = gateway_log.for_request(request_id)
    assert line["quota_decision"] == "rejected" and line["quota_rule"] == "comments-rpm"
    assert (line["api_key_id"], line["user_id"]) == (LIMITED_ID, "rita")


def test_an_unknown_key_is_refused_before_the_provider(stack: LocalStack) -> None:
    already = len(sent_to_mock(stack))
    with pytest.raises(openai.AuthenticationError):
        client_of(stack, "not-a-key").moderations.create(input="hello")
    assert len(sent_to_mock(stack)) == already
