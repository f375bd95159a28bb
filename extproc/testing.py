"""Test helpers shipped with the package: real ext_proc messages in one line each.

``run_stream(processor, messages)`` plays one Envoy stream through a processor
and returns its answers, so a processor test reads like the request it checks;
``run_stream_reset`` plays one that Envoy resets once every message is answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress

from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.model import GatewayConfig
from extproc.mock_llm import MockOptions, create_app
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics


def _headers(message: ext.HttpHeaders, values: dict[str, str], end_of_stream: bool) -> None:
    for key, value in values.items():
        header = message.headers.headers.add()
        header.key = key
        header.raw_value = value.encode()
    message.end_of_stream = end_of_stream


def request_headers(
    path: str,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    end_of_stream: bool = False,
) -> ext.ProcessingRequest:
    request = ext.ProcessingRequest()
    values = {":method": method, ":path": path, ":authority": "gateway", ":scheme": "http"}
    _headers(request.request_headers, {**values, **(headers or {})}, end_of_stream)
    return request


def request_body(body: bytes) -> ext.ProcessingRequest:
    request = ext.ProcessingRequest()
    request.request_body.body = body
    request.request_body.end_of_stream = True
    return request


def response_headers(
    status: int = 200, headers: dict[str, str] | None = None, end_of_stream: bool = False
) -> ext.ProcessingRequest:
    request = ext.ProcessingRequest()
    values = {":status": str(status), "content-type": "application/json"}
    _headers(request.response_headers, {**values, **(headers or {})}, end_of_stream)
    return request


def response_body(chunk: bytes, end_of_stream: bool = True) -> ext.ProcessingRequest:
    request = ext.ProcessingRequest()
    request.response_body.body = chunk
    request.response_body.end_of_stream = end_of_stream
    return request


async def _iterate(
    messages: Iterable[ext.ProcessingRequest],
) -> AsyncIterator[ext.ProcessingRequest]:
    for message in messages:
        yield message


async def run_stream(
    processor: Processor, messages: Iterable[ext.ProcessingRequest]
) -> list[ext.ProcessingResponse]:
    """Play one stream; its finishing work (log, metrics, rollup) is done on return."""
    answers = [answer async for answer in processor.process(_iterate(messages))]
    await processor.closed()
    return answers


async def run_stream_reset(
    processor: Processor, messages: Iterable[ext.ProcessingRequest]
) -> list[ext.ProcessingResponse]:
    """Play one stream that Envoy resets after the processor answered its last message, as
    when the client hangs up before the response's end of stream: grpc.aio cancels the
    call while the processor waits for the next message. Its finishing work is done on
    return."""
    answers: list[ext.ProcessingResponse] = []
    waiting = asyncio.Event()

    async def requests() -> AsyncIterator[ext.ProcessingRequest]:
        for message in messages:
            yield message
        # Asked for the next message: every one before was answered.
        waiting.set()
        await asyncio.Event().wait()

    async def serve() -> None:
        async for answer in processor.process(requests()):
            answers.append(answer)

    call = asyncio.create_task(serve())
    asked = asyncio.create_task(waiting.wait())
    await asyncio.wait((call, asked), return_when=asyncio.FIRST_COMPLETED)
    asked.cancel()
    call.cancel()  # a stream the processor ended itself (an immediate answer) is done
    with suppress(asyncio.CancelledError):
        await call
    await processor.closed()
    return answers


def client_body(chunks: Sequence[bytes], answers: Iterable[ext.ProcessingResponse]) -> bytes:
    """What the client received of an answer sent in ``chunks``: each chunk as it came,
    or what the gateway's answer to it replaced it with (nothing, if it cleared it)."""
    bodies = [a for a in answers if a.WhichOneof("response") == "response_body"]
    out = b""
    for chunk, answer in zip(chunks, bodies, strict=True):
        mutation = answer.response_body.response.body_mutation
        kind = mutation.WhichOneof("mutation")
        out += mutation.body if kind == "body" else b"" if kind == "clear_body" else chunk
    return out


def processor_for(config: GatewayConfig, services: Services | None = None) -> Processor:
    """A processor with the default stages and in-memory services (no store)."""
    services = services or Services(GatewayMetrics(), AccessLog(stdout=False))
    runtime = Runtime(config, services)
    return Processor(lambda: runtime, default_stages())


def sample(services: Services, name: str, **labels: str) -> float:
    """The sum of a metric's samples named ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in services.metrics.registry.collect():
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                total += found.value
    return total


@asynccontextmanager
async def serve_mock(options: MockOptions | None = None) -> AsyncIterator[str]:
    """Run the mock provider on a free port of 127.0.0.1 and yield its base URL."""
    runner = web.AppRunner(create_app(options), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
