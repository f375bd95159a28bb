"""Which JWKS answers change what a JWT provider trusts; how long a failed fetch is forgiven.

An identity provider's JWKS document is its word, even when it lists no key:
the keys it no longer lists stop verifying at once. A fetch that fails (the URL
refuses connections, answers 503, sends something that is not JSON or not a
JWKS, or only broken entries) says nothing about the keys: the last good ones
keep verifying, for `jwks.max_stale_s` after the last good fetch.

Real RSA/EC keys and PyJWT tokens (the helpers of test_jwt_verifier), a JWKS
served by a real aiohttp server on 127.0.0.1, and an injected clock for time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from extproc.auth.jwt_verifier import JwtVerifier
from extproc.config.auth_model import JwtProviderConfig
from extproc.config.loader import ConfigError
from extproc.errors import AuthenticationError, ServiceUnavailableError
from tests.unit import test_jwt_verifier as jwt_tests
from tests.unit.test_jwt_verifier import (
    EC_JWK,
    NEXT_JWK,
    RSA_JWK,
    RSA_KEY_NEXT,
    Factory,
    FakeClock,
    JwksServer,
    jwk,
    mint,
    refusal,
    unavailable,
    url_provider,
)

# The verifier fixtures of the JWT tests, shared rather than copied.
clock = jwt_tests.clock
make_verifier = jwt_tests.make_verifier

MAX_STALE_S = 600.0


@dataclass
class IdentityProvider(JwksServer):
    """The JWT tests' JWKS server, which can also answer with any bytes at all."""

    body: bytes | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self.body is None:
            return await super().handle(request)
        async with self.hit:
            self.hits += 1
            self.hit.notify_all()
        return web.Response(body=self.body, content_type="application/json")


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    server = IdentityProvider(keys=[RSA_JWK])
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    server.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await server.runner.setup()
    await web.TCPSite(server.runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{server.runner.addresses[0][1]}/jwks.json"
    yield server
    await server.stop()


def provider(idp: IdentityProvider, **jwks: Any) -> dict[str, Any]:
    # Refetch on an unknown kid at most every 10 s; the background refresh stays out of the way.
    settings = {"refresh_interval_s": 300, "max_stale_s": MAX_STALE_S, **jwks}
    return url_provider(idp, jwks=settings)


async def refetch(verifier: JwtVerifier, idp: IdentityProvider, clock: FakeClock) -> None:
    """Make the verifier fetch the JWKS again now: a token with a kid it has never seen."""
    clock.advance(11)  # past min_refresh_interval_s
    hits = idp.hits
    stranger = mint(RSA_KEY_NEXT, kid="never-published")
    # Refused either way: a 401 when the fetch answered, a 503 when it failed.
    with pytest.raises((AuthenticationError, ServiceUnavailableError)):
        await verifier.verify(stranger)
    assert idp.hits == hits + 1


# --- the identity provider withdraws keys: its word counts at once ----------------------


async def test_a_jwks_with_an_empty_keys_array_stops_every_token(
    idp: IdentityProvider, clock: FakeClock, make_verifier: Factory
) -> None:
    verifier = await make_verifier(provider(idp))
    token = mint()
    assert (await verifier.verify(token)).user_id == "alice"
    assert verifier.cached(token) is not None

    idp.keys = []  # the IdP withdraws its only key (compromised, say)
    await refetch(verifier, idp, clock)

    assert verifier.cached(token) is None
    assert await refusal(verifier, token) == "invalid token: unknown signing key"
    assert await refusal(verifier, mint()) == "invalid token: unknown signing key"


async def test_the_background_refresh_applies_an_empty_jwks_too(
    idp: IdentityProvider, make_verifier: Factory
) -> None:
    config = provider(idp, refresh_interval_s=0.02, max_stale_s=0.02, min_refresh_interval_s=600)
    verifier = await make_verifier(config)
    token = mint()
    assert (await verifier.verify(token)).user_id == "alice"
    idp.keys = []
    # Fetches are serialised: once the second one after the change has begun, the
    # first, which surely saw the empty set, has been applied.
    await idp.wait_for_hits(idp.hits + 2)
    assert await refusal(verifier, token) == "invalid token: unknown signing key"


async def test_a_jwks_with_only_keys_for_other_algorithms_is_an_answer_too(
    idp: IdentityProvider, clock: FakeClock, make_verifier: Factory
) -> None:
    verifier = await make_verifier({**provider(idp), "algorithms": ["RS256"]})
    token = mint()
    assert (await verifier.verify(token)).user_id == "alice"
    idp.keys = [EC_JWK]  # the IdP now signs with ES256 only, which this provider does not accept
    await refetch(verifier, idp, clock)
    assert await refusal(verifier, token) == "invalid token: unknown signing key"


async def test_keys_published_again_verify_again(
    idp: IdentityProvider, clock: FakeClock, make_verifier: Factory
) -> None:
    verifier = await make_verifier(provider(idp))
    idp.keys = []
    await refetch(verifier, idp, clock)
    assert await refusal(verifier, mint()) == "invalid token: unknown signing key"
    idp.keys = [RSA_JWK]
    clock.advance(11)
    assert (await verifier.verify(mint())).user_id == "alice"


# --- the fetch fails: the last good keys stay, for max_stale_s ---------------------------


FAILURES = {
    "connection refused": None,
    "HTTP 503": b"",
    "not JSON": b"<html>maintenance</html>",
    "not a JWKS": b'{"error": "temporarily unavailable"}',
    "keys is not an array": b'{"keys": {}}',
    "only broken entries": b'{"keys": [{"kty": "RSA", "kid": "rsa-1", "n": "AQAB", "e": 7}]}',
}


async def fail(idp: IdentityProvider, failure: str) -> None:
    if failure == "connection refused":
        await idp.stop()
    elif failure == "HTTP 503":
        idp.status = 503
    else:
        idp.body = FAILURES[failure]


@pytest.mark.parametrize("failure", FAILURES)
async def test_a_failed_fetch_keeps_the_last_good_keys_for_max_stale_s(
    failure: str, idp: IdentityProvider, clock: FakeClock, make_verifier: Factory
) -> None:
    verifier = await make_verifier(provider(idp))
    cached = mint()
    assert (await verifier.verify(cached)).user_id == "alice"
    await fail(idp, failure)

    # Refetches fail; almost max_stale_s after the last good fetch the keys still verify.
    clock.advance(MAX_STALE_S - 60)
    # A key the identity provider may have published during the outage cannot be
    # checked: a 503 the client retries, not a 401 that tells it its token is bad.
    assert await unavailable(verifier, mint(RSA_KEY_NEXT, kid="rsa-2")) == "jwks_unavailable"
    assert verifier.cached(cached) is not None
    assert (await verifier.verify(mint(sub="bob"))).user_id == "bob"

    # Past it they are no longer trusted: neither cached nor fresh tokens pass.
    clock.advance(61)
    assert verifier.cached(cached) is None
    # Not a 401: the token may be fine, the gateway cannot check it.
    assert await unavailable(verifier, cached) == "jwks_unavailable"


async def test_a_key_published_during_an_outage_verifies_once_the_idp_answers(
    idp: IdentityProvider, clock: FakeClock, make_verifier: Factory
) -> None:
    """The identity provider rotated while out of reach: its new tokens get a 503 (not a
    401 that would make a client drop a good token), then verify once a fetch succeeds.
    A kid that fetch does not list is a 401 again: the identity provider said so."""
    verifier = await make_verifier(provider(idp))
    assert (await verifier.verify(mint())).user_id == "alice"
    idp.status = 503
    idp.keys = [RSA_JWK, NEXT_JWK]
    clock.advance(11)
    rotated = mint(RSA_KEY_NEXT, kid="rsa-2")
    assert await unavailable(verifier, rotated) == "jwks_unavailable"
    assert (await verifier.verify(mint(sub="bob"))).user_id == "bob", "the known key verifies"
    idp.status = 200
    clock.advance(11)
    assert (await verifier.verify(rotated)).user_id == "alice"
    stranger = mint(RSA_KEY_NEXT, kid="never-published")
    clock.advance(11)
    assert await refusal(verifier, stranger) == "invalid token: unknown signing key"


async def test_a_key_replaced_under_its_kid_during_an_outage_verifies_once_the_idp_answers(
    idp: IdentityProvider, clock: FakeClock, make_verifier: Factory
) -> None:
    """An identity provider that keeps its kid ("1", "default") and replaces the key
    behind it while out of reach: a token that fails the old key cannot be told from a
    forgery until a fetch succeeds, so it gets the 503 a client retries."""
    verifier = await make_verifier(provider(idp))
    assert (await verifier.verify(mint())).user_id == "alice"
    idp.status = 503
    idp.keys = [jwk(RSA_KEY_NEXT, "rsa-1", "RS256")]
    clock.advance(11)
    rotated = mint(RSA_KEY_NEXT)  # kid rsa-1, signed by the key behind it now
    assert await unavailable(verifier, rotated) == "jwks_unavailable"
    idp.status = 200
    clock.advance(11)
    assert (await verifier.verify(rotated)).user_id == "alice"
    clock.advance(11)
    assert await refusal(verifier, mint()) == "invalid token: bad signature", "the old key"


async def test_a_good_fetch_after_an_outage_restarts_the_bound(
    idp: IdentityProvider, clock: FakeClock, make_verifier: Factory
) -> None:
    verifier = await make_verifier(provider(idp))
    idp.status = 503
    clock.advance(MAX_STALE_S + 1)
    assert await unavailable(verifier, mint()) == "jwks_unavailable"
    idp.status = 200  # the IdP is back: the next token refetches and verifies
    clock.advance(11)
    assert (await verifier.verify(mint())).user_id == "alice"
    idp.status = 503
    clock.advance(MAX_STALE_S - 1)
    assert (await verifier.verify(mint(sub="carol"))).user_id == "carol"


def test_max_stale_s_below_the_refresh_interval_is_a_config_error() -> None:
    config = JwtProviderConfig.model_validate(
        url_provider(
            JwksServer(url="https://idp.example.com/jwks.json"),
            jwks={"refresh_interval_s": 300, "max_stale_s": 60},
        )
    )
    with pytest.raises(ConfigError) as caught:
        JwtVerifier([config])
    assert "jwks.max_stale_s must be at least jwks.refresh_interval_s" in str(caught.value)


async def test_a_failed_fetch_names_the_jwks_url_without_its_secrets(
    idp: IdentityProvider,
    clock: FakeClock,
    make_verifier: Factory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An IdP's JWKS URL may carry a password or a token: the warnings name its host and
    path, never those."""
    secret_url = idp.url.replace("http://", "http://reader:Pa55w0rd@") + "?access_token=s3cr3t"
    verifier = await make_verifier(provider(idp, url=secret_url))
    idp.status = 503
    await refetch(verifier, idp, clock)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "JWKS fetch failed for provider idp from http://127.0.0.1:" in logged
    assert "/jwks.json" in logged
    assert "Pa55w0rd" not in logged and "s3cr3t" not in logged and "reader" not in logged
