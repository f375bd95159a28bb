"""JWT review: a key replaced under its kid by one of another type, and critical headers.

The keys, tokens, JWKS server and verifier fixtures of test_jwt_verifier.
"""

from __future__ import annotations

import jwt
import pytest

from tests.unit import test_jwt_verifier as jwt_tests
from tests.unit.test_jwt_verifier import (
    EC_KEY,
    RSA_JWK,
    RSA_KEY,
    Factory,
    FakeClock,
    JwksServer,
    claims,
    inline_provider,
    jwk,
    mint,
    refusal,
    url_provider,
)

clock = jwt_tests.clock
jwks_server = jwt_tests.jwks_server
make_verifier = jwt_tests.make_verifier


# --- a kid whose key changes type --------------------------------------------------------


async def test_a_kid_republished_for_another_algorithm_verifies_without_waiting_for_the_refresh(
    jwks_server: JwksServer, make_verifier: Factory, clock: FakeClock
) -> None:
    # An identity provider that keeps its kid ("1", "default") and moves from RSA to EC
    # publishes the EC key under the old kid: its new ES256 tokens find an RS256 key
    # there. That is worth one refetch (rate limited, as for an unknown kid), not a 401
    # for every client until the background refresh, minutes later.
    jwks_server.keys = [RSA_JWK]
    verifier = await make_verifier(url_provider(jwks_server))
    assert jwks_server.hits == 1
    jwks_server.keys = [jwk(EC_KEY, "rsa-1", "ES256")]
    clock.advance(11)  # past min_refresh_interval_s since the start-up fetch
    assert (await verifier.verify(mint(EC_KEY, "ES256", "rsa-1"))).user_id == "alice"
    assert jwks_server.hits == 2
    # The old RS256 tokens are refused now, and within the interval the IdP is not asked
    # again, however many of them arrive.
    for _ in range(3):
        message = await refusal(verifier, mint(RSA_KEY, "RS256", "rsa-1"))
        assert message == "invalid token: algorithm does not match the signing key"
    assert jwks_server.hits == 2


# --- critical header parameters ----------------------------------------------------------


def critical() -> str:
    """A token the identity provider's own key signed, with a `crit` header."""
    headers = {"kid": "rsa-1", "crit": ["x-policy"], "x-policy": "require-mfa"}
    return jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers=headers)


async def test_a_token_with_a_critical_header_is_refused_saying_so(
    make_verifier: Factory,
) -> None:
    # RFC 7515 §4.1.11: a JWS naming a critical extension the recipient does not
    # understand is invalid. The gateway understands none, so the refusal says that,
    # not "malformed" (the token is well formed and genuinely signed).
    verifier = await make_verifier(inline_provider())
    token = critical()
    assert await refusal(verifier, token) == "invalid token: unsupported critical header"
    assert verifier.cached(token) is None


async def test_a_critical_header_is_refused_whatever_pyjwt_checks(
    make_verifier: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PyJWT before 2.12 ignored `crit` altogether (CVE-2026-32597), and the gateway
    # allowed those releases: the refusal must not hang on the library's version.
    monkeypatch.setattr(jwt.api_jws.PyJWS, "_validate_crit", lambda self, headers: None)
    verifier = await make_verifier(inline_provider())
    assert await refusal(verifier, critical()) == "invalid token: unsupported critical header"
