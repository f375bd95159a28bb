"""A provider that streams a request that did not ask for a stream, through Envoy.

The mock streams regardless on request (``x-mock-fault: stream_anyway=1``, its usage
chunk included); the official openai client sends a plain, non-streamed chat request
through the real Envoy and gateway (the lean path: Envoy's reading of the body says no
stream, so the answer comes in one buffered message). The client gets the provider's
stream as it came, and the log line bills the stream's usage chunk, not the prompt's
estimate.
"""

from __future__ import annotations

import orjson
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog

QUESTION = [{"role": "user", "content": "Tell me about answers that stream regardless."}]


def openai_client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=stack.base_url + "/v1", api_key="team1-key", max_retries=0)


def data_events(text: str) -> list[dict[str, object]]:
    return [
        orjson.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: {")
    ]


def test_a_stream_answering_a_plain_chat_request_is_billed_from_its_usage_chunk(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    raw = openai_client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=QUESTION,
        extra_headers={"x-mock-fault": "stream_anyway=1"},
    )

    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = data_events(raw.http_response.text)
    assert raw.http_response.text.endswith("data: [DONE]\n\n")
    # The usage chunk the provider sent unasked reaches the client: the gateway asked for none.
    usage = chunks[-1]["usage"]
    assert isinstance(usage, dict) and usage["completion_tokens"] > 0
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert (line["stream"], line["outcome"]) == (False, "completed")


def test_such_a_stream_without_usage_is_charged_a_streams_estimate(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    raw = openai_client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=QUESTION,
        extra_headers={"x-mock-fault": "stream_anyway=1;no_usage=1"},
    )

    chunks = data_events(raw.http_response.text)
    text = "".join(
        str(choice["delta"].get("content") or "")  # type: ignore[index]
        for chunk in chunks
        for choice in chunk["choices"]  # type: ignore[attr-defined]
    )
    assert text
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["usage_estimated"] is True
    # The text it streamed is charged, not the prompt alone.
    assert line["completion_tokens"] > 0 and line["prompt_tokens"] > 0
