"""A provider that gzips its answer although the gateway asked for none, through Envoy.

The mock compresses on request (``x-mock-fault: gzip=1``); the official clients read the
answer through the real Envoy and gateway, and the gateway's log line shows the usage it
read from the compressed answer.
"""

from __future__ import annotations

from typing import Any

import anthropic
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog

GZIP = {"x-mock-fault": "gzip=1"}
QUESTION = [{"role": "user", "content": "Tell me about compressed answers."}]


def openai_client(stack: LocalStack, base: str = "/v1") -> OpenAI:
    return OpenAI(base_url=stack.base_url + base, api_key="team1-key", max_retries=0)


def billed(line: dict[str, Any]) -> tuple[Any, ...]:
    return (line["prompt_tokens"], line["completion_tokens"], line["usage_reported"])


def test_a_gzipped_chat_answer_is_read_and_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    raw = openai_client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=QUESTION, extra_headers=GZIP
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert billed(line) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        True,
    )


def test_a_gzipped_chat_stream_is_read_billed_and_its_usage_chunk_hidden(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    raw = openai_client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=QUESTION, stream=True, extra_headers=GZIP
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The client did not ask for usage: the chunk the gateway asked for is not shown.
    assert all(chunk.usage is None for chunk in chunks)
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["outcome"] == "completed"
    assert line["usage_reported"] is True and line["completion_tokens"] > 0


def test_a_gzipped_claude_stream_translated_for_an_openai_client_is_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    raw = openai_client(stack, "/anthropic").chat.completions.with_raw_response.create(
        model="claude-3-5-haiku-latest",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=GZIP,
    )
    chunks = list(raw.parse())
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert billed(line) == (usage.prompt_tokens, usage.completion_tokens, True)


def test_a_gzipped_anthropic_message_reaches_the_anthropic_client(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = anthropic.Anthropic(base_url=stack.base_url, api_key="team1-key", max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-3-5-haiku-latest", max_tokens=64, messages=QUESTION, extra_headers=GZIP
    )
    message = raw.parse()
    assert message.content and message.usage.output_tokens > 0
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert billed(line) == (message.usage.input_tokens, message.usage.output_tokens, True)
