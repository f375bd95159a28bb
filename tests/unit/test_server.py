"""The serving process in-process: readiness follows the store."""

from __future__ import annotations

import httpx

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG, Ports
from extproc.server import Gateway


async def test_not_ready_while_the_store_does_not_answer() -> None:
    ports = Ports.free()
    environ = {
        "EXTPROC_GRPC_ADDRESS": f"127.0.0.1:{ports.grpc}",
        "EXTPROC_HTTP_ADDRESS": f"127.0.0.1:{ports.http}",
        "EXTPROC_MANAGEMENT_ADDRESS": f"127.0.0.1:{ports.management}",
        # Nothing listens there: the store cannot answer.
        "REDIS_URL": f"redis://127.0.0.1:{ports.mock}/0",
    }
    config = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", environ)
    gateway = Gateway(config, None)
    await gateway.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.http}") as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "store does not answer" in ready.json()["reason"]
    finally:
        await gateway.stop()
