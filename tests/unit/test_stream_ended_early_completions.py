"""A text completions stream (``/v1/completions``) its provider ends early reaches the
client as the gateway's error, worded and logged as every other translation's.

The route has one backend, OpenAI-compatible providers (``type: openai``), read by chat's
stream reader. A stream that ended after its first text and before a finish reason, its
usage or ``[DONE]``, or inside an event, already ended with the gateway's error. But the
answer counted as ended at the first ``finish_reason``: a text completion streams one
choice per prompt of a batch (and ``n`` per prompt), interleaved, and the first finishes
long before the others. A stream cut after prompt 0's finish reason and inside prompt
1's text reached the client as it came, the OpenAI SDK returning prompt 1's half text
as whole, and was logged ``completed``. (Chat with ``n`` > 1 had the same gap.) Now the
answer ends when every choice asked for has its finish reason (or ``[DONE]`` comes).

Each test plays the provider's stream through the processor and hands what the client
receives to the official OpenAI SDK (test_stream_ended_early_wording pins the reader's
wording beside every other translation's).
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import client_body, request_body, request_headers, response_body, run_stream
from tests.unit.sse_play import only_line, play_sse
from tests.unit.test_completions_api import AUTH, COMPLETIONS, DONE, completion, usage_chunk
from tests.unit.test_response_path import first_chunk

ENDED_EARLY = "the provider's stream ended before it was complete"
CHAT = "/v1/chat/completions"


def text(value: str, index: int = 0, finish: str | None = None) -> bytes:
    """One streamed ``text_completion`` chunk of choice ``index``."""
    event = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"text": value, "index": index, "logprobs": None,
                          "finish_reason": finish}], "usage": None}  # fmt: skip
    return b"data: " + orjson.dumps(event) + b"\n\n"


def delta(value: str, index: int = 0, finish: str | None = None) -> bytes:
    """One streamed ``chat.completion.chunk`` of choice ``index``."""
    event = {"id": "c-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": index, "delta": {"content": value},
                          "finish_reason": finish}], "usage": None}  # fmt: skip
    return b"data: " + orjson.dumps(event) + b"\n\n"


def sdk_reads(received: bytes, chat: bool) -> list[Any]:
    """What the official SDK makes of the bytes the client received: its chunks, or the
    error it raises."""

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=received)

    client = openai.OpenAI(
        api_key="k", base_url="http://gw/v1", max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(reply)),
    )  # fmt: skip
    stream: Any
    if chat:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    else:
        stream = client.completions.create(model="gpt-4o-mini", prompt="hi", stream=True)
    return list(stream)


def assert_ended_early(services: Services, received: bytes, chat: bool = False) -> None:
    with pytest.raises(openai.APIError, match="ended before it was complete"):
        sdk_reads(received, chat)
    line = only_line(services)
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert (line["error_type"], line["error_code"], line["error_message"]) == (
        "upstream_error", "invalid_upstream_response", ENDED_EARLY,
    )  # fmt: skip
    # Charged as a stream its provider failed: the prompt and the text streamed.
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert line["prompt_tokens"] >= 1 and line["completion_tokens"] >= 1


BATCH = completion(stream=True, prompt=["Say one", "Say two"])
CUT_STREAMS = [
    pytest.param(completion(stream=True), [text("This is"), text(" a te")], id="before-finish"),
    pytest.param(completion(stream=True), [text("This is"), text(" a test")[:40]],
                 id="inside-an-event"),
    # Prompt 0 finished, prompt 1 cut in its text: the leak.
    pytest.param(BATCH, [text("One", 0), text("Two", 1), text(".", 0, "stop"), text(" and", 1)],
                 id="batch-second-prompt-cut"),
    pytest.param(completion(stream=True, n=2),
                 [text("A", 0), text("B", 1), text("", 1, "stop"), text("A again", 0)],
                 id="n2-first-choice-cut"),
    pytest.param(BATCH, [text("One", 0), text(".", 0, "stop"), text("Two", 1)],
                 id="batch-one-prompt-after-another"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "chunks"), CUT_STREAMS)
async def test_a_completions_stream_ended_early_is_the_gateways_error(
    processor: Processor, services: Services, body: bytes, chunks: list[bytes]
) -> None:
    answers = await play_sse(processor, COMPLETIONS, AUTH, body, chunks)
    received = client_body(chunks, answers)
    assert received.endswith(DONE)
    assert_ended_early(services, received)


async def test_a_chat_stream_of_two_choices_cut_in_the_second_is_the_gateways_error(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": True, "n": 2,
                         "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    chunks = [delta("A", 0), delta("B", 1), delta("", 0, "stop"), delta(" and", 1)]
    answers = await play_sse(processor, CHAT, AUTH, body, chunks)
    assert_ended_early(services, client_body(chunks, answers), chat=True)


WHOLE_STREAMS = [
    pytest.param(BATCH, [text("One", 0), text("Two", 1), text(".", 0, "stop"),
                         text(".", 1, "length"), usage_chunk(4, 4), DONE], id="batch"),
    # Every choice finished: the answer is whole, though its usage never came.
    pytest.param(BATCH, [text("One", 0), text(".", 1, "stop"), text(".", 0, "stop")],
                 id="batch-finished-without-usage"),
    # [DONE] ends the answer, whatever choices the provider sent (one that ignores n).
    pytest.param(completion(stream=True, n=3), [text("One", 0, "stop"), DONE],
                 id="done-ends-it"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "chunks"), WHOLE_STREAMS)
async def test_a_whole_completions_stream_passes_as_it_came(
    processor: Processor, services: Services, body: bytes, chunks: list[bytes]
) -> None:
    answers = await play_sse(processor, COMPLETIONS, AUTH, body, chunks)
    received = client_body(chunks, answers)
    assert b"error" not in received
    assert sdk_reads(received, chat=False)
    line = only_line(services)
    assert line["outcome"] == "completed" and line["error_code"] is None


async def test_on_the_lean_path_a_batch_cut_in_its_second_prompt_is_the_gateways_error(
    processor: Processor, services: Services
) -> None:
    # The route's default path (it reaches pass-through providers only): no response
    # headers message, the status told by the first body message.
    chunks = [text("One", 0), text("Two", 1), text(".", 0, "stop"), text(" and", 1)]
    first, *rest = chunks
    answers = await run_stream(
        processor,
        [
            request_headers(COMPLETIONS, headers=AUTH),
            request_body(BATCH),
            first_chunk(first, 200),
            *(response_body(c, end_of_stream=i == len(rest) - 1) for i, c in enumerate(rest)),
        ],
    )
    received = client_body(chunks, answers[2:])
    assert received.endswith(DONE)
    assert_ended_early(services, received)
