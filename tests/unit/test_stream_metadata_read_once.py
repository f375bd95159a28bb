"""The ext_proc stream's gRPC metadata (Envoy's traceparent, the attempt filter's mark) is
read once per stream: grpc.aio builds it anew on every call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.model import GatewayConfig
from extproc.envoy_failover import ATTEMPT_METADATA
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import attempt_stages
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


class EnvoyStream:
    """A stream's context as grpc.aio gives it: its metadata, counted as read."""

    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata
        self.reads = 0

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        self.reads += 1
        return self.metadata


async def play(processor: Processor, stream: EnvoyStream) -> list[ext.ProcessingResponse]:
    async def messages() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"})
        yield request_body(BODY)

    return [answer async for answer in processor.process(messages(), stream)]


def gateway_processor(config: GatewayConfig, services: Services) -> Processor:
    """The processor as the server builds it: the request's stages and the attempt's."""
    runtime = Runtime(config, services)
    return Processor(lambda: runtime, default_stages(), attempt_stages())


async def test_a_traced_request_reads_its_stream_metadata_once(
    config: GatewayConfig, services: Services
) -> None:
    stream = EnvoyStream(("traceparent", TRACEPARENT), ("user-agent", "envoy"))
    answers = await play(gateway_processor(config, services), stream)
    assert [answer.WhichOneof("response") for answer in answers] == [
        "request_headers",
        "request_body",
    ]
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["trace_id"] == TRACE_ID
    assert stream.reads == 1


async def test_an_attempt_stream_is_still_told_by_its_mark_read_once(
    config: GatewayConfig, services: Services
) -> None:
    stream = EnvoyStream((ATTEMPT_METADATA, "attempt"), ("traceparent", TRACEPARENT))
    await play(gateway_processor(config, services), stream)
    # The attempt filter's streams write no log line: the request's own stream does.
    assert services.access_log.lines() == []  # type: ignore[attr-defined]
    assert stream.reads == 1
