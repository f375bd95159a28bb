"""The response stage ends a stream at the event its client reads last, however it is written.

A client that hangs up right after ``data: [DONE]`` makes Envoy drop the end of stream;
the request must still count as answered whole with the usage the provider reported,
not as cut short. SSE allows ``data:`` without its space and lines ended by a lone CR.
"""

from __future__ import annotations

import pytest

from extproc.config.model import GatewayConfig
from extproc.context import PhaseOutput, RequestContext, Usage
from extproc.runtime import Runtime, Services
from extproc.stages.response import ResponseStage
from extproc.translators.openai_openai import ChunkStreamReader

USAGE = (
    b'data:{"id":"c","choices":[],"model":"m-1",'
    b'"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}'
)


def streaming(config: GatewayConfig, services: Services, *, hide: bool) -> RequestContext:
    ctx = RequestContext(runtime=Runtime(config, services), stream=True, response_status=200)
    ctx.translator = ChunkStreamReader(hide_usage_chunk=hide)
    return ctx


@pytest.mark.parametrize("hide", [False, True])
@pytest.mark.parametrize(
    "last_chunk",
    [
        USAGE + b"\n\ndata: [DONE]\n\n",
        USAGE + b"\n\ndata:[DONE]\n\n",
        USAGE + b"\r\n\r\ndata:[DONE]\r\n\r\n",
        USAGE + b"\r\rdata: [DONE]\r\r",
    ],
)
def test_the_done_event_completes_the_request_without_envoys_end_of_stream(
    config: GatewayConfig, services: Services, last_chunk: bytes, hide: bool
) -> None:
    ctx = streaming(config, services, hide=hide)
    stage = ResponseStage()
    stage.response_body(ctx, PhaseOutput(), b'data:{"choices":[{"delta":{}}]}\n\n', False)
    assert not ctx.completed
    stage.response_body(ctx, PhaseOutput(), last_chunk, False)
    assert ctx.completed
    assert ctx.usage_reported
    assert ctx.usage == Usage(7, 5, 12, 0)


@pytest.mark.parametrize("hide", [False, True])
def test_the_done_marker_split_over_chunks_still_ends_the_stream(
    config: GatewayConfig, services: Services, hide: bool
) -> None:
    ctx = streaming(config, services, hide=hide)
    stage = ResponseStage()
    stream = USAGE + b"\r\rdata:[DONE]\r\r"
    for index in range(len(stream)):
        stage.response_body(ctx, PhaseOutput(), stream[index : index + 1], False)
    assert ctx.completed
    assert ctx.usage == Usage(7, 5, 12, 0)


def test_text_that_mentions_done_does_not_end_the_stream(
    config: GatewayConfig, services: Services
) -> None:
    ctx = streaming(config, services, hide=False)
    text = b'data:{"choices":[{"delta":{"content":"\\ndata: [DONE]"}}]}\n\n'
    ResponseStage().response_body(ctx, PhaseOutput(), text, False)
    assert not ctx.completed
