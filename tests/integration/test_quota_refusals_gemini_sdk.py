"""Quota refusals as Google's ``google-genai`` SDK (and Gemini CLI) act on them,
through real Envoy, the gateway and its Valkey, to Gemini on the mock's Vertex AI.

Gemini CLI reads a 429's ``google.rpc.RetryInfo``: it waits that long and retries, or
gives up when the wait is long. A 429 without one is a short rate limit to it, retried
with backoff again and again, as google-genai retries it when its retries are on. A
refusal that no wait can help (a prompt larger than the whole budget, a lifetime quota
spent) is ``FAILED_PRECONDITION`` (400), which neither retries; one that resets keeps
its 429 ``RESOURCE_EXHAUSTED`` and its ``RetryInfo``.
"""

from __future__ import annotations

from typing import Any

import pytest
from google import genai
from google.genai import errors, types

from extproc.devstack import LocalStack
from tests.integration.conftest import metric, scrape
from tests.integration.mock_vertex import FLASH, GEMINI_ON_VERTEX, stack_serving, vertex_config

CLIENT_KEY = "team1-key"
MODEL = "gemini-2.5-flash"
# Far more than the hard-capped budget of 60 tokens a minute can ever take.
LONG_PROMPT = "word " * 400
# google-genai's own retries, on (5 attempts, 429 among the statuses it retries), with
# short waits so that a test of the retries a refusal invites stays short.
RETRIES = types.HttpRetryOptions(attempts=5, initial_delay=0.05, max_delay=0.1, jitter=0)


def gemini_config() -> dict[str, Any]:
    """Gemini's API on the SDK's own path; limits by the ``x-team`` header."""
    raw = vertex_config({MODEL: GEMINI_ON_VERTEX}, {MODEL: FLASH})
    raw["routes"] = [
        {"name": "gemini", "path_prefix": "/v1/models", "api": "gemini_generate_content"},
        *raw["routes"],
    ]
    raw["quotas"] = {
        "rules": [
            {"name": "capped-minute", "subject": "header:x-team", "match": "capped",
             "tokens_per_minute": 60, "hard_cap": True},
            {"name": "lifetime", "subject": "header:x-team", "match": "lifetime",
             "token_quota": {"limit": 10, "period": "lifetime"}},
            {"name": "one-a-minute", "subject": "header:x-team", "match": "minute",
             "requests_per_minute": 1},
        ]
    }  # fmt: skip
    return raw


stack = stack_serving(gemini_config, "gemini-refusals")


def client(stack: LocalStack, team: str, retries: types.HttpRetryOptions | None = None) -> Any:
    options = types.HttpOptions(
        base_url=stack.base_url, headers={"x-team": team}, retry_options=retries, timeout=30_000
    )
    return genai.Client(api_key=CLIENT_KEY, http_options=options)


def refusals(stack: LocalStack, rule: str) -> float:
    return metric(scrape(stack.metrics_url), "aigw_rate_limited_total", rule=rule)


def generate(sdk: Any, prompt: str, stream: bool) -> None:
    if stream:
        for _ in sdk.models.generate_content_stream(model=MODEL, contents=prompt):
            pass
    else:
        sdk.models.generate_content(model=MODEL, contents=prompt)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_prompt_larger_than_the_whole_budget_is_not_retried(
    stack: LocalStack, stream: bool
) -> None:
    """Before, a 429 with no RetryInfo: the SDK with its retries on sent it five times."""
    before = refusals(stack, "capped-minute")

    with pytest.raises(errors.ClientError) as refused:
        generate(client(stack, "capped", RETRIES), LONG_PROMPT, stream)

    assert (refused.value.code, refused.value.status) == (400, "FAILED_PRECONDITION")
    assert "Prompt too large for the token budget" in str(refused.value.message)
    assert refusals(stack, "capped-minute") == before + 1


def test_a_spent_lifetime_quota_is_not_retried(stack: LocalStack) -> None:
    sdk = client(stack, "lifetime", RETRIES)
    generate(sdk, "spend it", stream=False)  # the mock's answer is over the 10 tokens
    before = refusals(stack, "lifetime")

    with pytest.raises(errors.ClientError) as refused:
        generate(sdk, "once more", stream=False)

    assert (refused.value.code, refused.value.status) == (400, "FAILED_PRECONDITION")
    assert "it does not reset" in str(refused.value.message)
    assert refusals(stack, "lifetime") == before + 1


def test_a_minutes_rate_limit_stays_a_429_with_its_wait(stack: LocalStack) -> None:
    """A refusal that resets: RESOURCE_EXHAUSTED, and the wait where Gemini CLI reads it."""
    sdk = client(stack, "minute")
    generate(sdk, "the one request of this minute", stream=False)

    with pytest.raises(errors.ClientError) as refused:
        generate(sdk, "a second one", stream=False)

    assert (refused.value.code, refused.value.status) == (429, "RESOURCE_EXHAUSTED")
    [retry_info] = refused.value.details["error"]["details"]
    assert retry_info["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
    wait = int(retry_info["retryDelay"].removesuffix("s"))
    assert 1 <= wait <= 60
