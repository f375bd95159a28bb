"""The serving process in-process: readiness follows the store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from grpc import aio as grpc_aio

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG, Ports
from extproc.processor import Processor
from extproc.server import Gateway
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageStore
from extproc.testing import request_body, request_headers, response_headers


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


async def test_a_store_that_stops_answering_later_does_not_take_the_gateway_out_of_service(
    tmp_path: Path,
) -> None:
    # Every replica shares the store: had each become unready, Kubernetes would take them
    # all out of the Service at once, and no request could follow its rules'
    # on_store_failure (fail_open rules, and routes without quotas, cut off with them).
    store = EmbeddedValkey(tmp_path / "valkey")
    url = store.start()
    ports = Ports.free()
    environ = {
        "EXTPROC_GRPC_ADDRESS": f"127.0.0.1:{ports.grpc}",
        "EXTPROC_HTTP_ADDRESS": f"127.0.0.1:{ports.http}",
        "EXTPROC_MANAGEMENT_ADDRESS": f"127.0.0.1:{ports.management}",
        "REDIS_URL": url,
    }
    config = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", environ)
    gateway = Gateway(config, None)
    await gateway.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.http}") as client:
            assert (await client.get("/readyz")).status_code == 200
            store.stop()
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert "store does not answer" in ready.json()["reason"]
    finally:
        await gateway.stop()
        store.stop()


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


class CutSlowly:
    """A stage that waits on the answer's headers for what never comes, and whose
    clean-up once cut takes many turns of the loop (as a guard's HTTP client closing
    its connection does)."""

    async def _wait(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            for _ in range(500):
                await asyncio.sleep(0)

    def response_headers(self, ctx: object, out: object, headers: object) -> Awaitable[None]:
        return self._wait()


async def test_a_stream_cut_at_the_end_of_the_grace_period_is_counted_before_the_store_closes(
    valkey: EmbeddedValkey,
) -> None:
    # grpc.aio's stop returns before the cut stream's task has run its last lines (the
    # request's usage): the gateway waits for them before it closes its usage writer.
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    ports = Ports.free()
    environ = {
        "EXTPROC_GRPC_ADDRESS": f"127.0.0.1:{ports.grpc}",
        "EXTPROC_HTTP_ADDRESS": f"127.0.0.1:{ports.http}",
        "EXTPROC_MANAGEMENT_ADDRESS": f"127.0.0.1:{ports.management}",
        "REDIS_URL": valkey.url,
    }
    text = DEFAULT_CONFIG.read_text().replace("grace_period_s: 10", "grace_period_s: 0.1")
    gateway = Gateway(parse_config(text, "gateway.yaml", environ), None)
    # Last: the gateway has read the provider's success status when the stage waits.
    stages = [*default_stages(), CutSlowly()]
    gateway.processor = Processor(gateway._runtime_for_stream, stages)
    await gateway.start()
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    messages = [
        request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
        request_body(orjson.dumps(chat)),
        response_headers(200),
    ]
    channel = grpc_aio.insecure_channel(f"127.0.0.1:{ports.grpc}")
    call = ext_grpc.ExternalProcessorStub(channel).Process(iter(messages))
    try:
        assert (await call.read()).HasField("request_headers")
        assert (await call.read()).HasField("request_body")
        await gateway.stop()
    finally:
        await channel.close()
    now = datetime.now(UTC)
    usage = UsageStore(client, "aigw:", 1)
    [row] = await usage.query(now - timedelta(hours=1), now + timedelta(hours=1), ("api_key_id",))
    await client.aclose()
    assert row.dimensions == {"api_key_id": "team1"}
    # A provider bills an answer it started: charged its prompt and its allowance.
    assert row.requests == 1 and row.prompt_tokens > 0 and row.completion_tokens > 0
