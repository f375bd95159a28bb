"""The ext_proc protocol as Envoy speaks it: real protobuf messages, edge cases of the stream.

Each test plays one ext_proc stream through the processor with the messages Envoy
sends in that case, and checks what Envoy (and so the client) gets back.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.config import GatewayConfig
from extproc.context import PhaseOutput, RequestContext
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
CHAT_BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
# What an exception's text may carry that a client must never read.
INTERNALS = "connection to 10.0.0.7:6379 failed for sk-internal-token"


def log_lines(services: Services) -> list[dict[str, Any]]:
    return services.access_log.lines()  # type: ignore[attr-defined,no-any-return]


def answer_headers(answer: ext.ProcessingResponse) -> dict[str, str]:
    return {
        option.header.key: option.header.raw_value.decode()
        for option in answer.immediate_response.headers.set_headers
    }


def request_trailers(values: dict[str, str]) -> ext.ProcessingRequest:
    request = ext.ProcessingRequest()
    for key, value in values.items():
        header = request.request_trailers.trailers.headers.add()
        header.key = key
        header.raw_value = value.encode()
    return request


def unfinished_body(body: bytes) -> ext.ProcessingRequest:
    """A buffered body Envoy sends before the request's trailers: not its end of stream."""
    request = request_body(body)
    request.request_body.end_of_stream = False
    return request


class Exploding:
    """A stage with a bug: it raises what no stage means to raise, at the phase given."""

    def __init__(self, phase: str) -> None:
        setattr(self, phase, self._explode)

    def _explode(self, ctx: RequestContext, out: PhaseOutput, *args: Any) -> None:
        raise RuntimeError(INTERNALS)


def processor_with(config: GatewayConfig, services: Services, extra: object) -> Processor:
    """The default stages with ``extra`` right after the routing and authentication ones."""
    runtime = Runtime(config, services)
    stages = default_stages()
    stages.insert(3, extra)
    return Processor(lambda: runtime, stages)


async def test_a_post_without_a_body_is_told_its_body_is_missing(
    processor: Processor, services: Services
) -> None:
    # `curl -X POST` with no data: Envoy sends the headers with end_of_stream and never
    # a body message, so the body phase (model, provider, route) would never run.
    answers = await run_stream(processor, [request_headers(CHAT, headers=AUTH, end_of_stream=True)])
    [answer] = answers
    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 400
    error = orjson.loads(answer.immediate_response.body)["error"]
    assert error["type"] == "invalid_request_error"
    assert "empty" in error["message"]
    [line] = log_lines(services)
    assert line["http_status_code"] == 400


async def test_a_get_of_the_model_list_needs_no_body(processor: Processor) -> None:
    [answer] = await run_stream(
        processor, [request_headers("/v1/models", method="GET", headers=AUTH, end_of_stream=True)]
    )
    assert answer.immediate_response.status.code == 200


async def test_request_trailers_are_answered(processor: Processor) -> None:
    # An HTTP/2 (gRPC-style) client may end its upload with trailers: Envoy sends them
    # when the filter's mode asks for them, and waits for an answer to each message.
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            unfinished_body(CHAT_BODY),
            request_trailers({"x-checksum": "abc"}),
        ],
    )
    assert [answer.WhichOneof("response") for answer in answers] == [
        "request_headers",
        "request_body",
        "request_trailers",
    ]


@pytest.mark.parametrize("phase", ["request_headers", "request_body"])
async def test_a_stage_bug_is_a_clean_500_without_internals(
    config: GatewayConfig, services: Services, phase: str, caplog: pytest.LogCaptureFixture
) -> None:
    processor = processor_with(config, services, Exploding(phase))
    answers = await run_stream(
        processor, [request_headers(CHAT, headers=AUTH), request_body(CHAT_BODY)]
    )
    answer = answers[-1]
    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 500
    body = answer.immediate_response.body
    error = orjson.loads(body)["error"]
    assert error["type"] == "server_error"
    assert INTERNALS.encode() not in body and b"RuntimeError" not in body
    sent = answer_headers(answer)
    assert sent["content-type"] == "application/json"
    [line] = log_lines(services)
    assert sent[headers.REQUEST_ID] == line["request_id"]
    # The log line says the gateway failed the request, not that the client left.
    assert line["http_status_code"] == 500
    assert line["error_type"] == "server_error"
    # The operator's log keeps the traceback, tied to the request.
    assert any(line["request_id"] in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("path", "method", "allowed"),
    [(CHAT, "GET", "POST"), ("/v1/models", "POST", "GET, HEAD")],
)
async def test_a_method_a_path_does_not_take_is_a_405_naming_those_it_does(
    processor: Processor, path: str, method: str, allowed: str
) -> None:
    answers = await run_stream(
        processor, [request_headers(path, headers=AUTH, method=method, end_of_stream=True)]
    )
    answer = answers[-1]
    assert answer.immediate_response.status.code == 405
    # RFC 9110: a 405 carries Allow; a CORS preflight or a script reads it.
    assert answer_headers(answer)["allow"] == allowed


@pytest.mark.parametrize("encoding", ["gzip", "br", " Deflate "])
async def test_a_compressed_request_body_is_a_415_saying_to_send_it_plain(
    processor: Processor, services: Services, encoding: str
) -> None:
    gzip_headers = {**AUTH, "content-encoding": encoding}
    answers = await run_stream(
        processor, [request_headers(CHAT, headers=gzip_headers), request_body(b"\x1f\x8b\x08")]
    )
    answer = answers[-1]
    assert answer.immediate_response.status.code == 415
    error = orjson.loads(answer.immediate_response.body)["error"]
    assert error["code"] == "unsupported_content_encoding"
    assert encoding.strip() in error["message"] and "uncompressed" in error["message"]
    [line] = log_lines(services)
    assert line["http_status_code"] == 415


async def test_an_identity_encoded_body_is_read(processor: Processor) -> None:
    plain = {**AUTH, "content-encoding": "identity"}
    answers = await run_stream(
        processor, [request_headers(CHAT, headers=plain), request_body(CHAT_BODY)]
    )
    assert not answers[-1].HasField("immediate_response")
