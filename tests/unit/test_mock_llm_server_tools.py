"""The mock reports Anthropic's server tool use when a test asks (x-mock-server-tool-use)."""

from __future__ import annotations

import anthropic
import httpx
import orjson
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam

from extproc.mock_llm.anthropic_api import ServerToolSpecError, server_tool_requests
from tests.unit.mock_helpers import anthropic_message, plain_whole_and_streamed

MESSAGES: list[MessageParam] = [{"role": "user", "content": "What happened in the news today?"}]
ASKED = {"x-mock-server-tool-use": "web_search=3; web_fetch=1"}


async def test_the_anthropic_client_reads_the_server_tool_requests(
    anthropic_client: AsyncAnthropic,
) -> None:
    plain, answered, streamed = await plain_whole_and_streamed(anthropic_client, MESSAGES, ASKED)
    assert plain.usage.server_tool_use is None
    for message in (answered, streamed):
        used = message.usage.server_tool_use
        assert used is not None
        assert (used.web_search_requests, used.web_fetch_requests) == (3, 1)
        # Server tools cost requests, not tokens: the counts are those of a plain answer.
        assert message.usage.input_tokens == plain.usage.input_tokens


async def test_a_stream_reports_no_request_before_they_run(http: httpx.AsyncClient) -> None:
    body = {"model": "m", "max_tokens": 50, "messages": MESSAGES, "stream": True}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01", **ASKED}
    answer = await http.post("/v1/messages", json=body, headers=headers)
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


async def test_any_tool_name_is_reported(anthropic_client: AsyncAnthropic) -> None:
    raw = await anthropic_client.messages.with_raw_response.create(
        model="m",
        max_tokens=50,
        messages=MESSAGES,
        extra_headers={"x-mock-server-tool-use": "code_execution=2"},
    )
    body = orjson.loads(await raw.read())
    assert body["usage"]["server_tool_use"] == {"code_execution_requests": 2}


async def test_a_malformed_request_is_refused_naming_the_header(
    anthropic_client: AsyncAnthropic,
) -> None:
    malformed = {"x-mock-server-tool-use": "web_search=many"}
    with pytest.raises(anthropic.BadRequestError, match="x-mock-server-tool-use"):
        await anthropic_message(anthropic_client, MESSAGES, headers=malformed)


@pytest.mark.parametrize("spec", ["web_search=-1", "web_search", "Web-Search=1", "=3", "a=²"])
def test_a_malformed_header_names_itself(spec: str) -> None:
    with pytest.raises(ServerToolSpecError, match="x-mock-server-tool-use"):
        server_tool_requests({"x-mock-server-tool-use": spec})
