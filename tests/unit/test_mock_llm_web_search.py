"""The mock answers a request carrying Anthropic's web search tool as Claude does after a
search: the call, its result, and text citing the page, whole and streamed alike, so a test
of the gateway's citations runs against Anthropic's own shapes."""

from __future__ import annotations

from anthropic import AsyncAnthropic
from anthropic.types import Message, MessageParam, ToolUnionParam

from extproc.mock_llm.web_search import PAGE

MESSAGES: list[MessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
SEARCH: list[ToolUnionParam] = [{"type": "web_search_20250305", "name": "web_search"}]


async def answers(
    client: AsyncAnthropic, headers: dict[str, str] | None = None
) -> tuple[Message, Message]:
    whole = await client.messages.create(
        model="m",
        max_tokens=50,
        messages=MESSAGES,
        tools=SEARCH,
        extra_headers=headers,
    )
    async with client.messages.stream(
        model="m",
        max_tokens=50,
        messages=MESSAGES,
        tools=SEARCH,
        extra_headers=headers,
    ) as events:
        streamed = await events.get_final_message()
    return whole, streamed


async def test_a_search_answer_cites_the_page_whole_and_streamed(
    anthropic_client: AsyncAnthropic,
) -> None:
    plain = await anthropic_client.messages.create(model="m", max_tokens=50, messages=MESSAGES)
    for message in await answers(anthropic_client):
        kinds = [block.type for block in message.content]
        assert kinds == ["server_tool_use", "web_search_tool_result", "text", "text"]
        call, _, uncited, cited = message.content
        assert call.type == "server_tool_use" and call.input == {
            "query": "What is the weather in Paris?"
        }
        assert uncited.type == "text" and cited.type == "text"
        # The text is any answer's; the second block cites the page the search found.
        assert uncited.text + cited.text == "".join(
            b.text for b in plain.content if b.type == "text"
        )
        assert not uncited.citations
        [citation] = cited.citations or []
        assert citation.type == "web_search_result_location"
        assert (citation.url, citation.title) == (PAGE.url, PAGE.title)
        assert message.usage.server_tool_use is not None
        assert message.usage.server_tool_use.web_search_requests == 1
        assert message.usage.output_tokens == plain.usage.output_tokens


async def test_a_test_can_still_set_the_search_count(anthropic_client: AsyncAnthropic) -> None:
    asked = {"x-mock-server-tool-use": "web_search=3"}
    for message in await answers(anthropic_client, asked):
        assert message.usage.server_tool_use is not None
        assert message.usage.server_tool_use.web_search_requests == 3


async def test_without_the_search_tool_the_answer_is_plain_text(
    anthropic_client: AsyncAnthropic,
) -> None:
    plain = await anthropic_client.messages.create(model="m", max_tokens=50, messages=MESSAGES)
    assert [block.type for block in plain.content] == ["text"]
    assert plain.usage.server_tool_use is None
