"""JWT verification: tokens from real keys, a JWKS served over a real socket, and every refusal.

Keys are minted once per module (RSA 2048 and EC P-256) with ``cryptography``;
tokens are signed with PyJWT, or crafted by hand where PyJWT rightly refuses to
(``alg: none``, HS256 keyed with an RSA public key). The JWKS server is a real
aiohttp app on 127.0.0.1 that counts its hits and can fail or stop, so
rotation and outages go through the verifier's real HTTP path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from extproc.auth.jwt_verifier import JwtIdentity, JwtVerifier
from extproc.config.auth_model import JwtProviderConfig
from extproc.config.loader import ConfigError
from extproc.errors import AuthenticationError, ServiceUnavailableError

ISSUER = "https://idp.example.com"
AUDIENCE = "ai-gateway"
SECRET = "a-shared-secret-of-at-least-32-bytes!"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_NEXT = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def jwk(key: Key, kid: str | None, alg: str | None) -> dict[str, Any]:
    """The public JWK of a private key, as an IdP would publish it."""
    if isinstance(key, rsa.RSAPrivateKey):
        entry = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        entry = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    entry["use"] = "sig"
    if kid is not None:
        entry["kid"] = kid
    if alg is not None:
        entry["alg"] = alg
    return entry


RSA_JWK = jwk(RSA_KEY, "rsa-1", "RS256")
EC_JWK = jwk(EC_KEY, "ec-1", "ES256")
NEXT_JWK = jwk(RSA_KEY_NEXT, "rsa-2", "RS256")


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid payload for ISSUER; an override of None removes the claim."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
    }
    payload.update(overrides)
    return {name: value for name, value in payload.items() if value is not None}


def mint(key: Key | str = RSA_KEY, alg: str = "RS256", kid: str | None = "rsa-1", **kw: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**kw), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def tampered(token: str) -> str:
    """The same signature over a payload whose `sub` was changed."""
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["sub"] = "mallory"
    return f"{header}.{b64(json.dumps(body).encode())}.{signature}"


class FakeClock:
    """Wall time that tests move forward; PyJWT's own exp checks still use real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class JwksServer:
    """A JWKS endpoint on 127.0.0.1: serves `keys`, counts hits, can fail or stop."""

    runner: web.AppRunner | None = None
    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=lambda: [RSA_JWK, EC_JWK])
    status: int = 200
    hits: int = 0
    hit: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        async with self.hit:
            self.hits += 1
            self.hit.notify_all()
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        return web.json_response({"keys": self.keys})

    async def wait_for_hits(self, count: int) -> None:
        async with asyncio.timeout(2), self.hit:
            await self.hit.wait_for(lambda: self.hits >= count)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    server.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await server.runner.setup()
    await web.TCPSite(server.runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{server.runner.addresses[0][1]}/jwks.json"
    yield server
    await server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Factory = Callable[..., Awaitable[JwtVerifier]]


@pytest.fixture
async def make_verifier(clock: FakeClock) -> AsyncIterator[Factory]:
    """Start a verifier for providers given as dicts; close them all afterwards."""
    started: list[JwtVerifier] = []

    async def make(*providers: dict[str, Any], cache_size: int = 100) -> JwtVerifier:
        configs = [JwtProviderConfig.model_validate(p) for p in providers]
        verifier = JwtVerifier(configs, cache_size=cache_size, clock=clock)
        started.append(verifier)
        await verifier.start()
        return verifier

    yield make
    for verifier in started:
        await verifier.close()


def url_provider(server: JwksServer, **overrides: Any) -> dict[str, Any]:
    jwks = {"url": server.url, "min_refresh_interval_s": 10, **overrides.pop("jwks", {})}
    return {
        "name": "idp",
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks": jwks,
        "claims": {"extra": ["org", "email"]},
        **overrides,
    }


def inline_provider(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "inline",
        "issuer": ISSUER,
        "jwks": {"inline": {"keys": [RSA_JWK, EC_JWK]}},
        **overrides,
    }


async def refusal(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token)
    assert caught.value.status == 401
    return caught.value.message


async def unavailable(verifier: JwtVerifier, token: str) -> str | None:
    """The 503's code when no JWKS keys could be fetched to check ``token`` with."""
    with pytest.raises(ServiceUnavailableError) as caught:
        await verifier.verify(token)
    assert caught.value.status == 503
    assert "could not be fetched" in caught.value.message
    return caught.value.code


# --- tokens that verify ---------------------------------------------------------------


async def test_rs256_token_names_the_user_group_and_extra_claims(
    jwks_server: JwksServer, make_verifier: Factory
) -> None:
    verifier = await make_verifier(url_provider(jwks_server))
    exp = int(time.time()) + 300
    token = mint(exp=exp, group="team-a", org="acme", email="alice@acme.test")
    identity = await verifier.verify(token)
    assert identity == JwtIdentity(
        provider="idp",
        user_id="alice",
        group_id="team-a",
        groups=("team-a",),
        claims={"org": "acme", "email": "alice@acme.test"},
        expires_at=float(exp),
    )


async def test_es256_token_with_a_groups_array_keeps_every_string_group(
    jwks_server: JwksServer, make_verifier: Factory
) -> None:
    verifier = await make_verifier(url_provider(jwks_server))
    token = mint(EC_KEY, "ES256", "ec-1", groups=["team-b", 7, "team-c"], org="acme")
    identity = await verifier.verify(token)
    assert (identity.user_id, identity.group_id) == ("alice", "team-b")
    assert identity.groups == ("team-b", "team-c")
    assert identity.claims == {"org": "acme"}


async def test_dotted_paths_walk_nested_claims_and_namespaced_names_match_whole(
    make_verifier: Factory,
) -> None:
    mapping = {
        "user_id": ["preferred_username", "user.id"],
        "group_id": ["realm_access.roles"],
        "extra": ["https://example.com/org", "realm_access"],
    }
    verifier = await make_verifier(inline_provider(claims=mapping))
    token = mint(
        user={"id": 4711},
        realm_access={"roles": ["admin", "dev"]},
        **{"https://example.com/org": "acme"},
    )
    identity = await verifier.verify(token)
    assert identity.user_id == "4711"
    assert identity.groups == ("admin", "dev")
    assert identity.claims == {
        "https://example.com/org": "acme",
        "realm_access": {"roles": ["admin", "dev"]},
    }


async def test_a_jwks_without_kids_tries_each_key_that_fits_the_algorithm(
    make_verifier: Factory,
) -> None:
    keys = [jwk(RSA_KEY_NEXT, None, None), jwk(RSA_KEY, None, None), jwk(EC_KEY, None, None)]
    provider = inline_provider(
        jwks={"inline": {"keys": keys}}, algorithms=["RS256", "PS256", "ES256"]
    )
    verifier = await make_verifier(provider)
    for alg, key in (("RS256", RSA_KEY), ("PS256", RSA_KEY), ("ES256", EC_KEY)):
        assert (await verifier.verify(mint(key, alg, kid=None))).user_id == "alice"


async def test_a_jwks_file_is_read_at_start(tmp_path: Path, make_verifier: Factory) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [RSA_JWK]}))
    verifier = await make_verifier(inline_provider(jwks={"file": str(path)}))
    assert (await verifier.verify(mint())).user_id == "alice"


async def test_leeway_accepts_a_token_that_expired_seconds_ago(make_verifier: Factory) -> None:
    just_expired = mint(exp=int(time.time()) - 10)
    lenient = await make_verifier(inline_provider(leeway_s=30))
    assert (await lenient.verify(just_expired)).user_id == "alice"
    strict = await make_verifier(inline_provider(leeway_s=0))
    assert await refusal(strict, just_expired) == "token expired"


async def test_hs256_provider_verifies_its_own_tokens_and_refuses_rs256(
    make_verifier: Factory,
) -> None:
    provider = {
        "name": "internal",
        "issuer": ISSUER,
        "shared_secret": SECRET,
        "algorithms": ["HS256"],
    }
    verifier = await make_verifier(provider)
    assert (await verifier.verify(mint(SECRET, "HS256", kid=None))).user_id == "alice"
    assert await refusal(verifier, mint()) == "invalid token: algorithm not allowed"


# --- key rotation and outages -------------------------------------------------------------


async def test_a_rotated_key_verifies_without_restart_and_refetches_are_rate_limited(
    jwks_server: JwksServer, make_verifier: Factory, clock: FakeClock
) -> None:
    verifier = await make_verifier(url_provider(jwks_server))
    assert jwks_server.hits == 1
    jwks_server.keys = [RSA_JWK, NEXT_JWK]
    clock.advance(11)  # past min_refresh_interval_s since the start-up fetch
    rotated = mint(RSA_KEY_NEXT, kid="rsa-2")
    assert (await verifier.verify(rotated)).user_id == "alice"
    assert jwks_server.hits == 2
    # Another unknown kid within the interval: refused without asking the IdP again.
    stranger = mint(EC_KEY, "ES256", kid="ec-9")
    assert await refusal(verifier, stranger) == "invalid token: unknown signing key"
    assert jwks_server.hits == 2


async def test_keys_survive_an_outage_of_the_jwks_url(
    jwks_server: JwksServer, make_verifier: Factory, clock: FakeClock
) -> None:
    verifier = await make_verifier(url_provider(jwks_server))
    await jwks_server.stop()  # connection refused from now on
    clock.advance(60)
    unknown = mint(RSA_KEY_NEXT, kid="rsa-2")
    # A key published during the outage cannot be checked yet: a 503, not a 401.
    assert await unavailable(verifier, unknown) == "jwks_unavailable"
    assert (await verifier.verify(mint())).user_id == "alice"


async def test_a_url_down_at_start_refuses_tokens_until_it_answers(
    jwks_server: JwksServer, make_verifier: Factory, clock: FakeClock
) -> None:
    jwks_server.status = 503
    verifier = await make_verifier(url_provider(jwks_server))
    assert await unavailable(verifier, mint()) == "jwks_unavailable"
    jwks_server.status = 200
    clock.advance(11)
    assert (await verifier.verify(mint())).user_id == "alice"


async def test_the_background_refresh_picks_up_added_and_withdrawn_keys(
    jwks_server: JwksServer, make_verifier: Factory
) -> None:
    provider = url_provider(
        jwks_server, jwks={"refresh_interval_s": 0.02, "min_refresh_interval_s": 600}
    )
    verifier = await make_verifier(provider)
    jwks_server.keys = [NEXT_JWK]
    # Fetches are serialised: once the second one after the swap has begun, the
    # first one, which surely saw the new keys, has been applied.
    await jwks_server.wait_for_hits(jwks_server.hits + 2)
    assert (await verifier.verify(mint(RSA_KEY_NEXT, kid="rsa-2"))).user_id == "alice"
    assert await refusal(verifier, mint()) == "invalid token: unknown signing key"


async def test_a_cached_token_stops_working_when_its_key_is_withdrawn(
    jwks_server: JwksServer, make_verifier: Factory
) -> None:
    provider = url_provider(
        jwks_server, jwks={"refresh_interval_s": 0.02, "min_refresh_interval_s": 600}
    )
    verifier = await make_verifier(provider)
    kept, withdrawn = mint(RSA_KEY_NEXT, kid="rsa-2"), mint()
    jwks_server.keys = [RSA_JWK, NEXT_JWK]
    await jwks_server.wait_for_hits(jwks_server.hits + 2)
    for token in (kept, withdrawn):
        assert (await verifier.verify(token)).user_id == "alice"
    # The identity provider withdraws rsa-1 (compromised, say); rsa-2 stays.
    jwks_server.keys = [NEXT_JWK]
    await jwks_server.wait_for_hits(jwks_server.hits + 2)
    assert verifier.cached(withdrawn) is None
    assert await refusal(verifier, withdrawn) == "invalid token: unknown signing key"
    cached = verifier.cached(kept)
    assert cached is not None and cached.user_id == "alice"


# --- refusals ----------------------------------------------------------------------------


def alg_none() -> str:
    return handmade({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims(), lambda _: b"")


def hs256_keyed_with_the_public_key() -> str:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    return handmade(header, claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest())


REFUSALS: dict[str, tuple[Callable[[], str], str]] = {
    "garbage": (lambda: "not a token at all", "invalid token: malformed"),
    "jwt-shaped garbage": (lambda: "eyJhbGciOi.eyJzdWIi.c2ln", "invalid token: malformed"),
    "alg none": (alg_none, "invalid token: algorithm not allowed"),
    "hs256 with public key": (
        hs256_keyed_with_the_public_key,
        "invalid token: algorithm not allowed",
    ),
    "expired": (lambda: mint(exp=int(time.time()) - 120), "token expired"),
    "not yet valid": (lambda: mint(nbf=int(time.time()) + 600), "token not yet valid"),
    "wrong issuer": (lambda: mint(iss="https://evil.example.com"), "invalid token: unknown issuer"),
    "wrong audience": (lambda: mint(aud="someone-else"), "invalid token: wrong audience"),
    "no audience": (lambda: mint(aud=None), 'invalid token: missing claim "aud"'),
    "unknown kid": (lambda: mint(RSA_KEY_NEXT, kid="rsa-2"), "invalid token: unknown signing key"),
    "tampered payload": (lambda: tampered(mint()), "invalid token: bad signature"),
    "other key, known kid": (lambda: mint(RSA_KEY_NEXT), "invalid token: bad signature"),
    "kid of another algorithm": (
        lambda: mint(RSA_KEY, kid="ec-1"),
        "invalid token: algorithm does not match the signing key",
    ),
    "missing required claim": (lambda: mint(exp=None), 'invalid token: missing claim "exp"'),
}


@pytest.mark.parametrize("case", REFUSALS)
async def test_refused_tokens_say_why_without_echoing_the_token(
    case: str, jwks_server: JwksServer, make_verifier: Factory
) -> None:
    make_token, expected = REFUSALS[case]
    verifier = await make_verifier(url_provider(jwks_server))
    token = make_token()
    message = await refusal(verifier, token)
    assert message == expected
    assert not any(len(part) > 3 and part in message for part in token.split("."))
    assert verifier.cached(token) is None


# --- the cache ---------------------------------------------------------------------------


async def test_a_verified_token_is_cached_until_its_exp(
    jwks_server: JwksServer, make_verifier: Factory, clock: FakeClock
) -> None:
    verifier = await make_verifier(url_provider(jwks_server))
    token = mint(exp=int(clock.now) + 60)
    assert verifier.cached(token) is None
    identity = await verifier.verify(token)
    await jwks_server.stop()  # the cache answers without keys or network
    assert verifier.cached(token) is identity
    clock.advance(61)
    assert verifier.cached(token) is None


async def test_the_cache_keeps_the_most_recently_used_tokens(make_verifier: Factory) -> None:
    verifier = await make_verifier(inline_provider(), cache_size=2)
    first, second, third = (mint(sub=name) for name in ("ann", "bob", "cy"))
    for token in (first, second):
        await verifier.verify(token)
    assert verifier.cached(first) is not None  # now the most recent
    await verifier.verify(third)
    assert verifier.cached(second) is None
    assert verifier.cached(first) is not None
    assert verifier.cached(third) is not None


# --- config problems found at start -------------------------------------------------------


@pytest.mark.parametrize(
    ("jwks_file", "problem"),
    [
        (None, "cannot read"),
        ("{not json", "not valid JSON"),
        ('{"keys": []}', "no key usable"),
        ('{"keys": [{"kty": "RSA", "kid": "broken", "n": "AQAB"}]}', "keys[0] (kid 'broken')"),
    ],
)
async def test_a_bad_jwks_file_stops_start_up(
    jwks_file: str | None, problem: str, tmp_path: Path, make_verifier: Factory
) -> None:
    path = tmp_path / "jwks.json"
    if jwks_file is not None:
        path.write_text(jwks_file)
    with pytest.raises(ConfigError) as caught:
        await make_verifier(inline_provider(jwks={"file": str(path)}))
    assert caught.value.problems[0].startswith("auth.jwt_providers[0] (inline): jwks.file")
    assert problem in caught.value.problems[0]


def test_a_short_shared_secret_is_a_config_error() -> None:
    config = JwtProviderConfig.model_validate(
        {"name": "internal", "issuer": ISSUER, "shared_secret": "short", "algorithms": ["HS256"]}
    )
    with pytest.raises(ConfigError) as caught:
        JwtVerifier([config])
    assert caught.value.problems == [
        "auth.jwt_providers[0] (internal): shared_secret must be at least 32 bytes for HS256"
    ]


# --- property ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
headers = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "ES256", "HS256", "PS256", "none"]) | json_values},
    optional={"kid": st.sampled_from(["rsa-1", "ec-1", "unknown"]), "b64": json_values},
)
NOW = int(time.time())
times = st.integers(min_value=NOW - 100, max_value=NOW + 10_000)
# Issuers the verifier knows, and every claim it reads, with values of any JSON type.
payloads = st.fixed_dictionaries(
    {"iss": st.sampled_from([ISSUER, "hmac-issuer"]) | json_values},
    optional={
        name: json_values | st.integers(min_value=-(2**70), max_value=2**70) | times
        for name in ("exp", "nbf", "iat", "aud", "sub", "jti", "uid", "group", "groups", "org")
    },
)


def sign(how: str, data: bytes) -> bytes:
    if how == "hmac":
        return hmac.new(SECRET.encode(), data, hashlib.sha256).digest()
    if how == "rsa":
        return RSA_KEY.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return how.encode()


# Forged tokens mix any header, payload and signature; genuine ones are signed for the
# provider they name, so odd claim values get past the signature check to the claim mapping.
forged = st.builds(
    lambda header, payload, how: handmade(header, payload, lambda data: sign(how, data)),
    headers,
    payloads,
    st.sampled_from(["hmac", "rsa"]) | st.text(max_size=20),
)
genuine = st.builds(
    lambda payload, rsa: handmade(
        {"alg": "RS256", "kid": "rsa-1"} if rsa else {"alg": "HS256"},
        {**payload, "iss": ISSUER if rsa else "hmac-issuer"},
        lambda data: sign("rsa" if rsa else "hmac", data),
    ),
    payloads,
    st.booleans(),
)
jwt_shaped = forged | genuine
segments = st.text(alphabet="ABCDEFabcdef0123456789-_=.", max_size=60)
tokens = st.text() | segments | jwt_shaped


@pytest.fixture(scope="module")
async def fuzz_verifier() -> AsyncIterator[JwtVerifier]:
    mapping = {"user_id": ["sub", "uid"], "extra": ["org", "groups.0"]}
    hmac_provider = {
        "name": "hmac",
        "issuer": "hmac-issuer",
        "shared_secret": SECRET,
        "algorithms": ["HS256"],
        "required_claims": [],
        "claims": mapping,
    }
    providers = (inline_provider(required_claims=[], claims=mapping), hmac_provider)
    verifier = JwtVerifier([JwtProviderConfig.model_validate(p) for p in providers])
    await verifier.start()
    yield verifier
    await verifier.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token=tokens)
async def test_any_text_gets_an_identity_or_an_authentication_error(
    fuzz_verifier: JwtVerifier, token: str
) -> None:
    try:
        identity = await fuzz_verifier.verify(token)
    except AuthenticationError as refused:
        assert refused.message.startswith(("invalid token", "token "))
    else:
        assert isinstance(identity, JwtIdentity)
        assert fuzz_verifier.cached(token) in (identity, None)  # None: no exp, or past it
