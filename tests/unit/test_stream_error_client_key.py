"""A provider's error event inside a stream that quotes the client's own key.

A provider's error answer (a status of 400 and up) quoting what the client sent has the
client's key starred out before the client reads it (``backends._error_needles``). A
stream is a 200: its error comes as an event (OpenAI's ``data: {"error": ...}``,
Anthropic's ``event: error``, the Responses API's ``error``, a Bedrock exception
frame), and it reached the client as the provider wrote it (the log line's
``error_message`` hid it already, ``credential_cleaner.hide_in_logged_errors``). Now
starred there too, its length kept (the lean path's client reads the provider's bytes
as they came), on every path: passed on, and translated for another API's client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.aws_eventstream import encode_event, encode_exception
from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import client_body, request_body, request_headers, response_body
from extproc.testing import response_headers as provider_headers
from tests.unit.test_response_path import first_chunk

KEY = "team1-key"
AUTH = {"authorization": f"Bearer {KEY}"}
SAID = f"Invalid value for 'user': '{KEY}'. Expected a string of at most 64 characters."
STARRED = SAID.replace(KEY, "*" * len(KEY))
FROM_PROVIDER = {"x-envoy-upstream-service-time": "3"}
SSE = {"content-type": "text/event-stream", **FROM_PROVIDER}
FRAMES = {"content-type": "application/vnd.amazon.eventstream", **FROM_PROVIDER}
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PROMPT = [{"role": "user", "content": "hi"}]


def chat(model: str) -> bytes:
    return orjson.dumps({"model": model, "stream": True, "messages": PROMPT})


MESSAGES = orjson.dumps(
    {"model": "claude-3-5-haiku-latest", "max_tokens": 9, "stream": True, "messages": PROMPT}
)
RESPONSES = orjson.dumps({"model": "gpt-4o-mini", "stream": True, "input": "hi"})
CONVERSE = orjson.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})


def event(name: str | None, document: dict[str, Any]) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(document) + b"\n\n"


OPENAI_STREAM = event(
    None, {"id": "c1", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": "Hel"}}]}
) + event(None, {"error": {"message": SAID, "type": "invalid_request_error"}})  # fmt: skip
ANTHROPIC_STREAM = event(
    "message_start",
    {"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant",
     "content": [], "model": "claude-3-5-haiku-latest",
     "usage": {"input_tokens": 5, "output_tokens": 1}}},
) + event("error", {"type": "error",
          "error": {"type": "invalid_request_error", "message": SAID}})  # fmt: skip
RESPONSES_STREAM = event(
    "error",
    {"type": "error", "sequence_number": 0,
     "error": {"type": "invalid_request_error", "code": "invalid_value", "message": SAID}},
)  # fmt: skip
BEDROCK_STREAM = encode_event("messageStart", b'{"role":"assistant"}') + encode_exception(
    "validationException", orjson.dumps({"message": SAID})
)

# Client -> (path, body, the provider's content type, its stream).
STREAMS: dict[str, tuple[str, bytes, dict[str, str], bytes]] = {
    "openai": ("/v1/chat/completions", chat("gpt-4o-mini"), SSE, OPENAI_STREAM),
    "anthropic": ("/v1/messages", MESSAGES, SSE, ANTHROPIC_STREAM),
    "responses": ("/v1/responses", RESPONSES, SSE, RESPONSES_STREAM),
    "converse": (f"/model/{quote(HAIKU, safe='')}/converse-stream", CONVERSE, FRAMES,
                 BEDROCK_STREAM),
    "openai-to-anthropic": ("/anthropic", chat("claude-3-5-haiku-latest"), SSE, ANTHROPIC_STREAM),
    "openai-to-bedrock": ("/v1/chat/completions", chat(HAIKU), FRAMES, BEDROCK_STREAM),
}  # fmt: skip
TRANSLATED = {"openai-to-anthropic", "openai-to-bedrock"}


@pytest.fixture
async def gateway(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    runtime = Runtime(config, services)
    for signer in runtime.signers.values():
        await signer.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


def in_the_key(stream: bytes) -> list[bytes]:
    """Two chunks, the first ending in the middle of the key."""
    cut = stream.index(KEY.encode()) + len(KEY) // 2
    return [stream[:cut], stream[cut:]]


async def play(
    gateway: Processor, path: str, body: bytes, first: Sequence[Any], chunks: Sequence[bytes]
) -> tuple[list[ext.ProcessingResponse], bytes]:
    """The request, its answer begun by the ``first`` messages (the headers, if any, and
    ``chunks[0]``); the answers and what the client read."""

    async def messages_in() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(path, headers=AUTH)
        yield request_body(body)
        for message in first:
            yield message
        # ``first`` ends with the first chunk; the rest end the stream.
        for index, chunk in enumerate(chunks[1:], start=2):
            yield response_body(chunk, end_of_stream=index == len(chunks))

    answers = [answer async for answer in gateway.process(messages_in())]
    return answers, client_body(chunks, answers)


def assert_no_key(answers: list[ext.ProcessingResponse], shown: bytes, services: Services) -> None:
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["outcome"] == "upstream_error"  # the error was still read and recorded
    assert "Invalid value for 'user'" in line["error_message"]
    metadata = b"".join(a.dynamic_metadata.SerializeToString() for a in answers)
    assert KEY.encode() not in orjson.dumps(line)
    assert KEY.encode() not in metadata
    assert KEY.encode() not in shown


@pytest.mark.parametrize("client", list(STREAMS))
async def test_an_error_event_quoting_the_clients_key_shows_it_starred(
    gateway: Processor, services: Services, client: str
) -> None:
    path, body, headers, stream = STREAMS[client]
    chunks = in_the_key(stream)
    sent = [provider_headers(200, headers), response_body(chunks[0], end_of_stream=False)]
    answers, shown = await play(gateway, path, body, sent, chunks)
    assert_no_key(answers, shown, services)
    if client in TRANSLATED:
        assert STARRED.encode() in shown or orjson.dumps(STARRED)[1:-1] in shown
    elif headers is FRAMES:
        # The client's SDK reads the exception, starred, not a broken frame.
        buffer = EventStreamBuffer()
        buffer.add_data(shown)
        _, failure = list(buffer)
        assert orjson.loads(failure.payload)["message"] == STARRED
    else:
        assert shown == stream.replace(KEY.encode(), b"*" * len(KEY))


async def test_an_error_event_on_the_lean_path_keeps_its_length(
    gateway: Processor, services: Services
) -> None:
    # The model in the path: the lean path is chosen before the body is read, and the
    # stream's first chunk comes with no headers message.
    chunks = in_the_key(OPENAI_STREAM)
    first = [first_chunk(chunks[0], 200)]
    answers, shown = await play(gateway, "/openai/gpt-4o-mini", chat("gpt-4o-mini"), first, chunks)
    assert not any(a.HasField("response_headers") for a in answers)
    assert_no_key(answers, shown, services)
    assert shown == OPENAI_STREAM.replace(KEY.encode(), b"*" * len(KEY))
