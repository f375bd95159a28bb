"""A config reload while the identity provider is out of reach: the JWKS keys the
replaced config trusted keep verifying tokens, for no longer than they would have there.

The real aiohttp JWKS server of test_jwt_verifier, the verifier and, for what a client
sees, the processor with real protobuf messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from extproc.auth.jwt_verifier import JwtVerifier
from extproc.config import parse_config
from extproc.config.auth_model import JwtProviderConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit import test_jwt_verifier as jwt_tests
from tests.unit.conftest import MemoryLog
from tests.unit.test_jwt_verifier import (
    EC_KEY,
    ISSUER,
    FakeClock,
    JwksServer,
    mint,
    unavailable,
    url_provider,
)

clock = jwt_tests.clock
jwks_server = jwt_tests.jwks_server

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})

Start = Callable[..., Awaitable[JwtVerifier]]


@pytest.fixture
async def start(clock: FakeClock) -> AsyncIterator[Start]:
    """Start a verifier for one provider, after the one a reload replaces; close all."""
    started: list[JwtVerifier] = []

    async def make(provider: dict[str, Any], previous: JwtVerifier | None = None) -> JwtVerifier:
        verifier = JwtVerifier([JwtProviderConfig.model_validate(provider)], clock=clock)
        started.append(verifier)
        await verifier.start(previous)
        return verifier

    yield make
    for verifier in started:
        await verifier.close()


async def test_a_reload_during_an_outage_keeps_the_keys_the_old_config_trusted(
    jwks_server: JwksServer, start: Start
) -> None:
    before = await start(url_provider(jwks_server))
    jwks_server.status = 503  # the identity provider goes down, then the config reloads
    after = await start(url_provider(jwks_server, leeway_s=10), before)
    assert jwks_server.hits == 2  # the reload still asked
    # Before, the new config had no key at all: every token a 503 until the IdP was back.
    assert (await after.verify(mint())).user_id == "alice"


async def test_keys_carried_across_reloads_are_trusted_no_longer_than_max_stale_s(
    jwks_server: JwksServer, start: Start, clock: FakeClock
) -> None:
    provider = url_provider(jwks_server, jwks={"max_stale_s": 600, "refresh_interval_s": 300})
    verifier = await start(provider)
    jwks_server.status = 503
    for _ in range(3):  # a reload every 5 minutes, each fetch failing
        clock.advance(250)
        verifier = await start(provider, verifier)
    # 750 s after the last good fetch: the keys are past max_stale_s, whatever reloaded.
    assert await unavailable(verifier, mint()) == "jwks_unavailable"


async def test_keys_of_another_url_or_other_algorithms_are_not_carried_over(
    jwks_server: JwksServer, start: Start
) -> None:
    before = await start(url_provider(jwks_server))
    jwks_server.status = 503
    elsewhere = url_provider(jwks_server, jwks={"url": jwks_server.url + "?tenant=b"})
    assert await unavailable(await start(elsewhere, before), mint()) == "jwks_unavailable"
    # The old config's keys were kept for RS256 and ES256: not what an ES256-only one keeps.
    narrower = url_provider(jwks_server, algorithms=["ES256"])
    token = mint(EC_KEY, "ES256", "ec-1")
    assert await unavailable(await start(narrower, before), token) == "jwks_unavailable"


# --- what a client sees ------------------------------------------------------------------


def runtime_for(jwks_url: str, log: MemoryLog) -> Runtime:
    provider = (
        f"  jwt_providers:\n    - name: idp\n      issuer: {ISSUER}\n"
        f"      jwks: {{url: '{jwks_url}', timeout_s: 1}}\n"
    )
    text = DEFAULT_CONFIG.read_text().replace("\nauth:\n", "\nauth:\n" + provider, 1)
    return Runtime(parse_config(text, "gateway.yaml", {}), Services(GatewayMetrics(), log))


async def test_a_client_token_is_served_after_a_reload_while_the_jwks_is_down(
    jwks_server: JwksServer,
) -> None:
    log = MemoryLog()
    first = runtime_for(jwks_server.url, log)
    await first.start()
    jwks_server.status = 500
    second = runtime_for(jwks_server.url, log)
    try:
        await second.start(previous=first)
        processor = Processor(lambda: second, default_stages())
        headers = {"authorization": f"Bearer {mint()}"}
        answers = await run_stream(
            processor,
            [request_headers("/v1/chat/completions", headers=headers), request_body(BODY)],
        )
        assert not answers[-1].HasField("immediate_response"), answers[-1]
        assert log.lines()[-1]["user_id"] == "alice"
    finally:
        await second.close()
        await first.close()
