"""A monthly token quota that a long running request holds, through the real Envoy, Valkey,
gateway and mock provider, with the official `openai` client.

A streamed request with a large `max_tokens` reserves more than the key's monthly quota
while its provider is slow to start; the key's next request meets a budget it fills with
nothing spent. Before, that 429 said the month was used up (`retry-after` at its end,
`x-should-retry: false`), and the SDK handed it to the caller. Now it is a short wait the
SDK sits out on its own: its retry, once the long request has settled at what it really
used, passes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import config_with_admin_token, metric, running_stack, scrape

SECRET = "held-review-secret"
QUOTAS = """
quotas:
  rules:
    - {name: held-month, subject: api_key, match: held,
       token_quota: {limit: 1000, period: calendar_month}}
"""
MESSAGES = [{"role": "user", "content": "count me"}]
# The long request: its status at once, its first chunk two seconds later (a long prompt's
# prefill); its reservation, 2,000 tokens and its prompt, is twice the quota.
SLOW_FIRST_CHUNK = {"x-mock-fault": "first_chunk_delay=2"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("quota-held")
    config = config_with_admin_token(workdir, "quota-held-admin-token", QUOTAS)
    key = f"    - {{id: held, key: {SECRET}}}\n"
    config.write_text(config.read_text().replace("  api_keys:\n", "  api_keys:\n" + key, 1))
    with running_stack(workdir, config) as running:
        yield running


def test_the_sdk_retries_a_quota_a_running_request_holds_and_then_passes(
    stack: LocalStack,
) -> None:
    started = threading.Event()
    long_answer: list[int] = []

    def long_request() -> None:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 2000, "stream": True}
        headers = {"authorization": f"Bearer {SECRET}", **SLOW_FIRST_CHUNK}
        with httpx.stream(
            "POST",
            f"{stack.base_url}/v1/chat/completions",
            content=orjson.dumps(body),
            headers={**headers, "content-type": "application/json"},
            timeout=30.0,
        ) as answer:
            long_answer.append(answer.status_code)
            started.set()  # admitted: its reservation holds the quota
            answer.read()

    running = threading.Thread(target=long_request)
    running.start()
    try:
        assert started.wait(30.0)
        assert long_answer == [200]
        statuses: list[int] = []
        refusals: list[httpx.Response] = []

        def seen(response: httpx.Response) -> None:
            statuses.append(response.status_code)
            if response.status_code == 429:
                response.read()
                refusals.append(response)

        # The client as users run it: its default retries, its own wait between them.
        client = OpenAI(
            base_url=f"{stack.base_url}/v1",
            api_key=SECRET,
            http_client=httpx.Client(event_hooks={"response": [seen]}),
        )
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=20
        )
    finally:
        running.join(60.0)

    assert answer.choices[0].message.content
    # Refused while the long request held the quota, then passed on the SDK's own retry.
    assert statuses[0] == 429 and statuses[-1] == 200
    refusal = refusals[0]
    error = refusal.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "held by running requests" in error["message"]
    assert "x-should-retry" not in refusal.headers
    assert 1 <= int(refusal.headers["retry-after"]) <= 5
    refused = metric(scrape(stack.metrics_url), "aigw_rate_limited_total", rule="held-month")
    assert refused == statuses.count(429)
