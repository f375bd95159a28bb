"""A Bedrock stream its provider ends early, cleanly, reaches boto3 as an exception.

Bedrock ends ConverseStream with ``messageStop`` and ``metadata``, every
InvokeModelWithResponseStream with the chunk that carries its invocation metrics (Claude's
``message_stop``), or with an exception frame. A stream whose body ended before them (a
proxy, or an upstream whose body ends with its connection, closing a cut stream as if
whole) was passed to the AWS SDK as it came: boto3 yielded the events so far and ended as
if the answer were whole, with no stop reason, while an OpenAI or Anthropic client of the
same model got an error. Now such a stream ends with an ``internalServerException`` frame,
which botocore raises (``EventStreamError``), charged as Bedrock's own exception mid-stream.
Each test plays the stream through the processor and reads what the client receives with
botocore's own event stream parser.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import botocore.session
import orjson
import pytest
from botocore.eventstream import EventStream
from botocore.exceptions import EventStreamError
from botocore.parsers import EventStreamJSONParser

from extproc.aws_eventstream import encode_event
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_converse_review import AUTH, HAIKU, MESSAGES, converse_path, signing_processor

__all__ = ["signing_processor"]

EVENT_STREAM = {
    "content-type": "application/vnd.amazon.eventstream",
    "x-envoy-upstream-service-time": "3",
}
LLAMA = "meta.llama3-8b-instruct-v1:0"
ENDED_EARLY = "the provider's stream ended before it was complete"
_RUNTIME = botocore.session.get_session().get_service_model("bedrock-runtime")


def frame(kind: str, payload: dict[str, Any]) -> bytes:
    return encode_event(kind, orjson.dumps(payload))


def chunk(event: dict[str, Any]) -> bytes:
    """An InvokeModelWithResponseStream chunk: the model's event, base64 in ``bytes``."""
    return frame("chunk", {"bytes": base64.b64encode(orjson.dumps(event)).decode()})


CONVERSE_BEGUN = frame("messageStart", {"role": "assistant"}) + frame(
    "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Once upon"}}
)
CONVERSE_STOP = frame("contentBlockStop", {"contentBlockIndex": 0}) + frame(
    "messageStop", {"stopReason": "end_turn"}
)
CONVERSE_METADATA = frame(
    "metadata",
    {"usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15},
     "metrics": {"latencyMs": 80}},
)  # fmt: skip
CLAUDE_BEGUN = chunk(
    {"type": "message_start", "message": {"id": "msg_bdrk_01", "type": "message",
     "role": "assistant", "model": "claude-3-haiku-20240307", "content": [],
     "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1}}}
) + chunk({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": "Once upon"}})  # fmt: skip
LLAMA_BEGUN = chunk({"generation": "Once upon", "prompt_token_count": 12,
                     "generation_token_count": 2, "stop_reason": None})  # fmt: skip


class _Body:
    """The HTTP body botocore's EventStream reads: all the frames in one piece."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self) -> Iterator[bytes]:
        yield self._data

    def close(self) -> None:
        pass


def boto3_reads(operation: str, received: bytes) -> list[str]:
    """The event names boto3 yields of ``operation``'s stream ``received``; it raises
    what botocore raises for an exception frame."""
    model = _RUNTIME.operation_model(operation)
    stream = EventStream(
        _Body(received), model.get_event_stream_output(), EventStreamJSONParser(), operation
    )
    return [name for event in stream for name in event]


async def streamed(
    processor: Processor,
    path: str,
    body: dict[str, Any],
    chunks: list[bytes],
    key: dict[str, str] = AUTH,
    kind: dict[str, str] = EVENT_STREAM,
) -> bytes:
    """What the client receives when the provider (Bedrock unless ``kind`` says otherwise)
    answers the call with ``chunks``, then ends the body."""
    answers = await run_stream(
        processor,
        [
            request_headers(path, headers=key),
            request_body(orjson.dumps(body)),
            response_headers(200, kind),
            *(response_body(part, end_of_stream=False) for part in chunks),
            response_body(b"", end_of_stream=True),
        ],
    )
    return client_body([*chunks, b""], answers[3:])


def log_line(services: Services) -> dict[str, Any]:
    log = services.access_log
    assert isinstance(log, MemoryLog)
    [line] = log.lines()
    return line


def invoke_path(model: str) -> str:
    return converse_path(model).removesuffix("/converse") + "/invoke-with-response-stream"


CONVERSE_STREAM = converse_path() + "-stream"
CONVERSE_BODY = {"messages": MESSAGES}
CLAUDE_BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
               "messages": [{"role": "user", "content": "Tell me a story."}]}  # fmt: skip
LLAMA_BODY = {"prompt": "Tell me a story.", "max_gen_len": 64}


@pytest.mark.parametrize(
    ("operation", "path", "body", "begun"),
    [
        ("ConverseStream", CONVERSE_STREAM, CONVERSE_BODY, CONVERSE_BEGUN),
        ("InvokeModelWithResponseStream", invoke_path(HAIKU), CLAUDE_BODY, CLAUDE_BEGUN),
        ("InvokeModelWithResponseStream", invoke_path(LLAMA), LLAMA_BODY, LLAMA_BEGUN),
    ],
    ids=["converse-stream", "invoke-claude", "invoke-llama"],
)
async def test_a_stream_ended_before_its_answer_is_raised_by_boto3(
    signing_processor: Processor,
    services: Services,
    operation: str,
    path: str,
    body: dict[str, Any],
    begun: bytes,
) -> None:
    # Split inside a frame: the frames reach the client whole, then the exception.
    received = await streamed(signing_processor, path, body, [begun[:40], begun[40:]])

    assert received.startswith(begun)
    with pytest.raises(EventStreamError) as raised:
        boto3_reads(operation, received)
    error = raised.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("internalServerException", ENDED_EARLY)
    line = log_line(services)
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")
    assert line["usage_estimated"] is True


async def test_a_whole_converse_stream_is_still_the_answer(
    signing_processor: Processor, services: Services
) -> None:
    whole = CONVERSE_BEGUN + CONVERSE_STOP + CONVERSE_METADATA
    received = await streamed(signing_processor, CONVERSE_STREAM, CONVERSE_BODY, [whole])

    assert received == whole
    assert boto3_reads("ConverseStream", received)[-2:] == ["messageStop", "metadata"]
    assert log_line(services)["outcome"] == "completed"


async def test_a_converse_stream_stopped_before_its_metadata_is_left_as_it_came(
    signing_processor: Processor,
) -> None:
    # messageStop carries the stop reason: the SDK's answer is whole, only its usage is
    # missing (the request is charged the estimate, as any stream without a report).
    stopped = CONVERSE_BEGUN + CONVERSE_STOP
    received = await streamed(signing_processor, CONVERSE_STREAM, CONVERSE_BODY, [stopped])

    assert received == stopped
    assert boto3_reads("ConverseStream", received)[-1] == "messageStop"
