"""Token quotas and rate limits through the real Envoy, counted in the real Valkey.

The workshop's limits: 5 requests per minute for everyone, 2 per minute for
requests carrying `x-user-type: limited`, 10 tokens per hour; refusals are 429s
in OpenAI's shape with `retry-after` and the `x-ratelimit-*` headers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, mock_requests, running_stack
from tests.integration.jwt_tokens import ISSUER, SigningKey

KEYS = {
    name: f"{name}-secret-key"
    for name in ("alpha", "beta", "gamma", "tiny", "shadow", "capped", "delta")
}
HARD_BUDGET = 40
QUOTAS = """
quotas:
  time_zone: Europe/Berlin
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
    - name: hard-capped
      subject: api_key
      match: capped
      tokens_per_hour: 40
      hard_cap: true
    - name: engineering-hourly
      subject: group
      match: engineering
      models: [gpt-4o]
      requests_per_hour: 2
    - name: research-per-user
      subject: user
      match: "*"
      models: [gpt-4.1-nano]
      requests_per_hour: 3
    - name: research-group
      subject: group
      match: research
      models: [gpt-4.1-nano]
      requests_per_hour: 2
    - name: delta-budget
      subject: api_key
      match: delta
      tokens_per_hour: 1100
    - name: shadow-1-rpm
      subject: api_key
      match: shadow
      requests_per_minute: 1
      mode: shadow
"""


SIGNER = SigningKey("quota-rsa", "RS256")


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("quotas")
    text = DEFAULT_CONFIG.read_text()
    keys = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in KEYS.items())
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    jwks = orjson.dumps({"keys": [SIGNER.jwk()]}).decode()
    provider = (
        f"  jwt_providers:\n    - name: idp\n      issuer: {ISSUER}\n"
        f"      jwks: {{inline: {jwks}}}\n      algorithms: [RS256]\n"
    )
    text = text.replace("\nauth:\n", "\nauth:\n" + provider, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + QUOTAS)
    with running_stack(workdir, config) as running:
        yield running


def within_one_minute_window() -> None:
    """Start a burst early in a minute, so the burst cannot straddle two windows."""
    seconds_into_minute = time.time() % 60
    if seconds_into_minute > 50:
        time.sleep(61 - seconds_into_minute)


def chat(stack: LocalStack, key: str, **headers: str) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count me"}]}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={
            "authorization": f"Bearer {KEYS[key]}",
            "content-type": "application/json",
            **headers,
        },
        timeout=30.0,
    )


def test_the_sixth_request_in_a_minute_is_refused(quota_stack: LocalStack) -> None:
    within_one_minute_window()
    answers = [chat(quota_stack, "alpha") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    remaining = [int(a.headers["x-ratelimit-remaining-requests"]) for a in answers[:5]]
    assert remaining == [4, 3, 2, 1, 0]
    assert all(a.headers["x-ratelimit-limit-requests"] == "5" for a in answers)
    refused = answers[5]
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert "api_key 'alpha'" in error["message"]
    assert "5 requests per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Another key has its own counter.
    assert chat(quota_stack, "beta").status_code == 200


def test_the_refusal_never_reaches_the_provider_and_is_logged(quota_stack: LocalStack) -> None:
    within_one_minute_window()
    for _ in range(5):
        chat(quota_stack, "gamma")
    before = len(mock_requests(quota_stack))
    refused = chat(quota_stack, "gamma")
    assert refused.status_code == 429
    assert len(mock_requests(quota_stack)) == before
    [line] = GatewayLog(quota_stack.gateway_log).for_request(refused.headers["x-request-id"])
    assert line["http_status_code"] == 429 and line["api_key_id"] == "gamma"


def test_requests_marked_limited_get_two_per_minute(quota_stack: LocalStack) -> None:
    within_one_minute_window()
    limited = [chat(quota_stack, "beta", **{"x-user-type": "limited"}) for _ in range(3)]
    assert [a.status_code for a in limited] == [200, 200, 429]
    assert "header x-user-type 'limited'" in limited[2].json()["error"]["message"]


def test_ten_tokens_per_hour_block_once_used(quota_stack: LocalStack) -> None:
    first = chat(quota_stack, "tiny")
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert used > 10  # the provider's count, settled after the answer

    def refused() -> httpx.Response | None:
        answer = chat(quota_stack, "tiny")
        return answer if answer.status_code == 429 else None

    deadline = time.monotonic() + 10
    second = refused()
    while second is None and time.monotonic() < deadline:
        time.sleep(0.1)
        second = refused()
    assert second is not None
    error = second.json()["error"]
    assert "10 tokens per hour" in error["message"]
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"


def test_shadow_rules_count_but_never_block(quota_stack: LocalStack) -> None:
    within_one_minute_window()
    answers = [chat(quota_stack, "shadow") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]


def test_a_hard_capped_budget_is_not_overrun(quota_stack: LocalStack) -> None:
    """Each answer is cut (max_completion_tokens) to what the budget has left; what remains
    of an overrun is the prompt estimate's error on the last admitted request."""
    within_one_minute_window()
    used = 0
    answers = []
    caps = []
    for _ in range(5):
        answer = chat(quota_stack, "capped")
        answers.append(answer)
        if answer.status_code != 200:
            break
        used += answer.json()["usage"]["total_tokens"]
        sent = mock_requests(quota_stack)[-1]["json"]
        # OpenAI's current name, which its reasoning models require; not max_tokens.
        assert "max_tokens" not in sent
        caps.append(sent["max_completion_tokens"])
        time.sleep(0.2)  # let the settlement land, as a next request would
    assert answers[-1].status_code == 429
    assert "rule 'hard-capped'" in answers[-1].json()["error"]["message"]
    # The client asked for no limit: the gateway set one from what was left.
    assert caps == sorted(caps, reverse=True) and caps[-1] < HARD_BUDGET
    # The mock counts 2 more prompt tokens than the gateway's chars/4 estimate here.
    assert used + 15 >= HARD_BUDGET  # the budget was really used up...
    assert used <= HARD_BUDGET + 2  # ...and not overrun by more than the estimate's error


def test_the_tightest_rule_decides_across_key_user_and_group(quota_stack: LocalStack) -> None:
    """`beta` belongs to nobody; `team1` is alice in engineering: the group rule (2 per
    hour) is tighter than the key rule (5 per minute) and refuses first."""
    answers = [
        httpx.post(
            f"{quota_stack.base_url}/v1/chat/completions",
            content=orjson.dumps(
                {"model": "gpt-4o", "messages": [{"role": "user", "content": "group quota"}]}
            ),
            headers={"authorization": "Bearer team1-key", "content-type": "application/json"},
        )
        for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 429]
    message = answers[2].json()["error"]["message"]
    assert "group 'engineering'" in message and "rule 'engineering-hourly'" in message
    assert answers[1].headers["x-ratelimit-remaining-requests"] == "0"


def test_jwt_users_and_groups_have_their_own_counters(quota_stack: LocalStack) -> None:
    """Two users of the group `research` from their JWTs: the group's 2 per hour is
    tighter than each user's 3 and refuses the third request, whoever sends it."""

    def ask(user: str) -> httpx.Response:
        token = SIGNER.token(sub=user, group="research")
        return httpx.post(
            f"{quota_stack.base_url}/v1/chat/completions",
            content=orjson.dumps(
                {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}]}
            ),
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )

    answers = [ask("rita"), ask("sam"), ask("rita")]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert "group 'research'" in answers[2].json()["error"]["message"]
    [line] = GatewayLog(quota_stack.gateway_log).for_request(answers[0].headers["x-request-id"])
    assert (line["user_id"], line["group_id"], line["auth_method"]) == ("rita", "research", "jwt")


def test_a_provider_error_gives_the_reserved_tokens_back(quota_stack: LocalStack) -> None:
    """A request reserves its estimate: "count me" is 6 prompt tokens by the
    gateway's estimate, plus the default 1024 for the completion. An error answer
    produced nothing, so its reservation is released, not charged."""
    failed = chat(quota_stack, "delta", **{"x-mock-fault": "status=500"})
    assert failed.status_code == 500
    time.sleep(0.3)  # the release is settled just after the answer
    served = chat(quota_stack, "delta")
    assert served.status_code == 200
    # 1100 - 1030 reserved by this request alone (the failed one gave its 1030 back)
    assert served.headers["x-ratelimit-remaining-tokens"] == "70"
