"""An OpenAI-compatible or Bedrock stream that fails before its answer began is charged
nothing, as Anthropic's error before ``message_start`` is.

A provider may answer a streamed request with a 200 whose first event is its error: an
OpenAI-compatible server's ``data: {"error": ...}`` before any chunk, Bedrock's
``throttlingException`` or ``serviceUnavailableException`` before ``messageStart``. That
is the streamed form of the error's status (a 429, a 503): nothing was generated and the
provider bills nothing for it, yet the gateway charged the prompt's estimate (quota, log
line, metrics, rollup), so a key throttled by the provider lost budget on every retry,
and the same Claude on Bedrock was free when called by InvokeModel but charged when
called by Converse. Now it is charged as that status is: nothing; the log line still
names the provider's error. An error after the answer began (a chunk, ``messageStart``)
keeps being charged the estimate of what was read and streamed.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from extproc.aws_eventstream import encode_event, encode_exception
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.quota_helpers import capped_runtime, used_tokens

BUDGET = 100_000
AUTH = {"authorization": "Bearer team1-key"}
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PROMPT = [{"role": "user", "content": "What changed this week?"}]
SSE = {"content-type": "text/event-stream"}
FRAMES = {"content-type": "application/vnd.amazon.eventstream"}
FROM_PROVIDER = {"x-envoy-upstream-service-time": "3"}

OPENAI_ERROR = (
    b'data: {"error":{"message":"Rate limit reached for requests","type":"requests",'
    b'"code":"rate_limit_exceeded","param":null}}\n\n'
)
OPENAI_CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant",'
    b'"content":""},"finish_reason":null}]}\n\n'
)
THROTTLED = encode_exception(
    "throttlingException", b'{"message":"Too many requests, please wait before trying again."}'
)
UNAVAILABLE = encode_exception(
    "serviceUnavailableException", b'{"message":"Bedrock is unable to process your request."}'
)
RESPONSES_ERROR = (
    b"event: error\n"
    b'data: {"type":"error","sequence_number":0,"error":{"type":"server_error",'
    b'"code":"server_error","message":"The server is overloaded","param":null}}\n\n'
)
RESPONSE_CREATED = (
    b"event: response.created\n"
    b'data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1",'
    b'"object":"response","status":"in_progress","model":"gpt-4o-mini","output":[]}}\n\n'
)
MESSAGE_START = encode_event("messageStart", orjson.dumps({"role": "assistant"}))
TITAN = "amazon.titan-text-express-v1"
TITAN_CHUNK = encode_event(
    "chunk",
    orjson.dumps(
        {"bytes": base64.b64encode(orjson.dumps({"outputText": "The", "index": 0})).decode()}
    ),
)


def chat(model: str) -> bytes:
    return orjson.dumps({"model": model, "stream": True, "messages": PROMPT})


CONVERSE = orjson.dumps(
    {"messages": [{"role": "user", "content": [{"text": PROMPT[0]["content"]}]}]}
)
# Client -> (path, body, the stream's content type).
CLIENTS: dict[str, tuple[str, bytes, dict[str, str]]] = {
    "openai chat to openai": ("/v1/chat/completions", chat("gpt-4o-mini"), SSE),
    "openai chat to bedrock": ("/v1/chat/completions", chat(HAIKU), FRAMES),
    "responses": (
        "/v1/responses",
        orjson.dumps({"model": "gpt-4o-mini", "stream": True, "input": PROMPT[0]["content"]}),
        SSE,
    ),
    "converse stream": (f"/model/{quote(HAIKU, safe='')}/converse-stream", CONVERSE, FRAMES),
    "titan invoke stream": (
        f"/model/{quote(TITAN, safe='')}/invoke-with-response-stream",
        orjson.dumps({"inputText": PROMPT[0]["content"]}),
        FRAMES,
    ),
}
# Each client's provider error before its answer began, and the event that begins one.
FIRST_ERRORS = {
    "openai chat to openai": [OPENAI_ERROR, b": keep-alive\n\n" + OPENAI_ERROR],
    "openai chat to bedrock": [THROTTLED, UNAVAILABLE],
    # OpenAI's error event, and chat's shape, which some OpenAI-compatible servers send.
    "responses": [RESPONSES_ERROR, OPENAI_ERROR],
    "converse stream": [THROTTLED, UNAVAILABLE],
    "titan invoke stream": [THROTTLED],
}
BEGINNING = {
    "openai chat to openai": OPENAI_CHUNK,
    "openai chat to bedrock": MESSAGE_START,
    "responses": RESPONSE_CREATED,
    "converse stream": MESSAGE_START,
    "titan invoke stream": TITAN_CHUNK,
}
CASES = [
    pytest.param(client, answer, id=f"{client}-{index}")
    for client, answers in FIRST_ERRORS.items()
    for index, answer in enumerate(answers)
]


async def streamed(
    quota_store: QuotaStore, client: str, answer: bytes
) -> tuple[dict[str, Any], Services]:
    """The log line of one streamed request of key team1 answered 200 with ``answer``."""
    runtime, services = capped_runtime(quota_store, BUDGET)
    path, body, content_type = CLIENTS[client]
    await runtime.start()  # Bedrock's calls are signed with the runtime's credentials
    try:
        await run_stream(
            Processor(lambda: runtime, default_stages()),
            [
                request_headers(path, headers=AUTH),
                request_body(body),
                response_headers(200, {**content_type, **FROM_PROVIDER}),
                response_body(answer, end_of_stream=True),
            ],
        )
    finally:
        await runtime.close()
    await quota_store.flush()
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line, services


def token_metrics(services: Services) -> list[float]:
    return [
        sample.value
        for family in services.metrics.registry.collect()
        if family.name == "tokens_consumed"
        for sample in family.samples
        if sample.name == "tokens_consumed_total"
    ]


@pytest.mark.parametrize(("client", "answer"), CASES)
async def test_a_provider_error_before_the_answer_began_is_charged_nothing(
    quota_store: QuotaStore, client: str, answer: bytes
) -> None:
    line, services = await streamed(quota_store, client, answer)
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (0, 0, 0)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, False)
    assert line["outcome"] == "upstream_error"
    assert line["error_message"]
    assert token_metrics(services) == []
    assert await used_tokens(quota_store, BUDGET) == 0


@pytest.mark.parametrize(("client", "answer"), CASES)
async def test_the_same_error_after_the_answer_began_is_still_charged_the_prompt(
    quota_store: QuotaStore, client: str, answer: bytes
) -> None:
    line, _ = await streamed(quota_store, client, BEGINNING[client] + answer)
    assert line["usage_estimated"] is True
    assert line["prompt_tokens"] > 0
    assert line["outcome"] == "upstream_error"
    assert await used_tokens(quota_store, BUDGET) == line["total_tokens"] > 0
