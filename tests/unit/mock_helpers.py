"""What the mock provider's unit tests share: the mock on a free port, the official clients and
raw httpx pointed at it, and one Anthropic question asked plain, whole or streamed.

tests/unit/conftest.py registers the fixtures for every unit test. A module that needs a mock of
its own (other ``MockOptions``, another key) defines its own ``mock_url`` or client, and pytest
prefers the module's fixture over these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping

import httpx
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import Message, MessageParam
from openai import AsyncOpenAI

from extproc.testing import serve_mock

# The keys the clients send; recorder tests assert them, the mock only wants one present.
OPENAI_KEY = "sk-test"
ANTHROPIC_KEY = "sk-ant-test"


@pytest.fixture(scope="module")
async def mock_url() -> AsyncIterator[str]:
    """One mock per test module, so a module's recorder checks see only that module's calls."""
    async with serve_mock() as url:
        yield url


@pytest.fixture
async def http(mock_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Raw httpx, for what the official clients hide or refuse to send."""
    async with httpx.AsyncClient(base_url=mock_url) as c:
        yield c


@pytest.fixture
async def openai_client(mock_url: str) -> AsyncIterator[AsyncOpenAI]:
    # No retries: a fault the mock injects must reach the test, not be retried away.
    async with AsyncOpenAI(base_url=f"{mock_url}/v1", api_key=OPENAI_KEY, max_retries=0) as c:
        yield c


@pytest.fixture
async def anthropic_client(mock_url: str) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=mock_url, api_key=ANTHROPIC_KEY, max_retries=0) as c:
        yield c


async def anthropic_message(
    client: AsyncAnthropic,
    messages: Iterable[MessageParam],
    *,
    headers: Mapping[str, str] | None = None,
    stream: bool = False,
    model: str = "m",
    max_tokens: int = 50,
) -> Message:
    """The answer to ``messages``: sent whole, or rebuilt by the client from the streamed events."""
    if not stream:
        return await client.messages.create(
            model=model, max_tokens=max_tokens, messages=messages, extra_headers=headers
        )
    async with client.messages.stream(
        model=model, max_tokens=max_tokens, messages=messages, extra_headers=headers
    ) as events:
        return await events.get_final_message()


async def plain_whole_and_streamed(
    client: AsyncAnthropic, messages: Iterable[MessageParam], headers: Mapping[str, str]
) -> tuple[Message, Message, Message]:
    """The same question asked without ``headers`` (the baseline a test compares against), then
    with them answered whole, then with them streamed: both paths must report the same usage."""
    plain = await anthropic_message(client, messages)
    whole = await anthropic_message(client, messages, headers=headers)
    streamed = await anthropic_message(client, messages, headers=headers, stream=True)
    return plain, whole, streamed
