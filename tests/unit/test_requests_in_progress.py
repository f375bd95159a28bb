"""aigw_requests_in_progress: a request counts from its stream's start until it is counted
(log line, metrics, rollup), so a stopping gateway's drain and a test about to compare
counts have something to wait on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.model import GatewayConfig
from extproc.context import RequestContext
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    run_stream_reset,
)

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
ANSWER = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
)
WHOLE_REQUEST = [
    request_headers(CHAT, headers=AUTH),
    request_body(BODY),
    response_headers(200, {"content-type": "application/json"}),
    response_body(ANSWER),
]


class Probe:
    """A last stage that notes the gauge while the request is being counted, and can hold
    the request's finish on a closing step (as a quota settlement's store call does)."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self.during_counting: list[float] = []
        self.hold: asyncio.Future[None] | None = None

    def done(self, ctx: RequestContext) -> None:
        self.during_counting.append(in_progress(self._services))

    def closing(self, ctx: RequestContext) -> Awaitable[None] | None:
        return self.hold


def in_progress(services: Services) -> float:
    value = services.metrics.registry.get_sample_value("aigw_requests_in_progress")
    assert value is not None, "the gauge is on the page from the start"
    return value


@pytest.fixture
def probe(services: Services) -> Probe:
    return Probe(services)


@pytest.fixture
def probed(config: GatewayConfig, services: Services, probe: Probe) -> Processor:
    runtime = Runtime(config, services)
    return Processor(lambda: runtime, [*default_stages(), probe])


async def test_the_page_shows_0_before_any_request(services: Services) -> None:
    assert in_progress(services) == 0


async def test_a_request_counts_while_open_and_until_its_log_line_is_written(
    probed: Processor, services: Services, probe: Probe
) -> None:
    seen_between_messages: list[float] = []
    go_on = asyncio.Event()

    async def messages() -> AsyncIterator[ext.ProcessingRequest]:
        yield WHOLE_REQUEST[0]
        await go_on.wait()  # the provider is working on it
        seen_between_messages.append(in_progress(services))
        for message in WHOLE_REQUEST[1:]:
            yield message

    async def serve() -> None:
        async for _ in probed.process(messages()):
            pass
        await probed.closed()

    task = asyncio.create_task(serve())
    await asyncio.sleep(0)
    go_on.set()
    await task

    assert seen_between_messages == [1]
    # Still counted while its line is written, so 0 means every line is out.
    assert probe.during_counting == [1]
    assert in_progress(services) == 0
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["total_tokens"] == 10


async def test_refused_cut_and_answered_by_the_gateway_requests_all_end_at_0(
    probed: Processor, services: Services, probe: Probe
) -> None:
    await run_stream(probed, [request_headers(CHAT, headers={"authorization": "Bearer nope"})])
    await run_stream_reset(probed, WHOLE_REQUEST[:3])
    await run_stream(probed, [request_headers("/v1/models", headers=AUTH)])
    await run_stream(probed, [request_headers(CHAT, headers=AUTH), request_body(b"{not json")])

    assert probe.during_counting == [1, 1, 1, 1]
    assert in_progress(services) == 0
    outcomes = [line["http_status_code"] for line in services.access_log.lines()]  # type: ignore[attr-defined]
    assert 401 in outcomes and 400 in outcomes


async def test_a_request_whose_finish_waits_on_a_closing_step_counts_until_it_is_done(
    probed: Processor, services: Services, probe: Probe
) -> None:
    probe.hold = asyncio.get_running_loop().create_future()
    answers = [answer async for answer in probed.process(_each(WHOLE_REQUEST))]
    assert len(answers) == 4
    await asyncio.sleep(0)
    assert in_progress(services) == 1
    assert probe.during_counting == []

    probe.hold.set_result(None)
    await probed.closed()
    assert probe.during_counting == [1]
    assert in_progress(services) == 0


async def test_requests_open_at_once_each_count(probed: Processor, services: Services) -> None:
    release = asyncio.Event()
    all_open = asyncio.Event()
    started = 0

    async def held() -> AsyncIterator[ext.ProcessingRequest]:
        nonlocal started
        yield WHOLE_REQUEST[0]
        started += 1
        if started == 3:
            all_open.set()
        await release.wait()
        for message in WHOLE_REQUEST[1:]:
            yield message

    async def serve() -> None:
        async for _ in probed.process(held()):
            pass

    tasks = [asyncio.create_task(serve()) for _ in range(3)]
    await all_open.wait()
    assert in_progress(services) == 3
    release.set()
    await asyncio.gather(*tasks)
    await probed.closed()
    assert in_progress(services) == 0


async def _each(
    messages: list[ext.ProcessingRequest],
) -> AsyncIterator[ext.ProcessingRequest]:
    for message in messages:
        yield message
