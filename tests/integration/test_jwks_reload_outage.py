"""The identity provider's JWKS down, through the real Envoy with the official openai
client: tokens the gateway could check before a config reload are still served after
it, and a token of a key published during the outage gets the 503 clients retry, then
is served once the identity provider answers."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import openai
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, running_stack, wait_for
from tests.integration.jwt_tokens import ISSUER, JwksServer, SigningKey

SIGNER = SigningKey("reload-rsa", "RS256")


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.keys = [SIGNER.jwk()]
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, jwks: JwksServer) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("jwks-reload")
    provider = f"""
  jwt_providers:
    - name: dev
      issuer: {ISSUER}
      audiences: [aigw]
      jwks: {{url: "{jwks.url}", timeout_s: 1, min_refresh_interval_s: 1}}
      algorithms: [RS256]
"""
    text = DEFAULT_CONFIG.read_text()
    routes = text.index("\nroutes:\n")
    config = workdir / "gateway.yaml"
    config.write_text(text[:routes] + provider + text[routes:])
    with running_stack(workdir, config_path=config) as running:
        yield running


def reload(stack: LocalStack) -> None:
    """SIGHUP, and wait until the gateway has reloaded its config."""

    def reloads() -> int:
        return (stack.workdir / "gateway.err").read_text().count("config reloaded")

    before = reloads()
    stack.process("gateway").send_signal(signal.SIGHUP)
    assert wait_for(lambda: reloads() > before, timeout_s=30.0), "the gateway did not reload"


def test_a_token_is_still_served_after_a_reload_while_the_jwks_is_down(
    stack: LocalStack, jwks: JwksServer
) -> None:
    token = SIGNER.token(sub="reload-user")
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=token, max_retries=0)

    def ask() -> None:
        answer = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.status_code == 200
        [line] = GatewayLog(stack.gateway_log).for_request(answer.headers["x-request-id"])
        assert (line["auth_method"], line["user_id"]) == ("jwt", "reload-user")

    ask()
    jwks.status = 503  # the identity provider goes down...
    try:
        reload(stack)  # ...and a Secret update, say, reloads the config meanwhile
        # Before, the reloaded config had no key to check the token with: the client got
        # a 503 jwks_unavailable (openai.InternalServerError) until the IdP was back.
        ask()
        assert token not in (stack.workdir / "gateway.err").read_text()
        assert token not in stack.gateway_log.read_text()
    finally:
        jwks.status = 200


def test_a_key_published_during_the_outage_is_a_503_until_the_jwks_answers(
    stack: LocalStack, jwks: JwksServer
) -> None:
    """The identity provider rotates to a new key while its JWKS cannot be fetched. A 401
    would tell the client its good token is bad (and the SDKs never retry one); the 503
    says try again, and once the JWKS answers the token is served."""
    rotated = SigningKey("rotated-rsa", "RS256")
    token = rotated.token(sub="rotated-user")
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=token, max_retries=0)
    jwks.status = 503
    jwks.keys = [SIGNER.jwk(), rotated.jwk()]
    try:
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.status_code == 503
        assert refused.value.code == "jwks_unavailable"
        assert token not in refused.value.message
    finally:
        jwks.status = 200

    def served() -> bool:
        answer = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        return answer.status_code == 200

    # A refused token asks for a fetch at most once a second (min_refresh_interval_s).
    assert wait_for(_passes(served), timeout_s=15.0), "the new key was never fetched"


def _passes(check: Callable[[], bool]) -> Callable[[], bool]:
    """``check``, False where it raises the 503 of a fetch not due yet."""

    def attempt() -> bool:
        try:
            return check()
        except openai.InternalServerError:
            return False

    return attempt
