"""Several JWKS URLs are fetched at start together: an identity provider slow to answer
holds the start (or a reload) for one fetch's timeout_s, not one for each provider.

Entra ID's multi-tenant apps take a provider per tenant, Google two spellings of one
issuer (docs/authentication.md): with every fetch waited for in turn, ten tenants
behind a slow endpoint held a start for ten timeouts. The server here answers only
once both fetches are in flight, so fetches made one after the other time out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from extproc.auth.jwt_verifier import JwtVerifier
from extproc.config.auth_model import JwtProviderConfig
from tests.unit.test_jwt_verifier import EC_JWK, EC_KEY, RSA_JWK, mint

ISSUERS = ("https://login.example.com/tenant-a/v2.0", "https://login.example.com/tenant-b/v2.0")


@pytest.fixture
async def jwks_url() -> AsyncIterator[str]:
    arrived = 0
    both = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal arrived
        arrived += 1
        if arrived >= len(ISSUERS):
            both.set()
        await both.wait()
        return web.json_response({"keys": [RSA_JWK, EC_JWK]})

    app = web.Application()
    app.router.add_get("/{tenant}/keys", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_every_tenants_keys_are_fetched_when_the_idp_answers_them_together(
    jwks_url: str,
) -> None:
    providers = [
        JwtProviderConfig.model_validate(
            {
                "name": f"tenant-{index}",
                "issuer": issuer,
                "jwks": {"url": f"{jwks_url}/{index}/keys", "timeout_s": 1},
            }
        )
        for index, issuer in enumerate(ISSUERS)
    ]
    verifier = JwtVerifier(providers)
    try:
        await verifier.start()
        for issuer in ISSUERS:
            identity = await verifier.verify(mint(EC_KEY, "ES256", "ec-1", iss=issuer, aud=None))
            assert identity.user_id == "alice"
    finally:
        await verifier.close()
