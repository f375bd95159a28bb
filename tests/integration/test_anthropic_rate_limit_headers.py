"""The gateway's limits under Anthropic's header names, for Anthropic Messages clients.

The anthropic SDKs and Claude Code pace themselves by ``anthropic-ratelimit-*``. They
got the gateway's limits only as OpenAI's ``x-ratelimit-*`` (and the provider's own
Anthropic headers are removed), so a client reading Anthropic's names saw no limit at
all until its 429. Now its answers, counts and refusals carry both, through Envoy, on
Anthropic itself (the lean path) and on Claude on Bedrock (translated).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import anthropic
import httpx
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import config_with_keys, running_stack
from tests.integration.test_quotas import within_one_minute_window

KEYS = {name: f"{name}-anthropic-limits-secret" for name in ("direct", "bedrock", "oai")}
QUOTAS = """
quotas:
  rules:
    - {name: four-a-minute, subject: api_key, requests_per_minute: 4}
    - {name: tokens-an-hour, subject: api_key, tokens_per_hour: 100000}
"""
MODELS = {"direct": "claude-3-5-haiku-latest", "bedrock": "anthropic.claude-3-haiku-20240307-v1:0"}
PROMPT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("anthropic-limits")
    with running_stack(workdir, config_with_keys(workdir, KEYS, QUOTAS)) as running:
        yield running


def claude(stack: LocalStack, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.base_url,
        api_key=None,
        default_headers={"x-api-key": KEYS[key]},
        max_retries=0,
    )


def reset_at(headers: httpx.Headers, unit: str) -> datetime:
    """Anthropic's reset: an RFC 3339 time in UTC."""
    text = headers[f"anthropic-ratelimit-{unit}-reset"]
    assert text.endswith("Z")
    return datetime.fromisoformat(text)


@pytest.mark.parametrize("key", ["direct", "bedrock"])
def test_anthropic_clients_read_the_gateways_limits_by_anthropics_names(
    stack: LocalStack, key: str
) -> None:
    within_one_minute_window()
    client = claude(stack, key)
    model = MODELS[key]

    answer = client.messages.with_raw_response.create(model=model, max_tokens=50, messages=PROMPT)  # type: ignore[arg-type]
    headers = answer.headers
    now = datetime.now(UTC)
    assert headers["anthropic-ratelimit-requests-limit"] == "4"
    assert headers["anthropic-ratelimit-requests-remaining"] == "3"
    # The minute's window ends at the next whole minute; the hour's at the next hour.
    requests_reset = reset_at(headers, "requests")
    assert requests_reset.second == 0
    assert 0 < (requests_reset - now).total_seconds() <= 61
    assert headers["anthropic-ratelimit-tokens-limit"] == "100000"
    # What the request reserved (its prompt and max_tokens) is taken from the hour's budget.
    assert 99000 < int(headers["anthropic-ratelimit-tokens-remaining"]) < 100000
    tokens_reset = reset_at(headers, "tokens")
    assert (tokens_reset.minute, tokens_reset.second) == (0, 0)
    assert 0 < (tokens_reset - now).total_seconds() <= 3601
    # The same limits as OpenAI's names say, which stay for clients that read those.
    assert headers["x-ratelimit-remaining-requests"] == "3"
    tokens_left = headers["anthropic-ratelimit-tokens-remaining"]
    assert headers["x-ratelimit-remaining-tokens"] == tokens_left
    # Anthropic has no separate input and output limits of the gateway to tell.
    assert not [name for name in headers if "input-tokens" in name or "output-tokens" in name]

    # A stream's answer carries them as well.
    with client.messages.stream(model=model, max_tokens=50, messages=PROMPT) as events:  # type: ignore[arg-type]
        events.get_final_message()
        streamed = events.response.headers
    assert streamed["anthropic-ratelimit-requests-remaining"] == "2"
    assert reset_at(streamed, "tokens") == tokens_reset

    # A count is a request for request limits, and reserves no tokens.
    counted = client.messages.with_raw_response.count_tokens(model=model, messages=PROMPT)  # type: ignore[arg-type]
    assert counted.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert reset_at(counted.headers, "requests") == requests_reset

    client.messages.create(model=model, max_tokens=50, messages=PROMPT)  # type: ignore[arg-type]
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model=model, max_tokens=50, messages=PROMPT)  # type: ignore[arg-type]
    refusal = refused.value.response.headers
    assert refusal["anthropic-ratelimit-requests-limit"] == "4"
    assert refusal["anthropic-ratelimit-requests-remaining"] == "0"
    assert reset_at(refusal, "requests") == requests_reset
    assert 1 <= int(refusal["retry-after"]) <= 60


def test_openai_clients_get_no_anthropic_names(stack: LocalStack) -> None:
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEYS["oai"], max_retries=0)
    answer = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT)  # type: ignore[arg-type]
    assert answer.headers["x-ratelimit-limit-requests"] == "4"
    assert not [name for name in answer.headers if name.startswith("anthropic-")]
