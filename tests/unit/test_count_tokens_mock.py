"""The mock answers Anthropic's count_tokens like the real API: a count, nothing generated."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest
from anthropic import AsyncAnthropic

MODEL = "claude-sonnet-4-5"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello, mock!"}]
HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


async def test_the_count_is_the_input_tokens_a_message_would_report(
    anthropic_client: AsyncAnthropic,
) -> None:
    for system in (None, "Be brief."):
        extra: dict[str, Any] = {} if system is None else {"system": system}
        counted = await anthropic_client.messages.count_tokens(
            model=MODEL, messages=MESSAGES, **extra
        )
        message = await anthropic_client.messages.create(
            model=MODEL, max_tokens=5, messages=MESSAGES, **extra
        )
        assert counted.input_tokens == message.usage.input_tokens > 0


async def test_the_answer_is_exactly_anthropics_shape(http: httpx.AsyncClient) -> None:
    answer = await http.post(
        "/v1/messages/count_tokens",
        json={"model": MODEL, "messages": MESSAGES},
        headers=HEADERS,
    )
    assert answer.status_code == 200
    assert answer.json() == {"input_tokens": 11}


@pytest.mark.parametrize("field", ["max_tokens", "stream", "temperature", "stop_sequences"])
async def test_generation_fields_are_refused_as_extra_inputs(
    anthropic_client: AsyncAnthropic, field: str
) -> None:
    values = {"max_tokens": 5, "stream": False, "temperature": 0.5, "stop_sequences": ["x"]}
    with pytest.raises(anthropic.BadRequestError) as refused:
        await anthropic_client.messages.count_tokens(
            model=MODEL, messages=MESSAGES, extra_body={field: values[field]}
        )
    assert refused.value.body["error"]["message"] == f"{field}: Extra inputs are not permitted"  # type: ignore[index]


async def test_a_count_without_a_key_or_messages_is_refused(http: httpx.AsyncClient) -> None:
    keyless = await http.post(
        "/v1/messages/count_tokens",
        json={"model": MODEL, "messages": MESSAGES},
        headers={"anthropic-version": "2023-06-01"},
    )
    empty = await http.post(
        "/v1/messages/count_tokens", json={"model": MODEL, "messages": []}, headers=HEADERS
    )
    assert keyless.status_code == 401
    assert keyless.json()["error"]["type"] == "authentication_error"
    assert empty.status_code == 400
    assert empty.json()["type"] == "error"
