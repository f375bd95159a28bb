"""The serving process in-process: readiness follows the store."""

from __future__ import annotations

import asyncio

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


class OpenCallsServer:
    """A listener whose open calls run to the end of the grace period: its stop returns
    only once every listener of the process has been told to stop (``all_told``)."""

    def __init__(self, told: list[float], all_told: asyncio.Event, listeners: int) -> None:
        self._told, self._all_told, self._listeners = told, all_told, listeners

    async def stop(self, grace: float) -> None:
        self._told.append(grace)
        if len(self._told) == self._listeners:
            self._all_told.set()
        await self._all_told.wait()


async def test_the_ext_proc_and_management_listeners_share_one_grace_period() -> None:
    # Stopped one after the other, each with its own grace period, a process could take
    # twice grace_period_s and be killed (terminationGracePeriodSeconds) before it
    # flushed its usage. Here each listener's calls take the whole grace period: stopped
    # one after the other, the first would never return.
    config = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {})
    gateway = Gateway(config, None)
    told: list[float] = []
    all_told = asyncio.Event()
    gateway._server = OpenCallsServer(told, all_told, 2)  # type: ignore[assignment]
    gateway._management = OpenCallsServer(told, all_told, 2)  # type: ignore[assignment]
    await asyncio.wait_for(gateway.stop(), timeout=10)
    assert told == [config.server.grace_period_s] * 2
