"""How soon a withdrawn credential stops working, with two gateway workers behind the real Envoy.

An operator revokes a key created at run time with `extproc keys revoke`: the
management API runs in the first worker, yet the client's very next requests
are refused by both workers, as are a disabled key's until it is enabled again; an
expired key renewed (to a date, or with `--no-expiry` to none) works again on both at
once. An identity provider that withdraws every signing
key (its JWKS now lists none) stops every token it signed, on every worker,
from their next JWKS refresh on.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import (
    mock_requests,
    running_stack,
    usage_rows,
    wait_for,
    worker_streams,
)
from tests.integration.forked import run_extproc_text
from tests.integration.jwt_tokens import ISSUER, JwksServer, SigningKey

ADMIN_TOKEN = "auth-freshness-admin-token"
SIGNING_KEY = SigningKey("rsa-1", "RS256")
# Each worker gets every other stream (round robin): this many requests reach both twice.
ROUND = 4


def jwt_provider(jwks_url: str) -> str:
    # A fast background refresh, so the test sees the identity provider's change soon.
    return f"""
  jwt_providers:
    - name: dev
      issuer: {ISSUER}
      audiences: [aigw]
      jwks: {{url: "{jwks_url}", refresh_interval_s: 0.5, min_refresh_interval_s: 1}}
      algorithms: [RS256]
"""


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.keys = [SIGNING_KEY.jwk()]
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, jwks: JwksServer) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("auth-freshness")
    text = DEFAULT_CONFIG.read_text().replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", ADMIN_TOKEN)
    routes = text.index("\nroutes:\n")
    config = workdir / "gateway.yaml"
    config.write_text(text[:routes] + jwt_provider(jwks.url) + text[routes:])
    with running_stack(workdir, config_path=config, workers=2) as running:
        yield running


def keys_cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    """`extproc keys ...` as an operator runs it."""
    argv = [sys.executable, "-m", "extproc", "keys", *args, "--config", str(stack.config_path)]
    env = {**stack.env, "AIGW_ADMIN_TOKEN": ADMIN_TOKEN}
    return run_extproc_text(argv, env)


def chat(stack: LocalStack, credential: str) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "still me?"}]}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"content-type": "application/json", "authorization": f"Bearer {credential}"},
        timeout=30.0,
    )


def round_of_requests(stack: LocalStack, credential: str) -> list[httpx.Response]:
    """ROUND requests with one credential; both workers must have served some of them."""
    before = worker_streams(stack)
    responses = [chat(stack, credential) for _ in range(ROUND)]
    after = worker_streams(stack)
    served = {endpoint: after[endpoint] - before.get(endpoint, 0) for endpoint in after}
    assert len(served) == 2 and all(served.values()), served
    return responses


def test_a_revoked_key_is_refused_at_once_by_every_worker(stack: LocalStack) -> None:
    created = keys_cli(stack, "create", "--id", "short-lived", "--user", "carol")
    assert created.returncode == 0, created.stderr
    [secret] = [line.removeprefix("key: ") for line in created.stdout.splitlines()
                if line.startswith("key: ")]  # fmt: skip
    # Both workers have now looked the key up and remember it.
    for response in round_of_requests(stack, secret):
        assert response.status_code == 200, response.text
    reached = len(mock_requests(stack))

    revoked = keys_cli(stack, "revoke", "--id", "short-lived")
    assert revoked.returncode == 0, revoked.stderr
    assert "refused at once by every gateway process" in revoked.stdout

    for response in round_of_requests(stack, secret):
        assert response.status_code == 401, response.text
        assert response.json()["error"]["message"] == "invalid API key"
    assert len(mock_requests(stack)) == reached, "a revoked key reached the provider"


def test_a_revoked_keys_id_is_not_given_to_a_new_key(stack: LocalStack) -> None:
    created = keys_cli(stack, "create", "--id", "retired-bot", "--user", "carol")
    assert created.returncode == 0, created.stderr
    assert keys_cli(stack, "revoke", "--id", "retired-bot").returncode == 0

    again = keys_cli(stack, "create", "--id", "retired-bot", "--user", "dan")

    # Before: created, and dan's requests counted in every report, metric and quota as
    # the revoked key's, which carol had used.
    assert (again.returncode, again.stdout) == (2, "")
    assert "API key id 'retired-bot' belonged to a key revoked at" in again.stderr
    assert "choose another id" in again.stderr
    listed = keys_cli(stack, "list", "--format", "json")
    assert "retired-bot" not in listed.stdout


def test_a_rotated_key_keeps_its_id_and_its_old_secret_stops_on_every_worker(
    stack: LocalStack,
) -> None:
    created = keys_cli(stack, "create", "--id", "rotating-bot", "--user", "carol")
    assert created.returncode == 0, created.stderr
    [old] = [line.removeprefix("key: ") for line in created.stdout.splitlines()
             if line.startswith("key: ")]  # fmt: skip
    for response in round_of_requests(stack, old):  # both workers remember the old secret
        assert response.status_code == 200, response.text

    rotated = keys_cli(stack, "rotate", "--id", "rotating-bot")

    assert rotated.returncode == 0, rotated.stderr
    assert "the old secret is refused at once" in rotated.stdout
    [new] = [line.removeprefix("key: ") for line in rotated.stdout.splitlines()
             if line.startswith("key: ")]  # fmt: skip
    for response in round_of_requests(stack, old):
        assert response.status_code == 401, response.text
    for response in round_of_requests(stack, new):
        assert response.status_code == 200, response.text

    # Both secrets' requests are billed to the one key: the old secret's and the new's.
    def billed() -> int | None:
        row = usage_rows(stack, "api_key").get("rotating-bot")
        return row["requests"] if row and row["requests"] == 2 * ROUND else None

    assert wait_for(billed) == 2 * ROUND


def test_an_expired_key_renewed_works_again_at_once_on_every_worker(stack: LocalStack) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    created = keys_cli(stack, "create", "--id", "renewed-bot", "--expires", expires.isoformat())
    assert created.returncode == 0, created.stderr
    [secret] = [line.removeprefix("key: ") for line in created.stdout.splitlines()
                if line.startswith("key: ")]  # fmt: skip
    for response in round_of_requests(stack, secret):  # both workers remember the key
        assert response.status_code == 200, response.text

    # Waited out, not asserted: the key's expiry passes, and both workers refuse it from
    # what they remember (for 30 s more without a notice).
    def all_expired() -> list[httpx.Response] | None:
        responses = round_of_requests(stack, secret)
        return responses if all(r.status_code == 401 for r in responses) else None

    expired = wait_for(all_expired, timeout_s=30.0)
    assert expired, "the key never expired"
    assert {r.json()["error"]["message"] for r in expired} == {"API key 'renewed-bot' has expired"}

    # Some years ahead, within the listing's --expiring-within 3650d: a fixed date would
    # pass one day, and the renewal to it be refused.
    renewed_until = datetime(datetime.now(UTC).year + 4, 1, 1, tzinfo=UTC)
    renewed = keys_cli(
        stack, "renew", "--id", "renewed-bot", "--expires", renewed_until.isoformat()
    )  # fmt: skip

    # Before: no way to renew it; a new key under another id split its usage in two.
    assert renewed.returncode == 0, renewed.stderr
    assert "the key keeps its secret" in renewed.stdout
    for response in round_of_requests(stack, secret):
        assert response.status_code == 200, response.text
    listed = keys_cli(stack, "list", "--status", "active", "--expiring-within", "3650d", "--json")
    [row] = [row for row in orjson.loads(listed.stdout) if row["id"] == "renewed-bot"]
    assert row["expires_at"] == renewed_until.timestamp()


def test_an_expired_key_renewed_with_no_expiry_works_on_every_worker_for_good(
    stack: LocalStack,
) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    created = keys_cli(stack, "create", "--id", "kept-bot", "--expires", expires.isoformat())
    assert created.returncode == 0, created.stderr
    [secret] = [line.removeprefix("key: ") for line in created.stdout.splitlines()
                if line.startswith("key: ")]  # fmt: skip

    # Waited out, not asserted: both workers come to refuse it from what they remember.
    def all_expired() -> list[httpx.Response] | None:
        responses = round_of_requests(stack, secret)
        return responses if all(r.status_code == 401 for r in responses) else None

    assert wait_for(all_expired, timeout_s=30.0), "the key never expired"

    both = keys_cli(
        stack, "renew", "--id", "kept-bot", "--no-expiry", "--expires", "2030-01-01T00:00:00Z"
    )
    assert (both.returncode, both.stdout) == (2, "")
    assert "not allowed with argument" in both.stderr
    renewed = keys_cli(stack, "renew", "--id", "kept-bot", "--no-expiry", "--json")

    # Before: no way to remove an expiry; the key had to be renewed again and again.
    assert renewed.returncode == 0, renewed.stderr
    assert orjson.loads(renewed.stdout)["info"]["expires_at"] is None
    for response in round_of_requests(stack, secret):
        assert response.status_code == 200, response.text
    listed = keys_cli(stack, "list", "--source", "store", "--json")
    [row] = [row for row in orjson.loads(listed.stdout) if row["id"] == "kept-bot"]
    assert row["expires_at"] is None


def test_a_disabled_key_is_refused_by_every_worker_until_it_is_enabled(stack: LocalStack) -> None:
    created = keys_cli(stack, "create", "--id", "paused-bot", "--user", "carol")
    assert created.returncode == 0, created.stderr
    [secret] = [line.removeprefix("key: ") for line in created.stdout.splitlines()
                if line.startswith("key: ")]  # fmt: skip
    for response in round_of_requests(stack, secret):  # both workers remember the key
        assert response.status_code == 200, response.text
    reached = len(mock_requests(stack))

    disabled = keys_cli(stack, "disable", "--id", "paused-bot")

    # Before: no such command; only a revoke, which retired the id for good.
    assert disabled.returncode == 0, disabled.stderr
    for response in round_of_requests(stack, secret):
        assert response.status_code == 401, response.text
        assert response.json()["error"]["message"] == "API key 'paused-bot' is disabled"
    assert len(mock_requests(stack)) == reached, "a disabled key reached the provider"
    listed = keys_cli(stack, "list", "--status", "disabled", "--json")
    assert [row["id"] for row in orjson.loads(listed.stdout)] == ["paused-bot"]

    enabled = keys_cli(stack, "enable", "--id", "paused-bot")
    assert enabled.returncode == 0, enabled.stderr
    for response in round_of_requests(stack, secret):
        assert response.status_code == 200, response.text


def test_a_jwks_that_withdraws_every_key_stops_every_token(
    stack: LocalStack, jwks: JwksServer
) -> None:
    token = SIGNING_KEY.token(sub="dana")
    # Verified once by each worker: from now on each answers it from its cache.
    for response in round_of_requests(stack, token):
        assert response.status_code == 200, response.text

    jwks.keys = []  # the identity provider withdraws its only key: no token is valid now
    try:

        def all_refused() -> list[httpx.Response] | None:
            responses = round_of_requests(stack, token)
            return responses if all(r.status_code == 401 for r in responses) else None

        refused = wait_for(all_refused, timeout_s=20.0)
        assert refused, "a token signed by a withdrawn key still works"
        for response in refused:
            message = response.json()["error"]["message"]
            assert message == "invalid token: unknown signing key", message
    finally:
        jwks.keys = [SIGNING_KEY.jwk()]
