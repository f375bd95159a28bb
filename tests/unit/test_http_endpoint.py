"""The HTTP endpoint serves on every address form the config accepts."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from extproc import http_endpoint
from extproc.devstack import free_port


async def ready() -> tuple[bool, str]:
    return True, "config loaded, store answers"


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
async def test_the_endpoint_binds_ipv4_and_bracketed_ipv6_addresses(host: str) -> None:
    port = free_port()
    runner = await http_endpoint.start(
        http_endpoint.create_app(CollectorRegistry(), ready), f"{host}:{port}"
    )
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/readyz") as answer,
        ):
            assert answer.status == 200
            assert (await answer.json())["status"] == "ready"
    finally:
        await runner.cleanup()
