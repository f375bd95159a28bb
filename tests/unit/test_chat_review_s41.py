"""Chat completions to an OpenAI-compatible provider, streamed: the usage the gateway asks
for is counted once and hidden from a client that did not ask, however the stream is cut
into body messages, on the full response path and the lean one (no headers message)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config import load_config
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.sse_play import play_sse
from tests.unit.test_response_path import first_chunk

PLAIN = load_config("config/gateway.yaml", environ={})
AUTH = {"authorization": "Bearer team1-key"}
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
# What the log line says of a stream billed by the provider's report.
BILLED = (11, 7, True, False, "completed")


def event(eol: bytes, choices: list[dict[str, Any]], **fields: Any) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    return b"data: " + orjson.dumps({**chunk, "choices": choices, **fields}) + eol + eol


def answer(eol: bytes = b"\n", *, n: int = 1, done: bool = True) -> bytes:
    """OpenAI's stream once usage was asked for: ``n`` choices interleaved, ``"usage":
    null`` on each chunk, the usage-only chunk last, then ``[DONE]``."""
    sent = b""
    for words in ("Hello", " world"):
        for index in range(n):
            sent += event(eol, [{"index": index, "delta": {"content": words}}], usage=None)
    for index in range(n):
        finished = [{"index": index, "delta": {}, "finish_reason": "stop"}]
        sent += event(eol, finished, usage=None)
    sent += event(eol, [], usage=USAGE)
    return sent + (b"data: [DONE]" + eol + eol if done else b"")


def request(**fields: Any) -> bytes:
    asked = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return orjson.dumps({**asked, **fields})


class Played:
    def __init__(self, body: bytes, line: dict[str, Any], upstream: dict[str, Any]) -> None:
        self.body = body.replace(b"\r\n", b"\n")
        self.line = line
        self.upstream = upstream

    @property
    def charged(self) -> tuple[Any, ...]:
        line = self.line
        fields = ("prompt_tokens", "completion_tokens", "usage_reported", "usage_estimated")
        return (*(line[name] for name in fields), line["outcome"])


class Gateway:
    """A processor and the log it writes; streams played one after another through one
    gateway, as a running one serves them, each read by its own log line."""

    def __init__(self) -> None:
        self.log = MemoryLog()
        self.processor = processor_for(PLAIN, Services(GatewayMetrics(), self.log))


async def play(
    body: bytes, chunks: list[bytes], *, lean: bool = False, gateway: Gateway | None = None
) -> Played:
    """The client sends ``body``; the provider's 200 stream comes in ``chunks``, the last
    ending it. ``lean``: on the lean path, its status told by the first body message.
    Through ``gateway`` (a new one when None)."""
    gateway = gateway or Gateway()
    log, processor = gateway.log, gateway.processor
    log.buffer.seek(0)
    log.buffer.truncate()  # the lines of the streams played before
    if lean:
        opening = first_chunk(chunks[0], 200)
        opening.response_body.end_of_stream = len(chunks) == 1
        rest = chunks[1:]
        answers = await run_stream(
            processor,
            [
                request_headers("/openai/gpt-4o-mini", headers=AUTH),
                request_body(body),
                opening,
                *(response_body(c, end_of_stream=i == len(rest) - 1) for i, c in enumerate(rest)),
            ],
        )
        shown = client_body(chunks, answers[2:])
    else:
        answers = await play_sse(processor, "/v1/chat/completions", AUTH, body, chunks)
        shown = client_body(chunks, answers)
    mutation = answers[1].request_body.response.body_mutation
    upstream = orjson.loads(mutation.body) if mutation.body else orjson.loads(body)
    [line] = log.lines()
    return Played(shown, line, upstream)


@pytest.mark.parametrize("lean", [False, True], ids=["full-path", "lean-path"])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("asked", [False, True], ids=["usage-hidden", "usage-asked"])
async def test_the_last_events_cut_at_any_byte_are_billed_once_and_shown_as_asked(
    lean: bool, eol: bytes, asked: bool
) -> None:
    whole = answer(eol)
    # Every cut from the last choice chunk's start to the end of [DONE].
    tail = len(event(eol, [], usage=USAGE)) + len(b"data: [DONE]" + eol + eol) + 40
    body = request(stream_options={"include_usage": True}) if asked else request()
    # One gateway for every cut: building one cost as much as a stream through it.
    gateway = Gateway()
    for cut in range(len(whole) - tail, len(whole)):
        played = await play(body, [whole[:cut], whole[cut:]], lean=lean, gateway=gateway)
        assert played.charged == BILLED, cut
        assert played.line["finish_reasons"] == ["stop"], cut
        assert (b'"usage":{' in played.body) is asked, cut
        assert played.body.count(b"Hello") == 1 and played.body.endswith(b"[DONE]\n\n"), cut


@pytest.mark.parametrize("lean", [False, True], ids=["full-path", "lean-path"])
async def test_a_stream_without_done_is_billed_by_its_last_chunk(lean: bool) -> None:
    whole = answer(b"\r\n", done=False)
    played = await play(request(), [whole[:-30], whole[-30:], b""], lean=lean)
    assert played.charged == BILLED
    assert b'"usage":{' not in played.body and played.body.count(b" world") == 1


async def test_n_choices_interleaved_are_billed_by_their_one_report() -> None:
    played = await play(request(n=2), [answer(n=2)])
    assert played.charged == BILLED
    assert played.line["finish_reasons"] == ["stop", "stop"]
    assert played.body.count(b"Hello") == 2 and b'"usage":{' not in played.body


@pytest.mark.parametrize(
    "options",
    [{"include_usage": False}, {"include_usage": "yes"}, "yes", [], None],
    ids=["false", "not-a-bool", "a-string", "a-list", "null"],
)
async def test_a_client_that_did_not_ask_plainly_for_usage_is_billed_without_seeing_it(
    options: Any,
) -> None:
    played = await play(request(stream_options=options), [answer()])
    assert played.upstream["stream_options"]["include_usage"] is True
    assert played.charged == BILLED
    assert b'"usage":{' not in played.body


async def test_a_usage_report_beside_a_delta_keeps_the_delta_for_the_client() -> None:
    # Mistral and llama.cpp put the report in the finish chunk, which carries text too.
    last = [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}]
    stream = event(b"\n", [{"index": 0, "delta": {"content": "Hi"}}]) + event(
        b"\n", last, usage=USAGE
    )
    played = await play(request(), [stream + b"data: [DONE]\n\n"])
    assert played.charged == BILLED
    assert b'"content":"!"' in played.body and b'"usage"' not in played.body
    assert played.line["finish_reasons"] == ["stop"]
