"""The mock reports Anthropic's server tool use when a test asks (x-mock-server-tool-use)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import httpx
import orjson
import pytest

from extproc.mock_llm.anthropic_api import ServerToolSpecError, server_tool_requests
from extproc.testing import serve_mock

MESSAGES = [{"role": "user", "content": "What happened in the news today?"}]
ASKED = {"x-mock-server-tool-use": "web_search=3; web_fetch=1"}


@pytest.fixture(scope="module")
async def mock_url() -> AsyncIterator[str]:
    async with serve_mock() as url:
        yield url


async def test_the_anthropic_client_reads_the_server_tool_requests(mock_url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=mock_url, api_key="k", max_retries=0) as c:
        plain = await c.messages.create(model="m", max_tokens=50, messages=MESSAGES)  # type: ignore[arg-type]
        answered = await c.messages.create(
            model="m",
            max_tokens=50,
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers=ASKED,
        )
        async with c.messages.stream(
            model="m",
            max_tokens=50,
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers=ASKED,
        ) as stream:
            streamed = await stream.get_final_message()
    assert plain.usage.server_tool_use is None
    for message in (answered, streamed):
        used = message.usage.server_tool_use
        assert used is not None
        assert (used.web_search_requests, used.web_fetch_requests) == (3, 1)
        # Server tools cost requests, not tokens: the counts are those of a plain answer.
        assert message.usage.input_tokens == plain.usage.input_tokens


async def test_a_stream_reports_no_request_before_they_run(mock_url: str) -> None:
    body = {"model": "m", "max_tokens": 50, "messages": MESSAGES, "stream": True}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01", **ASKED}
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{mock_url}/v1/messages", json=body, headers=headers)
    events = [
        orjson.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:")
    ]
    usages = {e["type"]: e.get("usage") or e.get("message", {}).get("usage") for e in events}
    zero = {"web_search_requests": 0, "web_fetch_requests": 0}
    assert usages["message_start"]["server_tool_use"] == zero
    assert usages["message_delta"]["server_tool_use"] == {
        "web_search_requests": 3,
        "web_fetch_requests": 1,
    }


async def test_any_tool_name_is_reported(mock_url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=mock_url, api_key="k", max_retries=0) as c:
        raw = await c.messages.with_raw_response.create(
            model="m",
            max_tokens=50,
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers={"x-mock-server-tool-use": "code_execution=2"},
        )
    body = orjson.loads(await raw.read())
    assert body["usage"]["server_tool_use"] == {"code_execution_requests": 2}


async def test_a_malformed_request_is_refused_naming_the_header(mock_url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=mock_url, api_key="k", max_retries=0) as c:
        with pytest.raises(anthropic.BadRequestError, match="x-mock-server-tool-use"):
            await c.messages.create(
                model="m",
                max_tokens=50,
                messages=MESSAGES,  # type: ignore[arg-type]
                extra_headers={"x-mock-server-tool-use": "web_search=many"},
            )


@pytest.mark.parametrize("spec", ["web_search=-1", "web_search", "Web-Search=1", "=3", "a=²"])
def test_a_malformed_header_names_itself(spec: str) -> None:
    with pytest.raises(ServerToolSpecError, match="x-mock-server-tool-use"):
        server_tool_requests({"x-mock-server-tool-use": spec})
