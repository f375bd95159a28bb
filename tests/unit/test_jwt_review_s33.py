"""JWT authentication as an operator runs it against a real identity provider.

The keys, tokens, JWKS server and verifier fixtures of test_jwt_verifier; requests
go through ``extproc.testing``'s processor, as Envoy would send them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from extproc.auth.jwt_verifier import JwtVerifier
from extproc.config import parse_config
from extproc.config.auth_model import JwtProviderConfig
from extproc.config.loader import ConfigError
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit import test_jwt_verifier as jwt_tests
from tests.unit.test_jwt_verifier import (
    ISSUER,
    RSA_JWK,
    RSA_KEY,
    RSA_KEY_NEXT,
    Factory,
    inline_provider,
    jwk,
    mint,
    refusal,
    unavailable,
)

clock = jwt_tests.clock
make_verifier = jwt_tests.make_verifier

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


# --- keys published without a kid ------------------------------------------------------


async def test_a_token_naming_a_kid_verifies_against_a_key_published_without_one(
    make_verifier: Factory,
) -> None:
    # A JWKS written from the IdP's PEM (or an IdP that leaves `kid` out of its JWKS)
    # has no kid to match, while the IdP's tokens still name one: the kid-less key is
    # the only candidate there is, not a reason to refuse every token.
    verifier = await make_verifier(
        inline_provider(jwks={"inline": {"keys": [jwk(RSA_KEY, None, None)]}})
    )
    assert (await verifier.verify(mint(kid="abc123"))).user_id == "alice"
    # Still a signature check: another key's token is refused.
    assert await refusal(verifier, mint(RSA_KEY_NEXT, kid="abc123")) == (
        "invalid token: bad signature"
    )


async def test_a_kid_that_the_jwks_lists_gets_only_its_own_key(make_verifier: Factory) -> None:
    # The fallback is for kids the JWKS does not name; a listed kid keeps its own key.
    keys = [jwk(RSA_KEY, None, None), jwk(RSA_KEY_NEXT, "next", "RS256")]
    verifier = await make_verifier(inline_provider(jwks={"inline": {"keys": keys}}))
    assert await refusal(verifier, mint(RSA_KEY, kid="next")) == "invalid token: bad signature"
    assert (await verifier.verify(mint(RSA_KEY_NEXT, kid="next"))).user_id == "alice"


# --- JWKS over HTTPS -------------------------------------------------------------------


def url_config(url: str, **jwks: Any) -> JwtProviderConfig:
    return JwtProviderConfig.model_validate(
        {"name": "idp", "issuer": ISSUER, "jwks": {"url": url, **jwks}}
    )


@pytest.mark.parametrize(
    "url", ["http://idp.example.com/jwks.json", "http://keycloak:8080/realms/x/certs"]
)
def test_a_plain_http_jwks_url_is_refused_unless_allowed(url: str) -> None:
    # Whoever sits on the network path of a plain-http fetch can publish their own key
    # and mint tokens for any user and group: refused unless the operator says so.
    with pytest.raises(ConfigError) as caught:
        JwtVerifier([url_config(url)])
    [problem] = caught.value.problems
    assert problem.startswith("auth.jwt_providers[0] (idp): jwks.url")
    assert "https" in problem and "allow_http" in problem
    JwtVerifier([url_config(url, allow_http=True)])


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]:8080/jwks.json",
    ],
)
def test_https_and_loopback_jwks_urls_need_no_permission(url: str) -> None:
    JwtVerifier([url_config(url)])


def test_a_plain_http_jwks_url_stops_check_config() -> None:
    # `extproc check-config` builds the runtime too: the operator hears it before serving.
    provider = (
        "  jwt_providers:\n    - name: idp\n      issuer: https://idp.example.com\n"
        "      jwks: {url: 'http://idp.example.com/jwks.json'}\n"
    )
    text = DEFAULT_CONFIG.read_text().replace("\nauth:\n", "\nauth:\n" + provider, 1)
    config = parse_config(text, "gateway.yaml", {})
    with pytest.raises(ConfigError) as caught:
        Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    assert "allow_http" in str(caught.value)


# --- the Authorization header as clients send it --------------------------------------


@pytest.fixture
async def jwt_processor() -> AsyncIterator[Processor]:
    """The default config's routes with one JWT provider (an inline JWKS)."""
    provider = (
        f"  jwt_providers:\n    - name: idp\n      issuer: {ISSUER}\n"
        f"      jwks: {{inline: {json.dumps({'keys': [RSA_JWK]})}}}\n"
    )
    text = DEFAULT_CONFIG.read_text().replace("\nauth:\n", "\nauth:\n" + provider, 1)
    runtime = Runtime(
        parse_config(text, "gateway.yaml", {}), Services(GatewayMetrics(), AccessLog(stdout=False))
    )
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


@pytest.mark.parametrize("separator", [" ", "   ", "\t", " \t "])
async def test_a_bearer_token_after_any_whitespace_is_read_as_the_token(
    separator: str, jwt_processor: Processor
) -> None:
    # HTTP whitespace is a space or a tab; a client that writes `Bearer<TAB><token>` was
    # told "invalid API key", about a JWT it never meant as a key.
    headers = {"authorization": f"bearer{separator}{mint()}"}
    answers = await run_stream(
        jwt_processor,
        [request_headers("/v1/chat/completions", headers=headers), request_body(BODY)],
    )
    assert not answers[-1].HasField("immediate_response")


# --- JWKS URLs the fetch could never use ------------------------------------------------


@pytest.mark.parametrize(
    "url", ["https://idp..example.com/jwks.json", f"https://{'a' * 64}.example.com/jwks.json"]
)
def test_a_jwks_url_whose_host_is_no_dns_name_is_a_config_error(url: str) -> None:
    # An empty label or one over 63 characters: the first fetch raised UnicodeError out
    # of `extproc serve` (a traceback at start), where the config should have named it.
    provider = (
        "  jwt_providers:\n    - name: idp\n      issuer: https://idp.example.com\n"
        f"      jwks: {{url: '{url}'}}\n"
    )
    text = DEFAULT_CONFIG.read_text().replace("\nauth:\n", "\nauth:\n" + provider, 1)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gateway.yaml", {})
    assert "jwks" in str(caught.value) and "url" in str(caught.value)


@pytest.fixture
async def redirecting_idp() -> AsyncIterator[str]:
    """A JWKS URL on this host that redirects to a plain-http URL on another address."""

    async def keys(_: web.Request) -> web.Response:
        return web.json_response({"keys": [RSA_JWK]})

    async def moved(request: web.Request) -> web.Response:
        # 0.0.0.0 reaches this host, but is no loopback address: "another host" to the
        # gateway, as a plain-http mirror of an https JWKS would be.
        raise web.HTTPFound(f"http://0.0.0.0:{request.url.port}/jwks.json")

    app = web.Application()
    app.router.add_get("/jwks.json", keys)
    app.router.add_get("/moved", moved)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/moved"
    await runner.cleanup()


async def test_a_jwks_redirected_to_plain_http_is_not_trusted(
    redirecting_idp: str, make_verifier: Factory
) -> None:
    # An https JWKS URL redirected to http would be fetched over plain http after all.
    provider = {"name": "idp", "issuer": ISSUER, "jwks": {"url": redirecting_idp}}
    verifier = await make_verifier(provider)
    assert await unavailable(verifier, mint()) == "jwks_unavailable"
    allowed = {**provider, "jwks": {"url": redirecting_idp, "allow_http": True}}
    verifier = await make_verifier(allowed)
    assert (await verifier.verify(mint())).user_id == "alice"
