"""Quotas as an operator runs them and as the official OpenAI client sees them.

Two gateway replicas share one Valkey behind one Envoy. The workshop's limits
(5 requests a minute for everyone, 2 for `x-user-type: limited`, 10 tokens an
hour) refuse with a 429 in OpenAI's shape whose `retry-after` and
`x-ratelimit-*` headers tell the client when to come back; an operator's
`extproc quota set|adjust|reset` decides the very next request, whichever
replica serves it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from openai import OpenAI, RateLimitError

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.stages.quota import openai_duration
from tests.integration.conftest import metric, running_stack, scrape, wait_for
from tests.integration.forked import run_extproc_text
from tests.integration.test_store_outage import OwnValkey

ADMIN_TOKEN = "quota-review-admin-token"
KEYS = {
    name: f"{name}-secret"
    for name in ("member1", "member2", "limited", "tiny", "capped", "capped2", "once")
}
# Only member2's requests count against the group's monthly quota its test lowers.
GROUPS = {"member2": "review-team"}
QUOTAS = """
quotas:
  rules:
    - name: everyone-5-rpm
      subject: api_key
      requests_per_minute: 5
    - name: limited-users
      subject: header:x-user-type
      match: limited
      requests_per_minute: 2
    - name: tiny-tokens
      subject: api_key
      match: tiny
      tokens_per_hour: 10
    - name: capped-budget
      subject: api_key
      match: [capped, capped2]
      tokens_per_hour: 40
      hard_cap: true
    - name: once-per-minute
      subject: api_key
      match: once
      requests_per_minute: 1
    - name: once-for-life
      subject: api_key
      match: once
      token_quota: {limit: 10, period: lifetime}
    - name: team-monthly
      subject: group
      match: review-team
      token_quota: {limit: 100000, period: calendar_month, time_zone: Europe/Berlin}
"""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    valkey = OwnValkey(tmp_path_factory.mktemp("review-valkey"))
    valkey.start()
    workdir = tmp_path_factory.mktemp("quota-review")
    text = DEFAULT_CONFIG.read_text().replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", ADMIN_TOKEN)
    keys = "".join(
        f"    - {{id: {name}, key: {secret}"
        + (f", group_id: {GROUPS[name]}}}\n" if name in GROUPS else "}\n")
        for name, secret in KEYS.items()
    )
    config = workdir / "gateway.yaml"
    config.write_text(text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1) + QUOTAS)
    try:
        with running_stack(
            workdir,
            config,
            extra_env={"REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0"},
            gateways=2,
        ) as running:
            yield running
    finally:
        valkey.stop()


def client(stack: LocalStack, key: str, **headers: str) -> OpenAI:
    # No retries: each call is one request, as the test counts them.
    return OpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=KEYS[key],
        max_retries=0,
        default_headers=headers or None,
    )


def ask(openai: OpenAI, content: str = "count me") -> Any:
    """One chat completion; the raw answer, so its headers can be read."""
    return openai.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
    )


def refusal(openai: OpenAI, content: str = "count me") -> RateLimitError:
    with pytest.raises(RateLimitError) as refused:
        ask(openai, content)
    return refused.value


def spent_refusal(openai: OpenAI) -> RateLimitError:
    """The refusal of a spent budget, once the last answer's settlement has landed (until
    then, its tokens are held by a request the store still counts as running, and the
    refusal is the short, retryable wait)."""

    def spent() -> RateLimitError | None:
        error = refusal(openai)
        return error if error.code == "insufficient_quota" else None

    found = wait_for(spent)
    assert found is not None
    return found


def said(error: RateLimitError) -> str:
    """The error's message as the gateway wrote it (the SDK prefixes its status)."""
    assert isinstance(error.body, dict)
    message: str = error.body["message"]
    return message


def settled(stack: LocalStack, group: str) -> bool:
    """Whether no running request holds any of ``group``'s token budgets."""
    found = quota(stack, "get", "--kind", "group", "--subject", group)
    return all(not limit.get("reserved") for limit in found["limits"])


def quota(stack: LocalStack, *args: str) -> dict[str, Any]:
    """`extproc quota ... --format json` as an operator runs it."""
    argv = [sys.executable, "-m", "extproc", "quota", *args, "--config", str(stack.config_path),
            "--token", ADMIN_TOKEN, "--format", "json"]  # fmt: skip
    done = run_extproc_text(argv, stack.env)
    assert done.returncode == 0, done.stderr
    state: dict[str, Any] = orjson.loads(done.stdout)
    return state


def counters(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A subject's limits by counter name (requests_per_minute, token_quota, ...)."""
    return {limit["counter"]: limit for limit in state["limits"]}


def refusals_counted(stack: LocalStack, rule: str) -> float:
    """`aigw_rate_limited_total` for a rule, summed over both replicas' /metrics."""
    pages = [stack.metrics_url, *(f"http://{http}/metrics" for http in stack._replica_http)]
    return sum(metric(scrape(page), "aigw_rate_limited_total", rule=rule) for page in pages)


def within_one_minute_window(seconds_needed: float = 5) -> None:
    """Start a scenario early enough that its per-minute window cannot roll over in it.
    ``seconds_needed``: many times what the scenario takes on an idle machine (a loaded
    CI machine is slower), but no more: each second more is up to a second asleep."""
    into = time.time() % 60
    if into > 60 - seconds_needed:
        time.sleep(61 - into)


def assert_says_when(error: RateLimitError, unit: str, limit: str) -> int:
    """The refusal's headers agree: `retry-after` seconds is when the limit resets."""
    headers = error.response.headers
    retry_after = int(headers["retry-after"])
    assert headers[f"x-ratelimit-limit-{unit}"] == limit
    assert headers[f"x-ratelimit-remaining-{unit}"] == "0"
    assert headers[f"x-ratelimit-reset-{unit}"] == openai_duration(retry_after)
    return retry_after


def test_the_sixth_request_is_refused_until_an_operator_resets_the_key(
    replicas: LocalStack,
) -> None:
    """A reset lets 5 more through at once, across both replicas, and only 5."""
    within_one_minute_window(10)  # ~0.5 s: eleven requests and one `extproc quota` run
    openai = client(replicas, "member1")
    answers = [ask(openai) for _ in range(5)]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == list("43210")
    sixth = refusal(openai)

    assert sixth.status_code == 429
    assert (sixth.type, sixth.code) == ("rate_limit_error", "rate_limit_exceeded")
    assert said(sixth) == (
        "Rate limit reached for api_key 'member1' (rule 'everyone-5-rpm'): 5 requests per"
        f" minute, 5 used; {said(sixth).split('; ')[1]}"
    )
    assert 1 <= assert_says_when(sixth, "requests", "5") <= 60

    state = quota(replicas, "reset", "--kind", "api_key", "--subject", "member1")
    assert state["limits"][0]["used"] == 0
    again = [ask(openai) for _ in range(5)]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in again] == list("43210")
    assert refusal(openai).code == "rate_limit_exceeded"


def test_the_third_limited_request_is_refused(replicas: LocalStack) -> None:
    within_one_minute_window()
    openai = client(replicas, "limited", **{"x-user-type": "limited"})
    answers = [ask(openai) for _ in range(2)]
    third = refusal(openai)

    assert [a.headers["x-ratelimit-limit-requests"] for a in answers] == ["2", "2"]
    assert "header x-user-type 'limited' (rule 'limited-users'): 2 requests per minute" in (
        said(third)
    )
    assert 1 <= assert_says_when(third, "requests", "2") <= 60


def test_ten_tokens_an_hour_refuse_once_used(replicas: LocalStack) -> None:
    openai = client(replicas, "tiny")
    first = ask(openai).parse()
    assert first.usage.total_tokens > 10

    def refused() -> RateLimitError | None:
        try:
            ask(openai)
        except RateLimitError as error:
            # Spent, not held: the first answer's settlement has landed.
            return None if "held by running requests:" in said(error) else error
        return None

    second = wait_for(refused)  # once the first answer's real size is settled
    assert second is not None and "10 tokens per hour" in said(second)
    assert 1 <= assert_says_when(second, "tokens", "10") <= 3600


def test_a_hard_capped_refusal_says_when_to_retry(replicas: LocalStack) -> None:
    """With 10 of its 40 tokens left, a prompt of about 18 tokens does not fit until
    the hour resets; the 429 lacked `retry-after` and every `x-ratelimit-*` header."""
    rule = ("--rule", "capped-budget", "--counter", "tokens_per_hour")
    spent = quota(replicas, "adjust", "--kind", "api_key", "--subject", "capped", *rule,
                  "--delta", "30")  # fmt: skip
    assert counters(spent)["tokens_per_hour"]["remaining"] == 10

    counted = refusals_counted(replicas, "capped-budget")
    error = refusal(client(replicas, "capped"), "a long prompt " * 4)

    assert error.code == "insufficient_quota"
    assert "api_key 'capped' (rule 'capped-budget'): 10 tokens left" in said(error)
    headers = error.response.headers
    assert 1 <= int(headers["retry-after"]) <= 3600
    assert headers["x-ratelimit-limit-tokens"] == "40"
    assert headers["x-ratelimit-remaining-tokens"] == "10"
    assert headers["x-ratelimit-reset-tokens"] == openai_duration(int(headers["retry-after"]))
    # Counted like any refusal (it was not: only the store's refusals were).
    assert refusals_counted(replicas, "capped-budget") == counted + 1


def test_a_prompt_larger_than_a_whole_budget_is_not_told_to_retry(replicas: LocalStack) -> None:
    """About 74 prompt tokens never fit in 40 an hour: waiting for the reset cannot help."""
    error = refusal(client(replicas, "capped2"), "a long prompt " * 20)

    assert error.code == "insufficient_quota"
    assert "Prompt too large for the token budget of api_key 'capped2'" in said(error)
    assert "40 tokens per hour" in said(error)
    assert "retry-after" not in error.response.headers
    assert error.response.headers["x-ratelimit-limit-tokens"] == "40"


def test_a_spent_lifetime_quota_is_not_retried_in_a_minute(replicas: LocalStack) -> None:
    """`once` may send 1 request a minute and 10 tokens ever. Its second request is
    refused by both: it was told to retry within the minute (the minute's limit),
    only to be refused forever after."""
    within_one_minute_window()
    openai = client(replicas, "once")
    assert ask(openai).parse().usage.total_tokens > 10

    second = spent_refusal(openai)

    assert second.code == "insufficient_quota"
    assert "rule 'once-for-life'" in said(second) and "it does not reset" in said(second)
    assert "retry-after" not in second.response.headers


def test_a_group_limit_set_below_its_usage_refuses_the_next_request(
    replicas: LocalStack,
) -> None:
    openai = client(replicas, "member2")
    ask(openai)
    rule = ("--kind", "group", "--subject", "review-team", "--rule", "team-monthly",
            "--counter", "token_quota")  # fmt: skip
    # The answer's settlement may land just after the client has it: until then its tokens
    # are held, not used, and the refusal below would be the short "held" wait.
    assert wait_for(lambda: settled(replicas, "review-team"))

    lowered = quota(replicas, "set", *rule, "--limit", "1")["limits"][0]
    before = time.time()
    refused = refusal(openai)
    after = time.time()

    assert (lowered["limit"], lowered["configured_limit"], lowered["remaining"]) == (1, 100000, 0)
    assert refused.code == "insufficient_quota"
    assert "group 'review-team' (rule 'team-monthly'): 1 tokens per calendar month" in (
        said(refused)
    )
    assert "member1" not in said(refused)  # other subjects stay out of it
    retry_after = assert_says_when(refused, "tokens", "1")
    # Seconds until local midnight of the 1st in Berlin, the window's reset.
    reset_at = lowered["reset_at"]
    assert reset_at - after - 1 <= retry_after <= reset_at - before + 1
    # The message names that reset in the budget's zone, with its offset: midnight on the
    # 1st in Berlin (it said 23:00 or 22:00 the day before, +00:00).
    named = datetime.fromisoformat(said(refused).rsplit("it resets at ", 1)[1])
    assert named.timestamp() == reset_at
    assert (named.day, named.hour, named.minute, named.second) == (1, 0, 0, 0)
    assert named.utcoffset() in (timedelta(hours=1), timedelta(hours=2))

    used = quota(replicas, "get", "--kind", "group", "--subject", "review-team")
    granted = quota(replicas, "adjust", *rule, "--delta", str(-used["limits"][0]["used"]))
    assert granted["limits"][0]["used"] == 0
    quota(replicas, "set", *rule, "--limit", "0")
    assert ask(openai).headers["x-ratelimit-limit-tokens"] == "100000"
