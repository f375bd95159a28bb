"""The mock reports the service tier that served a request, as OpenAI and Anthropic do.

OpenAI: the tier the request asks for (``service_tier``) is the one the answer names, at
the top level of the completion and of every chunk; ``auto`` or none is ``default``.
Anthropic: ``usage.service_tier`` is ``standard``, or ``priority`` when the test gives the
organisation Priority Tier capacity (``x-mock-service-tier: priority``) and the request
does not ask for ``standard_only``.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam
from openai import AsyncOpenAI

from tests.unit.mock_helpers import anthropic_message

PROMPT: list[Any] = [{"role": "user", "content": "Tag this ticket"}]
MESSAGES: list[MessageParam] = [{"role": "user", "content": "Tag this ticket"}]
PRIORITY = {"x-mock-service-tier": "priority"}


@pytest.mark.parametrize(
    ("asked", "served"),
    [("flex", "flex"), ("priority", "priority"), ("fast", "priority"), ("auto", "default"),
     ("default", "default"), (None, "default")],
)  # fmt: skip
async def test_openai_answers_name_the_tier_that_served_them(
    openai_client: AsyncOpenAI, asked: Any, served: str
) -> None:
    extra = {} if asked is None else {"service_tier": asked}
    answer = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, **extra
    )
    assert answer.service_tier == served
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, stream=True,
        stream_options={"include_usage": True}, **extra,
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    # Every chunk names it, the usage chunk included.
    assert {chunk.service_tier for chunk in chunks} == {served}
    assert chunks[-1].usage is not None


async def test_openai_refuses_a_tier_it_does_not_know(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, extra_body={"service_tier": "cheapest"}
        )
    assert caught.value.param == "service_tier"


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_serves_at_standard_unless_the_org_has_priority_capacity(
    anthropic_client: AsyncAnthropic, stream: bool
) -> None:
    plain = await anthropic_message(anthropic_client, MESSAGES, stream=stream)
    assert plain.usage.service_tier == "standard"
    priority = await anthropic_message(anthropic_client, MESSAGES, headers=PRIORITY, stream=stream)
    assert priority.usage.service_tier == "priority"
    # The tier changes the bill, not the counts.
    assert priority.usage.input_tokens == plain.usage.input_tokens


async def test_a_standard_only_request_is_served_at_standard(
    anthropic_client: AsyncAnthropic,
) -> None:
    answer = await anthropic_client.messages.create(
        model="m", max_tokens=50, messages=MESSAGES, service_tier="standard_only",
        extra_headers=PRIORITY,
    )  # fmt: skip
    assert answer.usage.service_tier == "standard"


async def test_an_anthropic_stream_names_its_tier_in_message_start(
    http: httpx.AsyncClient,
) -> None:
    body = {"model": "m", "max_tokens": 50, "messages": MESSAGES, "stream": True}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01", **PRIORITY}
    answer = await http.post("/v1/messages", json=body, headers=headers)
    events = [
        orjson.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:")
    ]
    [start] = [event for event in events if event["type"] == "message_start"]
    assert start["message"]["usage"]["service_tier"] == "priority"


@pytest.mark.parametrize(
    ("field", "header", "named"),
    [("priority", None, "service_tier"), (None, "premium", "x-mock-service-tier")],
)
async def test_anthropic_refuses_a_tier_it_does_not_serve(
    anthropic_client: AsyncAnthropic, field: str | None, header: str | None, named: str
) -> None:
    extra_body = {} if field is None else {"service_tier": field}
    extra_headers = {} if header is None else {"x-mock-service-tier": header}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await anthropic_client.messages.create(
            model="m", max_tokens=50, messages=MESSAGES, extra_body=extra_body,
            extra_headers=extra_headers,
        )  # fmt: skip
    assert named in str(caught.value)
