"""A provider's answer names the account the gateway's key bills: its organisation and
its rate limits for the whole account. Callers of the gateway see none of it.

The mock sends them as OpenAI and Anthropic do on every answer; each test first checks
that it does, so that the gateway's answer lacking them says something.
"""

from __future__ import annotations

import anthropic
import httpx
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.mock_llm import ANTHROPIC_ACCOUNT_ANSWER_HEADERS, OPENAI_ACCOUNT_ANSWER_HEADERS

CLIENT_KEY = "team1-key"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hi"}],
}


def _sent_by_the_mock(stack: LocalStack, path: str, body: dict[str, object]) -> httpx.Headers:
    # Each API's own credential and version headers; the mock takes any key.
    headers = {"authorization": "Bearer k", "x-api-key": "k", "anthropic-version": "2023-06-01"}
    answer = httpx.post(f"{stack.mock_url}{path}", json=body, headers=headers)
    assert answer.status_code == 200
    return answer.headers


def test_openai_clients_see_neither_the_organisation_nor_its_limits(stack: LocalStack) -> None:
    sent = _sent_by_the_mock(stack, "/v1/chat/completions", CHAT)
    assert all(sent.get(name) == value for name, value in OPENAI_ACCOUNT_ANSWER_HEADERS.items())

    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=CLIENT_KEY, max_retries=0)
    answer = client.chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as streamed:  # type: ignore[call-overload]
        list(streamed.iter_lines())
    for headers in (answer.headers, streamed.headers):
        # No quota rule applies to this key in the default config: no x-ratelimit-* at all,
        # rather than the account's, which the client would take for its own.
        assert set(OPENAI_ACCOUNT_ANSWER_HEADERS) & set(headers) == set()
        assert "mock-org" not in str(headers)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_clients_see_neither_the_organisation_nor_its_limits(
    stack: LocalStack, stream: bool
) -> None:
    sent = _sent_by_the_mock(stack, "/v1/messages", MESSAGE)
    assert all(sent.get(name) == value for name, value in ANTHROPIC_ACCOUNT_ANSWER_HEADERS.items())

    client = anthropic.Anthropic(
        base_url=stack.base_url,
        api_key=None,
        default_headers={"x-api-key": CLIENT_KEY},
        max_retries=0,
    )
    if stream:
        with client.messages.stream(**MESSAGE) as events:  # type: ignore[arg-type]
            events.get_final_message()
            headers = events.response.headers
    else:
        headers = client.messages.with_raw_response.create(**MESSAGE).headers  # type: ignore[arg-type]
    assert [name for name in headers if name.startswith("anthropic-")] == []
    assert "x-request-id" in headers  # the answer itself came through
