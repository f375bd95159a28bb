"""What a platform team and its users do in a month, end to end through the real stack.

Two gateway workers behind the real Envoy, the embedded Valkey, the mock provider, the
official `openai` and `anthropic` clients, and `extproc` run as the operator runs it:

1. The platform team creates a key for a team with an expiry; the team uses it with both
   clients; the key expires and both get a 401 saying so; `keys list --group ... --status
   expired` finds it; `keys renew` gives it a new life, and the same secret works on every
   worker; the month's report by `api_key` has one row for it with all its usage, its
   cost the sum of its log lines'. A secret replaced at a renewal (`--rotate`) stays
   refused on every worker when the key is renewed again.
2. Prompt-cache reads and writes through the Anthropic client: the log line's cache
   fields, `aigw_token_parts_total` and the report agree.
3. A rate-limited team reads `x-ratelimit-*` through `with_raw_response` and is never told
   a limit resets in 0s.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anthropic
import openai
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    config_with_admin_token,
    metric,
    run_cli,
    running_stack,
    scrape,
    wait_for,
    worker_streams,
)

ADMIN_TOKEN = "operator-flows-admin-token"
# A team's budget the flows below read in the headers; a run-time key is limited by id.
QUOTAS = """
quotas:
  rules:
    - name: paced-bot-requests
      subject: api_key
      match: paced-bot
      requests_per_hour: 3
    - name: paced-team-tokens
      subject: group
      match: paced
      tokens_per_hour: 100000
"""
OPENAI_MODEL = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-latest"
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "What did we ship this week?"}]
# OpenAI's reset form: whole seconds rounded up, hours the largest unit ("1s", "6m0s").
RESET_FORM = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(\d+)s$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("operator-flows")
    config = config_with_admin_token(workdir, ADMIN_TOKEN, QUOTAS)
    with running_stack(workdir, config, workers=2) as running:
        yield running


def extproc(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(stack, *args, admin_token=ADMIN_TOKEN)


def create_key(stack: LocalStack, *args: str) -> str:
    """`extproc keys create ...`; the secret it prints once."""
    created = extproc(stack, "keys", "create", *args)
    assert created.returncode == 0, created.stderr
    [secret] = [line.removeprefix("key: ") for line in created.stdout.splitlines()
                if line.startswith("key: ")]  # fmt: skip
    return secret


def openai_client(stack: LocalStack, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=secret, max_retries=0)


def anthropic_client(stack: LocalStack, secret: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=secret, max_retries=0)


def chat(client: openai.OpenAI) -> str:
    """One chat completion; its request id."""
    raw = client.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL, messages=MESSAGES, max_tokens=40
    )  # fmt: skip
    assert raw.parse().choices[0].message.content
    return raw.headers["x-request-id"]


def message(client: anthropic.Anthropic, headers: dict[str, str] | None = None) -> str:
    """One Anthropic message; its request id."""
    raw = client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=40, messages=[{"role": "user", "content": "And next week?"}],
        extra_headers=headers or {},
    )  # fmt: skip
    assert raw.parse().content
    return raw.headers["x-request-id"]


def streamed_chat(client: openai.OpenAI) -> str:
    """One streamed chat completion, usage asked; its request id."""
    with client.chat.completions.with_streaming_response.create(
        model=OPENAI_MODEL, messages=MESSAGES, stream=True,
        stream_options={"include_usage": True},
    ) as response:  # fmt: skip
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert chunks[-1].usage is not None
    return request_id


def served_lines(stack: LocalStack, request_ids: list[str]) -> list[dict[str, Any]]:
    """The log line of each request (one each: a second would be billed twice)."""
    log = GatewayLog(stack.gateway_log)
    lines = []
    for request_id in request_ids:
        [line] = log.for_request(request_id)
        assert line["http_status_code"] == 200, line
        lines.append(line)
    return lines


def report(stack: LocalStack, *args: str) -> dict[str, Any]:
    """`extproc usage report ... --format json`, read from the store as the CLI reads it."""
    done = extproc(stack, "usage", "report", *args, "--format", "json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def rows_once(
    stack: LocalStack, requests: int, key_id: str, *period: str, by: str = "api_key"
) -> list[dict[str, Any]]:
    """The report's rows of ``key_id`` once they count ``requests`` (rollups land with the
    next flush)."""

    def rows() -> list[dict[str, Any]] | None:
        found = [row for row in report(stack, "--by", by, *period)["rows"]
                 if row["api_key_id"] == key_id]  # fmt: skip
        return found if sum(row["requests"] for row in found) == requests else None

    found = wait_for(rows, 20.0)
    last = report(stack, "--by", by, *period)
    assert found, f"the report never counted {requests} requests of {key_id}: {last}"
    return list(found)


def on_every_worker(stack: LocalStack, call: Callable[[], str]) -> list[str]:
    """``call`` made four times, which Envoy spreads over both workers (checked); the
    request ids."""
    before = worker_streams(stack)
    request_ids = [call() for _ in range(4)]
    after = worker_streams(stack)
    served = {endpoint: after[endpoint] - before.get(endpoint, 0) for endpoint in after}
    assert len(served) == 2 and all(served.values()), served
    return request_ids


def refused_until(
    probe: Callable[[], str], served: list[str], timeout_s: float = 30.0
) -> Exception:
    """Call ``probe`` until it raises (a key expiring); what it raised. The request ids of
    the calls served meanwhile are added to ``served``: they are billed too."""
    caught: list[Exception] = []

    def attempt() -> bool:
        try:
            served.append(probe())
        except (openai.APIStatusError, anthropic.APIStatusError) as error:
            caught.append(error)
            return True
        return False

    assert wait_for(attempt, timeout_s), "never refused"
    return caught[-1]


def years_ahead(years: int) -> str:
    """New Year's Day ``years`` from now, as --expires takes it: a fixed date would pass
    one day, and the renewals to it be refused."""
    return datetime(datetime.now(UTC).year + years, 1, 1, tzinfo=UTC).isoformat()


def month_of(line: dict[str, Any]) -> str:
    return str(line["timestamp"])[:7]


def test_a_team_key_expires_is_renewed_and_is_billed_in_one_row(stack: LocalStack) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
    secret = create_key(
        stack, "--id", "flows-bot", "--user", "dana", "--group", "platform-ml",
        "--label", "team=ml", "--expires", expires.isoformat(),
    )  # fmt: skip
    team_openai, team_anthropic = openai_client(stack, secret), anthropic_client(stack, secret)
    served = [chat(team_openai), message(team_anthropic), streamed_chat(team_openai)]

    # The key expires: each client gets a 401 in its own API's shape, saying so. Asked
    # from the moment it expires on, not over and over in the seconds before.
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()))
    expired = refused_until(lambda: chat(team_openai), served)
    assert isinstance(expired, openai.AuthenticationError), expired
    assert expired.status_code == 401
    assert expired.body == {
        "message": "API key 'flows-bot' has expired", "type": "authentication_error",
        "param": None, "code": "invalid_api_key",
    }  # fmt: skip
    with pytest.raises(anthropic.AuthenticationError) as refused:
        message(team_anthropic)
    assert refused.value.status_code == 401
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["message"] == "API key 'flows-bot' has expired"

    # The operator finds it among the team's expired keys, and nowhere among its active ones.
    listed = extproc(
        stack, "keys", "list", "--group", "platform-ml", "--status", "expired", "--json"
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    [row] = orjson.loads(listed.stdout)
    assert (row["id"], row["user_id"], row["labels"]) == ("flows-bot", "dana", {"team": "ml"})
    assert row["expires_at"] == expires.timestamp()
    table = extproc(stack, "keys", "list", "--group", "platform-ml", "--status", "expired")
    assert table.returncode == 0 and "flows-bot" in table.stdout and "expired" in table.stdout
    active = extproc(stack, "keys", "list", "--group", "platform-ml", "--status", "active")
    assert active.returncode == 0, active.stderr
    assert "flows-bot" not in active.stdout
    assert "no API key passes these filters" in active.stdout
    for output in (listed.stdout, table.stdout, active.stdout):
        assert secret not in output

    renewed = extproc(
        stack, "keys", "renew", "--id", "flows-bot", "--expires", years_ahead(4)
    )  # fmt: skip
    assert renewed.returncode == 0, renewed.stderr
    assert secret not in renewed.stdout + renewed.stderr

    # The same secret works again at once, with both clients, on both workers (each had
    # cached the key as expired).
    served += on_every_worker(stack, lambda: chat(team_openai))
    served += on_every_worker(stack, lambda: message(team_anthropic))
    served.append(streamed_chat(team_openai))
    listed = extproc(
        stack, "keys", "list", "--group", "platform-ml", "--status", "active", "--json"
    )  # fmt: skip
    assert [row["id"] for row in orjson.loads(listed.stdout)] == ["flows-bot"]

    lines = served_lines(stack, served)
    assert {(line["api_key_id"], line["user_id"], line["group_id"]) for line in lines} == {
        ("flows-bot", "dana", "platform-ml")
    }
    months = {month_of(line) for line in lines}
    if len(months) > 1:
        pytest.skip("the requests straddle the end of a month")
    [month] = months

    # The month's report: one row for the key, by key and by key, user and group alike,
    # every figure the sum of its log lines'.
    for by in ("api_key", "api_key,user,group"):
        [billed] = rows_once(stack, len(served), "flows-bot", "--month", month, by=by)
        assert billed.get("user_id", "dana") == "dana"
        assert billed.get("group_id", "platform-ml") == "platform-ml"
        for field in ("prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens"):
            assert billed[field] == sum(line[field] for line in lines), field
        assert Decimal(billed["cost_usd"]) == sum(Decimal(str(line["cost_usd"])) for line in lines)
        assert Decimal(billed["cost_usd"]) > 0
        assert billed["unpriced_requests"] == 0
    by_model = {row["model"]: row for row in rows_once(
        stack, len(served), "flows-bot", "--month", month, by="api_key,model")}  # fmt: skip
    assert set(by_model) == {OPENAI_MODEL, CLAUDE}
    assert by_model[CLAUDE]["requests"] == sum(line["model"] == CLAUDE for line in lines)


def test_a_secret_replaced_at_a_renewal_stays_refused_when_the_key_is_renewed_again(
    stack: LocalStack,
) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    old = create_key(stack, "--id", "leaky-bot", "--group", "platform-ml",
                     "--expires", expires.isoformat())  # fmt: skip
    refused_until(lambda: chat(openai_client(stack, old)), [])

    # The operator renews the expired key with a new secret, the old one kept refused...
    rotated = extproc(stack, "keys", "renew", "--id", "leaky-bot", "--expires",
                      years_ahead(4), "--rotate", "--grace", "1h", "--json")  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    new = orjson.loads(rotated.stdout)["key"]
    # ...and later moves the expiry on, the new secret unchanged.
    later = extproc(stack, "keys", "renew", "--id", "leaky-bot", "--expires",
                    years_ahead(5))  # fmt: skip
    assert later.returncode == 0, later.stderr

    # Before, the old secret worked again, on every worker, for the rest of the hour.
    def refused_old() -> str:
        with pytest.raises(openai.AuthenticationError) as refused:
            chat(openai_client(stack, old))
        assert refused.value.body is not None and isinstance(refused.value.body, dict)
        return str(refused.value.body["message"])

    assert set(on_every_worker(stack, refused_old)) == {"API key 'leaky-bot' has expired"}
    on_every_worker(stack, lambda: chat(openai_client(stack, new)))


def test_cache_reads_and_writes_agree_in_the_log_the_metrics_and_the_report(
    stack: LocalStack,
) -> None:
    secret = create_key(stack, "--id", "cache-bot", "--user", "erin", "--group", "docs-team")
    team = anthropic_client(stack, secret)
    # The mock reports 4 prompt tokens read from the cache, and 5 written (2 for an hour).
    cache = {"x-mock-fault": "cached=4", "x-mock-cache-write": "5m=3;1h=2"}
    served = [message(team, cache), message(team)]
    with team.messages.stream(
        model=CLAUDE, max_tokens=40, messages=[{"role": "user", "content": "And next week?"}],
        extra_headers=cache,
    ) as stream:  # fmt: skip
        final = stream.get_final_message()
        served.append(stream.response.headers["x-request-id"])
    assert final.usage.cache_read_input_tokens == 4
    assert final.usage.cache_creation_input_tokens == 5

    lines = served_lines(stack, served)
    parts = {
        "cached": "cached_tokens",
        "cache_write": "cache_write_tokens",
        "cache_write_1h": "cache_write_1h_tokens",
    }
    assert [[line[field] for field in parts.values()] for line in lines] == [
        [4, 5, 2], [0, 0, 0], [4, 5, 2],
    ]  # fmt: skip

    # The counters grow when the line is written: both workers' merged on one page.
    def counted() -> dict[str, float] | None:
        samples = scrape(stack.metrics_url)
        found = {
            part: metric(samples, "aigw_token_parts_total", api_key_id="cache-bot", token_type=part)
            for part in parts
        }
        return found if found["cached"] == 8 else None

    assert wait_for(counted) == {"cached": 8, "cache_write": 10, "cache_write_1h": 4}
    samples = scrape(stack.metrics_url)
    prompt = metric(samples, "tokens_consumed_total", api_key_id="cache-bot", token_type="prompt")
    assert prompt == sum(line["prompt_tokens"] for line in lines)
    cost = metric(samples, "aigw_cost_usd_total", api_key_id="cache-bot")
    logged_cost = sum(Decimal(str(line["cost_usd"])) for line in lines)
    assert Decimal(str(cost)) == logged_cost

    months = {month_of(line) for line in lines}
    if len(months) > 1:
        pytest.skip("the requests straddle the end of a month")
    [billed] = rows_once(stack, len(served), "cache-bot", "--month", months.pop())
    for part, field in parts.items():
        assert billed[field] == sum(line[field] for line in lines), part
    assert billed["prompt_tokens"] == prompt
    assert Decimal(billed["cost_usd"]) == logged_cost


def reset_seconds(value: str) -> int:
    matched = RESET_FORM.match(value)
    assert matched, f"not OpenAI's reset form: {value!r}"
    hours, minutes, seconds = (int(part or 0) for part in matched.groups())
    return hours * 3600 + minutes * 60 + seconds


def test_a_rate_limited_team_reads_its_budget_in_the_headers_and_never_a_reset_of_0s(
    stack: LocalStack,
) -> None:
    secret = create_key(stack, "--id", "paced-bot", "--user", "finn", "--group", "paced")
    team = openai_client(stack, secret)
    remaining = []
    for _ in range(3):
        raw = team.chat.completions.with_raw_response.create(
            model=OPENAI_MODEL, messages=MESSAGES, max_tokens=40
        )  # fmt: skip
        headers = raw.headers
        assert headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(headers["x-ratelimit-remaining-requests"])
        assert 1 <= reset_seconds(headers["x-ratelimit-reset-requests"]) <= 3600
        assert headers["x-ratelimit-limit-tokens"] == "100000"
        assert 0 <= int(headers["x-ratelimit-remaining-tokens"]) < 100000
        assert 1 <= reset_seconds(headers["x-ratelimit-reset-tokens"]) <= 3600
    assert remaining == ["2", "1", "0"]

    with pytest.raises(openai.RateLimitError) as refused:
        team.chat.completions.create(model=OPENAI_MODEL, messages=MESSAGES, max_tokens=40)
    headers = refused.value.response.headers
    assert refused.value.status_code == 429
    assert refused.value.body is not None and isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "rate_limit_exceeded"
    assert "paced-bot" in refused.value.body["message"]
    wait = int(headers["retry-after"])
    assert wait >= 1
    assert reset_seconds(headers["x-ratelimit-reset-requests"]) == wait
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # An hour's limit that resets past a minute from now is no wait the SDK should retry.
    if wait > 60:
        assert headers["x-should-retry"] == "false"

    # The Anthropic client on the same key reads the same names on its own route.
    with pytest.raises(anthropic.RateLimitError) as refused_messages:
        anthropic_client(stack, secret).messages.create(
            model=CLAUDE, max_tokens=40, messages=[{"role": "user", "content": "hi"}]
        )  # fmt: skip
    headers = refused_messages.value.response.headers
    assert reset_seconds(headers["x-ratelimit-reset-requests"]) >= 1
    assert int(headers["retry-after"]) >= 1
