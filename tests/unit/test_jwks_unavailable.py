"""An identity provider whose JWKS cannot be fetched: the gateway cannot check a token,
so the client gets a 503 it may retry, not a 401 telling it the token is bad."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import orjson
import pytest

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.test_jwt_verifier import ISSUER, mint

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Processor, MemoryLog]]:
    url = f"http://127.0.0.1:{closed_port()}/jwks.json"
    provider = (
        f"  jwt_providers:\n    - name: idp\n      issuer: {ISSUER}\n"
        f"      jwks: {{url: '{url}', timeout_s: 1}}\n"
    )
    text = DEFAULT_CONFIG.read_text().replace("\nauth:\n", "\nauth:\n" + provider, 1)
    log = MemoryLog()
    runtime = Runtime(parse_config(text, "gateway.yaml", {}), Services(GatewayMetrics(), log))
    await runtime.start()
    yield Processor(lambda: runtime, default_stages()), log
    await runtime.close()


async def test_a_token_that_cannot_be_checked_gets_a_503_to_retry(
    gateway: tuple[Processor, MemoryLog],
) -> None:
    processor, log = gateway
    headers = {"authorization": f"Bearer {mint()}"}
    answers = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=headers), request_body(BODY)]
    )
    refusal = answers[-1].immediate_response
    assert refusal.status.code == 503
    error = orjson.loads(refusal.body)["error"]
    assert error["code"] == "jwks_unavailable"
    assert "identity provider" in error["message"]
    # No Bearer challenge: the credential was not found wanting.
    names = {option.header.key for option in refusal.headers.set_headers}
    assert "www-authenticate" not in names
    assert log.lines()[-1]["http_status_code"] == 503


async def test_an_api_key_still_works_while_the_identity_provider_is_out_of_reach(
    gateway: tuple[Processor, MemoryLog],
) -> None:
    processor, _ = gateway
    headers = {"authorization": "Bearer team1-key"}
    answers = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=headers), request_body(BODY)]
    )
    assert not answers[-1].HasField("immediate_response")
