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
from openai.types.chat import ChatCompletion

from extproc.devstack import LocalStack
from tests.integration.conftest import config_with_admin_token, metric, running_stack, scrape

SECRET = "held-review-secret"
CAPPED_SECRET = "held-capped-review-secret"
LOOP_SECRET = "held-loop-review-secret"
QUOTAS = """
quotas:
  rules:
    - {name: loop-month, subject: api_key, match: held-loop,
       token_quota: {limit: 1000, period: calendar_month}}
    - {name: held-month, subject: api_key, match: held,
       token_quota: {limit: 1000, period: calendar_month}}
    - {name: capped-month, subject: api_key, match: held-capped, hard_cap: true,
       token_quota: {limit: 3000, period: calendar_month}}
"""
MESSAGES = [{"role": "user", "content": "count me"}]
# The long request: its status at once, its first chunk two seconds later (a long prompt's
# prefill); its reservation, 2,000 tokens and its prompt, is twice the quota.
SLOW_FIRST_CHUNK = {"x-mock-fault": "first_chunk_delay=2"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("quota-held")
    config = config_with_admin_token(workdir, "quota-held-admin-token", QUOTAS)
    key = (
        f"    - {{id: held, key: {SECRET}}}\n    - {{id: held-capped, key: {CAPPED_SECRET}}}\n"
        f"    - {{id: held-loop, key: {LOOP_SECRET}}}\n"
    )
    config.write_text(config.read_text().replace("  api_keys:\n", "  api_keys:\n" + key, 1))
    with running_stack(workdir, config) as running:
        yield running


def test_the_sdk_retries_a_quota_a_running_request_holds_and_then_passes(
    stack: LocalStack,
) -> None:
    statuses, refusals, answer = _while_a_long_request_runs(stack, SECRET, 2000, MESSAGES)

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


def test_the_sdk_retries_a_prompt_a_hard_capped_budget_lacks_only_for_a_running_request(
    stack: LocalStack,
) -> None:
    """A hard-capped 3,000-token month; the long request holds about 2,506 of it. A prompt
    of about 1,000 tokens is too large for the rest. Before, its 429 was "Token budget
    nearly used ... not enough for this prompt", insufficient_quota, the month's end and
    x-should-retry: false: the SDK raised it at once. Now the SDK waits and its retry,
    once the long request has settled at what it used, passes."""
    prompt = [{"role": "user", "content": "word " * 800}]
    statuses, refusals, answer = _while_a_long_request_runs(stack, CAPPED_SECRET, 2500, prompt)

    assert answer.choices[0].message.content
    assert statuses[0] == 429 and statuses[-1] == 200
    refusal = refusals[0]
    error = refusal.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith(
        "Token budget of api_key 'held-capped' (rule 'capped-month') held by running requests:"
    )
    assert "not enough for this prompt" in error["message"]
    assert "x-should-retry" not in refusal.headers
    assert 1 <= int(refusal.headers["retry-after"]) <= 5


def test_a_client_sending_one_request_after_another_is_not_held_by_its_own_answers(
    stack: LocalStack,
) -> None:
    """Each request reserves more than the key's 1,000-token month (max_tokens 2,000) and
    uses a few tokens. Its settlement, giving the rest back, is batched for a few
    milliseconds after the answer: the next request, sent at once, met the month still
    held by it, and the SDK slept 5 s before retrying it. Now it is admitted at once."""
    statuses: list[int] = []
    client = OpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=LOOP_SECRET,
        max_retries=0,  # a 429 is raised, not slept out
        http_client=httpx.Client(
            event_hooks={"response": [lambda response: statuses.append(response.status_code)]}
        ),
    )
    for _ in range(5):
        answer = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]  # plain dicts, as users pass them
            max_tokens=2000,
        )
        assert answer.choices[0].message.content
    assert statuses == [200] * 5
    refused = metric(scrape(stack.metrics_url), "aigw_rate_limited_total", rule="loop-month")
    assert not refused


def _while_a_long_request_runs(
    stack: LocalStack,
    secret: str,
    max_tokens: int,
    messages: list[dict[str, str]],
) -> tuple[list[int], list[httpx.Response], ChatCompletion]:
    """The statuses and 429s the SDK met asking with ``messages`` while a streamed request
    of the same key with ``max_tokens`` ran, and its answer."""
    started = threading.Event()
    long_answer: list[int] = []

    def long_request() -> None:
        body = {
            "model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": max_tokens, "stream": True,
        }  # fmt: skip
        headers = {"authorization": f"Bearer {secret}", **SLOW_FIRST_CHUNK}
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
            api_key=secret,
            http_client=httpx.Client(event_hooks={"response": [seen]}),
        )
        answer = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,  # type: ignore[arg-type]  # plain dicts, as users pass them
            max_tokens=20,
        )
    finally:
        running.join(60.0)
    return statuses, refusals, answer
