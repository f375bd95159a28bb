"""JWTs through the real Envoy: where a token is read, whom it names, and what it may not do.

A stack of its own: one JWT provider whose JWKS a local server serves, a user
limit of one request per minute for every user, and the official-shaped
requests a client sends (httpx, so that header spellings and duplicates are
exactly what the test says).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, metric, mock_requests, running_stack, scrape
from tests.integration.jwt_tokens import ISSUER, JwksServer, SigningKey

SIGNER = SigningKey("review-rsa", "RS256")
TEAM1_KEY = "team1-key"  # the default config's demo key (user alice, group engineering)


def provider_and_quotas(jwks_url: str) -> str:
    return f"""
  jwt_providers:
    - name: dev
      issuer: {ISSUER}
      audiences: [aigw]
      jwks: {{url: "{jwks_url}"}}
      algorithms: [RS256]
quotas:
  rules:
    - name: one-per-user
      subject: user
      requests_per_minute: 1
"""


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.keys = [SIGNER.jwk()]
        yield server


@pytest.fixture(scope="module")
def jwt_stack(tmp_path_factory: pytest.TempPathFactory, jwks: JwksServer) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("jwt-review")
    text = DEFAULT_CONFIG.read_text()
    routes = text.index("\nroutes:\n")
    config = workdir / "gateway.yaml"
    config.write_text(text[:routes] + provider_and_quotas(jwks.url) + text[routes:])
    with running_stack(workdir, config_path=config) as running:
        yield running


def chat(stack: LocalStack, headers: list[tuple[str, str]]) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "who am I?"}]}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers=[("content-type", "application/json"), *headers],
        timeout=30.0,
    )


def who(stack: LocalStack, response: httpx.Response) -> tuple[object, ...]:
    [line] = GatewayLog(stack.gateway_log).for_request(response.headers["x-request-id"])
    return line["auth_method"], line["api_key_id"], line["user_id"], line["group_id"]


def test_a_token_naming_no_user_or_group_cannot_slip_past_the_user_limit(
    jwt_stack: LocalStack,
) -> None:
    # Signed by the provider, but with no `sub` and no group: nobody to count it against.
    nobody = SIGNER.token(email="nobody@example.com")
    before = len(mock_requests(jwt_stack))
    answers = [chat(jwt_stack, [("authorization", f"Bearer {nobody}")]) for _ in range(2)]
    assert [a.status_code for a in answers] == [401, 401], answers[-1].text
    message = answers[0].json()["error"]["message"]
    assert message == "invalid token: names no user or group (claims sub, group, groups)"
    assert nobody not in answers[0].text
    assert len(mock_requests(jwt_stack)) == before


def test_a_token_naming_a_user_is_held_to_that_users_limit(jwt_stack: LocalStack) -> None:
    token = SIGNER.token(sub=f"frank-{time.time_ns()}")
    first, second = (chat(jwt_stack, [("authorization", f"Bearer {token}")]) for _ in range(2))
    assert (first.status_code, second.status_code) == (200, 429), second.text


@pytest.mark.parametrize("spelling", ["bearer {}", "BEARER   {}"])
def test_the_bearer_scheme_is_read_in_any_case_and_spacing(
    jwt_stack: LocalStack, spelling: str
) -> None:
    token = SIGNER.token(sub=f"gina-{time.time_ns()}", group="research")
    response = chat(jwt_stack, [("authorization", spelling.format(token))])
    assert response.status_code == 200, response.text
    assert who(jwt_stack, response)[0] == "jwt"


def test_two_authorization_headers_are_refused_not_guessed_between(
    jwt_stack: LocalStack,
) -> None:
    mine = SIGNER.token(sub=f"hank-{time.time_ns()}", group="research")
    before = len(mock_requests(jwt_stack))
    for pair in ((mine, TEAM1_KEY), (TEAM1_KEY, mine), (mine, mine)):
        headers = [("authorization", f"Bearer {value}") for value in pair]
        response = chat(jwt_stack, headers)
        assert response.status_code == 401, response.text
        assert mine not in response.text and TEAM1_KEY not in response.text
    assert len(mock_requests(jwt_stack)) == before


def test_a_token_in_authorization_wins_over_a_key_in_x_api_key(jwt_stack: LocalStack) -> None:
    token = SIGNER.token(sub=f"iris-{time.time_ns()}", group="research")
    response = chat(jwt_stack, [("authorization", f"Bearer {token}"), ("x-api-key", TEAM1_KEY)])
    assert response.status_code == 200, response.text
    assert who(jwt_stack, response)[:2] == ("jwt", None)


def test_a_group_with_quotes_braces_and_control_characters_is_counted_as_sent(
    jwt_stack: LocalStack,
) -> None:
    group = 'eng}"\n\t{x}\\' + "g" * 2000
    token = SIGNER.token(sub=f"kim-{time.time_ns()}", group=group)
    response = chat(jwt_stack, [("authorization", f"Bearer {token}")])
    assert response.status_code == 200, response.text
    assert who(jwt_stack, response)[3] == group
    # The metrics page still parses, and carries the group as a label value.
    assert metric(scrape(jwt_stack.metrics_url), "tokens_consumed_total", group_id=group) > 0
