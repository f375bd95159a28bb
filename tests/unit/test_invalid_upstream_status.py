"""A provider's status outside HTTP's 100-599 (Envoy passes any three digits on).

Some servers and proxies answer 600-999 for errors of their own. RFC 9110 calls such a
status invalid and tells clients to take it for a server error. The client used to get
it as sent, with the provider's body, an SDK reading no status it knows, and the log
line said ``"http_status_code": 600``, which docs/log-schema.json (at most 599) refused.
Now, wherever the gateway answers the response headers, the client gets a 502 in its
API's shape and is not billed; the log line keeps the provider's status as
``upstream_status_code`` and aigw_upstream_errors_total counts it by it. On the lean
path the headers have left before the gateway sees them: the client gets the status as
sent, and the line, valid against the schema, records that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from google.protobuf import struct_pb2
from jsonschema import Draft202012Validator, FormatChecker

from extproc.config.model import GatewayConfig
from extproc.processor import ATTRIBUTES_KEY, Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

SCHEMA = Draft202012Validator(
    orjson.loads(Path("docs/log-schema.json").read_bytes()), format_checker=FormatChecker()
)
KEY = {"authorization": "Bearer team1-key"}
# As a provider's answer reaches the gateway (Envoy marks it; its own replies lack it).
FROM_PROVIDER = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
# A whole completion, with its usage: the status, not the body, says it failed.
COMPLETION = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
)
MESSAGE = orjson.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-latest",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }
)
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
CONVERSE = orjson.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})


def upstream_errors(services: Services) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in services.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "aigw_upstream_errors_total":
                found[sample.labels["status_code"]] = sample.value
    return found


def answered_headers(answers: list[ext.ProcessingResponse]) -> dict[str, str]:
    [answer] = [a for a in answers if a.WhichOneof("response") == "response_headers"]
    mutation = answer.response_headers.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def answered_body(answers: list[ext.ProcessingResponse]) -> Any:
    [answer] = [a for a in answers if a.WhichOneof("response") == "response_body"]
    return orjson.loads(answer.response_body.response.body_mutation.body)


@pytest.mark.parametrize("status", [600, 799, 999])
async def test_an_openai_client_gets_a_502_and_is_not_billed(
    processor: Processor, services: Services, status: int
) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers=KEY),
            request_body(orjson.dumps(CHAT)),
            response_headers(status, FROM_PROVIDER),
            response_body(COMPLETION),
        ],
    )
    assert answered_headers(answers)[":status"] == "502"
    error = answered_body(answers)["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "upstream_error"
    assert f"invalid HTTP status ({status})" in error["message"]
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    SCHEMA.validate(line)
    found = {
        "http_status_code": line["http_status_code"],
        "upstream_status_code": line["upstream_status_code"],
        "outcome": line["outcome"],
        "total_tokens": line["total_tokens"],
        "cost_usd": line["cost_usd"],
    }
    assert found == {
        "http_status_code": 502,
        "upstream_status_code": status,
        "outcome": "upstream_error",
        "total_tokens": 0,
        "cost_usd": 0.0,
    }
    assert upstream_errors(services) == {str(status): 1.0}


async def test_an_anthropic_client_gets_the_502_in_anthropics_shape(
    processor: Processor, services: Services
) -> None:
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 10, "messages": CHAT["messages"]}
    answers = await run_stream(
        processor,
        [
            # Without the body hints Envoy sends, the route is not lean: the full path.
            request_headers("/v1/messages", headers=KEY),
            request_body(orjson.dumps(body)),
            response_headers(600, FROM_PROVIDER),
            response_body(MESSAGE),
        ],
    )
    assert answered_headers(answers)[":status"] == "502"
    answer = answered_body(answers)
    assert answer["type"] == "error"
    assert "invalid HTTP status (600)" in answer["error"]["message"]
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    SCHEMA.validate(line)
    assert (line["http_status_code"], line["total_tokens"]) == (502, 0)


@pytest.fixture
async def started(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    """The default config's processor with its Bedrock provider's AWS credentials loaded."""
    runtime = Runtime(config, services)
    await runtime.start()
    try:
        yield Processor(lambda: runtime, default_stages())
    finally:
        await runtime.close()


async def test_a_converse_client_gets_the_502_as_bedrock_shapes_errors(
    started: Processor, services: Services
) -> None:
    answers = await run_stream(
        started,
        [
            request_headers(f"/model/{HAIKU}/converse", headers=KEY),
            request_body(CONVERSE),
            response_headers(600, FROM_PROVIDER),
            response_body(b'{"output": {}}'),
        ],
    )
    set_headers = answered_headers(answers)
    assert set_headers[":status"] == "502"
    assert set_headers["x-amzn-errortype"]  # what botocore raises and retries by
    assert "invalid HTTP status (600)" in answered_body(answers)["message"]
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    SCHEMA.validate(line)
    assert (line["http_status_code"], line["upstream_status_code"]) == (502, 600)


def first_chunk(chunk: bytes, code: int) -> ext.ProcessingRequest:
    """The lean path's first body message: the status comes as an attribute."""
    message = response_body(chunk, end_of_stream=True)
    attributes = struct_pb2.Struct()
    attributes.update({"response.code": code, "response.code_details": "via_upstream"})
    message.attributes[ATTRIBUTES_KEY].CopyFrom(attributes)
    return message


async def test_on_the_lean_path_the_line_records_the_status_the_client_got(
    processor: Processor, services: Services
) -> None:
    await run_stream(
        processor,
        [
            request_headers("/openai/gpt-4o-mini", headers=KEY),
            request_body(orjson.dumps(CHAT)),
            first_chunk(COMPLETION, 600),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    SCHEMA.validate(line)
    found = (line["http_status_code"], line["upstream_status_code"], line["outcome"])
    assert found == (600, 600, "upstream_error")
    assert line["total_tokens"] == 0
