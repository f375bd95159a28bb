"""Quota refusals as the official SDKs act on them, and calendar quotas across a reload.

A 429 that waiting a few seconds cannot cure (a calendar quota spent until the 1st, a
lifetime quota, an hour's token budget) is not retried by the `anthropic` and `openai`
clients: the Anthropic client slept for whatever `retry-after` said (weeks, for a
monthly quota) before its automatic retry, and the OpenAI client retried a lifetime
quota twice, each refusal counted again. A minute's refusal is still retried after
`retry-after`. Then what a reload does to calendar counters and to an operator's
override, as docs/quotas.md says.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from openai import OpenAI, RateLimitError

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    config_with_admin_token,
    metric,
    running_stack,
    scrape,
    wait_for,
)
from tests.integration.forked import run_extproc_text

ADMIN_TOKEN = "quota-review3-admin-token"
KEYS = {
    name: f"{name}-review3-secret"
    for name in ("monthly", "life", "minute", "hourly", "mia", "capped")
}
USERS = {"mia": "mia"}
QUOTAS = """
quotas:
  time_zone: Europe/Berlin
  rules:
    - {name: monthly-tiny, subject: api_key, match: monthly,
       token_quota: {limit: 10, period: calendar_month}}
    - {name: life-tiny, subject: api_key, match: life,
       token_quota: {limit: 10, period: lifetime}}
    - {name: minute-one, subject: api_key, match: minute, requests_per_minute: 1}
    - {name: hourly-tiny, subject: api_key, match: hourly, tokens_per_hour: 10}
    - {name: users-weekly, subject: user, token_quota: {limit: 100000, period: calendar_week}}
    - {name: users-daily, subject: user, token_quota: {limit: 100000, period: calendar_day}}
    - {name: capped-minute, subject: api_key, match: capped, requests_per_minute: 1}
    - {name: capped-life, subject: api_key, match: capped, hard_cap: true,
       token_quota: {limit: 100, period: lifetime}}
"""
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "count me"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("quota-review3")
    config = config_with_admin_token(workdir, ADMIN_TOKEN, QUOTAS)
    keys = "".join(
        f"    - {{id: {name}, key: {secret}"
        + (f", user_id: {USERS[name]}}}\n" if name in USERS else "}\n")
        for name, secret in KEYS.items()
    )
    config.write_text(config.read_text().replace("  api_keys:\n", "  api_keys:\n" + keys, 1))
    with running_stack(workdir, config) as running:
        yield running


def chat(stack: LocalStack, key: str) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}),
        headers={"authorization": f"Bearer {KEYS[key]}", "content-type": "application/json"},
        timeout=30.0,
    )


def spent(stack: LocalStack, key: str) -> httpx.Response:
    """Spend the key's 10 tokens with one answer; its next request's 429 once settled."""
    assert chat(stack, key).status_code == 200

    def refused() -> httpx.Response | None:
        answer = chat(stack, key)
        return answer if answer.status_code == 429 else None

    refusal = wait_for(refused)
    assert refusal is not None
    return refusal  # type: ignore[no-any-return]


def refusals_counted(stack: LocalStack, rule: str) -> float:
    return metric(scrape(stack.metrics_url), "aigw_rate_limited_total", rule=rule)


class SleptBeforeRetryError(Exception):
    """The client was about to sleep before an automatic retry."""


def test_an_anthropic_client_is_not_put_to_sleep_until_its_monthly_quota_resets(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `anthropic` client sleeps whatever `retry-after` says before it retries a 429
    (no upper bound): for a monthly quota spent, weeks, with the caller hanging."""
    refusal = spent(stack, "monthly")
    assert refusal.json()["error"]["code"] == "insufficient_quota"
    assert int(refusal.headers["retry-after"]) > 60  # it resets on the 1st, Berlin time

    def sleep(seconds: float) -> None:
        raise SleptBeforeRetryError(f"the client was told to sleep {seconds:.0f} s before retrying")

    # The SDK's sleep between attempts, not the gateway's: the client as users run it,
    # with its default retries.
    monkeypatch.setattr("anthropic._base_client.time.sleep", sleep)
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=KEYS["monthly"])

    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=10,
            messages=MESSAGES,  # type: ignore[arg-type]
        )

    assert "rule 'monthly-tiny'" in refused.value.message
    assert refused.value.response.headers["x-should-retry"] == "false"
    # Still told when the quota resets, for a client that schedules its own retry.
    assert int(refused.value.response.headers["retry-after"]) > 60


def test_an_hours_token_budget_is_not_slept_on_either(stack: LocalStack) -> None:
    """An hour's budget resets in up to an hour: no client should hang that long."""
    refusal = spent(stack, "hourly")
    assert refusal.json()["error"]["code"] == "rate_limit_exceeded"
    if int(refusal.headers["retry-after"]) > 60:  # not in the last minute of the hour
        assert refusal.headers["x-should-retry"] == "false"


def test_an_openai_client_does_not_retry_a_spent_lifetime_quota(stack: LocalStack) -> None:
    """A lifetime quota never resets (no `retry-after`): the `openai` client, at its
    default two retries, sent it three times, each refused and counted."""
    spent(stack, "life")
    before = refusals_counted(stack, "life-tiny")
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEYS["life"])

    with pytest.raises(RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    assert refused.value.code == "insufficient_quota"
    assert "retry-after" not in refused.value.response.headers
    assert refusals_counted(stack, "life-tiny") == before + 1


def test_a_minutes_refusal_is_still_retried_after_retry_after(stack: LocalStack) -> None:
    """A client should wait out a minute's limit and try again: no `x-should-retry`."""
    answers = [chat(stack, "minute") for _ in range(2)]
    refusal = answers[-1] if answers[-1].status_code == 429 else chat(stack, "minute")

    assert refusal.status_code == 429
    assert 1 <= int(refusal.headers["retry-after"]) <= 60
    assert "x-should-retry" not in refusal.headers


def test_a_prompt_too_large_for_a_capped_budget_is_not_sent_back_after_a_minute(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key's one request a minute is used and its hard-capped budget has tokens left,
    but not room for this prompt, ever: before, the 429 named the minute's limit, and the
    `openai` client slept its `retry-after` (up to 60 s) and retried, twice, to be refused
    for the prompt's size in the end."""
    assert chat(stack, "capped").status_code == 200

    def sleep(seconds: float) -> None:
        raise SleptBeforeRetryError(f"the client was told to sleep {seconds:.0f} s before retrying")

    monkeypatch.setattr("openai._base_client.time.sleep", sleep)
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEYS["capped"])
    before = refusals_counted(stack, "capped-life")

    with pytest.raises(RateLimitError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "word " * 120}],  # 150 tokens and more
        )

    assert refused.value.code == "insufficient_quota"
    assert "Prompt too large for the token budget of api_key 'capped'" in refused.value.message
    assert "retry-after" not in refused.value.response.headers
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert refusals_counted(stack, "capped-life") == before + 1


# --- calendar counters across a reload (docs/quotas.md, "Changing rules") -------------


def quota(stack: LocalStack, *args: str) -> dict[str, dict[str, Any]]:
    """`extproc quota ... --format json`: the subject's limits by rule."""
    argv = [sys.executable, "-m", "extproc", "quota", *args, "--config", str(stack.config_path),
            "--token", ADMIN_TOKEN, "--format", "json"]  # fmt: skip
    done = run_extproc_text(argv, stack.env)
    assert done.returncode == 0, done.stderr
    return {limit["rule"]: limit for limit in orjson.loads(done.stdout)["limits"]}


def reload(stack: LocalStack, old: str, new: str) -> None:
    """Rewrite the config in one step, SIGHUP, wait until the gateway reloaded it."""

    def reloads() -> int:
        return (stack.workdir / "gateway.err").read_text().count("config reloaded")

    before = reloads()
    text = stack.config_path.read_text()
    assert old in text
    written = stack.config_path.with_suffix(".new")
    written.write_text(text.replace(old, new, 1))
    written.replace(stack.config_path)
    stack.process("gateway").send_signal(signal.SIGHUP)
    assert wait_for(lambda: reloads() > before, timeout_s=30.0), "the gateway did not reload"


def test_a_new_time_zone_starts_calendar_counters_over_and_adjust_carries_usage(
    stack: LocalStack,
) -> None:
    """Mia's usage this week, counted in Berlin's week, is not in New York's week: the
    reload starts her counter over, and an operator carries it across with `adjust`."""
    assert chat(stack, "mia").status_code == 200

    def counted() -> dict[str, Any] | None:
        weekly = quota(stack, "get", "--kind", "user", "--subject", "mia")["users-weekly"]
        return weekly if weekly["used"] else None

    weekly = wait_for(counted)
    used = weekly["used"]
    assert weekly["time_zone"] == "Europe/Berlin"

    reload(stack, "time_zone: Europe/Berlin", "time_zone: America/New_York")
    moved = quota(stack, "get", "--kind", "user", "--subject", "mia")["users-weekly"]
    assert (moved["time_zone"], moved["used"]) == ("America/New_York", 0)

    rule = ("--kind", "user", "--subject", "mia", "--rule", "users-weekly",
            "--counter", "token_quota")  # fmt: skip
    carried = quota(stack, "adjust", *rule, "--delta", str(used))["users-weekly"]
    assert carried["used"] == used


def test_an_override_stays_with_its_rule_when_the_period_changes(stack: LocalStack) -> None:
    """`extproc quota set` keys the override by rule and counter: set on a daily quota,
    it is the limit of the rule's monthly quota after a reload changed the period."""
    rule = ("--kind", "user", "--subject", "mia", "--rule", "users-daily",
            "--counter", "token_quota")  # fmt: skip
    assert quota(stack, "set", *rule, "--limit", "5000")["users-daily"]["limit"] == 5000

    reload(stack, "period: calendar_day}", "period: calendar_month}")
    monthly = quota(stack, "get", "--kind", "user", "--subject", "mia")["users-daily"]

    assert (monthly["limit"], monthly["overridden"]) == (5000, True)
    assert monthly["reset_at"] - monthly["window_start"] > 27 * 86400  # a month's window
    quota(stack, "set", *rule, "--limit", "0")
