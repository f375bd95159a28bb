"""The mock's web search: Claude's answer to a request that gives it Anthropic's search tool.

A request whose ``tools`` hold Anthropic's web search tool (``type: web_search_<date>``)
is answered as Claude answers after one search, in Anthropic's block order: a
``server_tool_use`` block (the query, the question's text), its ``web_search_tool_result``
(one page, ``PAGE``), then the reply's text in two text blocks: its first piece uncited,
the rest citing the page (a ``web_search_result_location`` citation). A stream sends the
citation as a ``citations_delta`` before the cited text, as Anthropic does. The text is the
reply any request gets, so only the blocks around it and the citation tell a search apart;
usage reports the one search (``web_search_requests: 1``) unless the test asked for its own
counts (``x-mock-server-tool-use``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from extproc.mock_llm.tokens import message_text

# Anthropic's web search tools are versioned by date: web_search_20250305, ...
_SEARCH_TOOL_PREFIX = "web_search_"
# The query is the question, cut as a search box would take it.
_QUERY_CHARS = 200


@dataclass(frozen=True, slots=True)
class Page:
    """The page a mock search finds and the answer cites."""

    url: str
    title: str
    cited_text: str


PAGE = Page(
    url="https://search.example/mock-result",
    title="Mock search result",
    cited_text="What the mock search found.",
)


@dataclass(frozen=True, slots=True)
class WebSearch:
    """One search the answer ran, and the page it read."""

    query: str
    page: Page = PAGE

    def tool_use_id(self, message_id: str) -> str:
        # Server tool use ids look like Anthropic's (srvtoolu_...), unique per answer.
        return f"srvtoolu{message_id[3:]}"

    def call_blocks(self, message_id: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """The search's blocks as a stream starts them, with their deltas: the call (its
        input streamed, opened by an empty piece as Anthropic does) and its result, whole."""
        call_id = self.tool_use_id(message_id)
        call = {"type": "server_tool_use", "id": call_id, "name": "web_search", "input": {}}
        query = orjson.dumps({"query": self.query}).decode()
        pieces = [{"type": "input_json_delta", "partial_json": piece} for piece in ("", query)]
        return [(call, pieces), (self.result_block(call_id), [])]

    def call_content(self, message_id: str) -> list[dict[str, Any]]:
        """The search's blocks in a whole message."""
        call_id = self.tool_use_id(message_id)
        call = {
            "type": "server_tool_use",
            "id": call_id,
            "name": "web_search",
            "input": {"query": self.query},
        }
        return [call, self.result_block(call_id)]

    def result_block(self, call_id: str) -> dict[str, Any]:
        result = {
            "type": "web_search_result",
            "url": self.page.url,
            "title": self.page.title,
            "encrypted_content": "EqgfCioIARgBIiQ3YTAwbW9jaw",
            "page_age": "1 hour ago",
        }
        return {"type": "web_search_tool_result", "tool_use_id": call_id, "content": [result]}

    def citation(self) -> dict[str, Any]:
        return {
            "type": "web_search_result_location",
            "url": self.page.url,
            "title": self.page.title,
            "encrypted_index": "Eo8BCioIAhgBIiQyYjQ0bW9jaw",
            "cited_text": self.page.cited_text,
        }

    def text_blocks(self, pieces: list[str]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """The reply's text as a stream sends it: the first piece uncited, then the rest
        in a block whose first delta cites the page."""
        uncited, cited = pieces[:1], pieces[1:]
        blocks = [({"type": "text", "text": ""}, _text_deltas(uncited))]
        if cited:
            citing = [{"type": "citations_delta", "citation": self.citation()}]
            blocks.append(({"type": "text", "text": ""}, citing + _text_deltas(cited)))
        return blocks

    def text_content(self, pieces: list[str]) -> list[dict[str, Any]]:
        """The reply's text blocks in a whole message."""
        content: list[dict[str, Any]] = [{"type": "text", "text": "".join(pieces[:1])}]
        if pieces[1:]:
            cited = {"type": "text", "text": "".join(pieces[1:]), "citations": [self.citation()]}
            content.append(cited)
        return content


def _text_deltas(pieces: list[str]) -> list[dict[str, Any]]:
    return [{"type": "text_delta", "text": piece} for piece in pieces]


def asked_search(
    tools: tuple[dict[str, Any], ...], messages: list[dict[str, Any]]
) -> WebSearch | None:
    """The search a request's tools let Claude run (None without the search tool): its
    query is the last user turn's text."""
    if not any(str(tool.get("type", "")).startswith(_SEARCH_TOOL_PREFIX) for tool in tools):
        return None
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    question = message_text(last_user.get("content")) if last_user is not None else ""
    return WebSearch(" ".join(question[:_QUERY_CHARS].split()))
