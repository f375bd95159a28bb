"""Request guards read server tools' settings: the domains and the user's location.

Web search and fetch settings (Anthropic's ``allowed_domains``, ``blocked_domains`` and
``user_location``, the Responses API's ``filters.allowed_domains``, chat's
``web_search_options.user_location``, Gemini's ``googleSearch.excludeDomains``), a
Responses file search's ``filters`` (attribute keys and values) and Gemini's
``toolConfig.retrievalConfig.languageCode`` leave for the provider, which hands them to
its search. They were never read: a refused term
or a key put there passed every guard. Now they are read as the developer's text, and,
since a masked domain or country code would no longer be one, a mask there refuses.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.unit.test_gemini_guard_flow import GENERATE, gateway, refusal, upstream
from tests.unit.test_guard_call_names import FALCON, GUARDS, MESSAGE, gateway_for
from tests.unit.test_guard_flow import upstream_body
from tests.unit.test_guard_tool_definitions import (
    chat,
    gemini,
    messages,
    refused,
    responses,
    vertex,  # noqa: F401 (the fixture the Gemini test takes)
)

MASKED = "a server tool's setting contains EMPLOYEE_ID, which cannot be masked"


def anthropic_search(**settings: Any) -> bytes:
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2, **settings}
    return messages(tools=[tool])


def anthropic_fetch(**settings: Any) -> bytes:
    return messages(tools=[{"type": "web_fetch_20250910", "name": "web_fetch", **settings}])


def responses_search(**settings: Any) -> bytes:
    return responses(tools=[{"type": "web_search", **settings}])


def chat_search(**location: Any) -> bytes:
    approximate = {"country": "US", **location}
    return chat(web_search_options={"user_location": {"type": "approximate",
                                                      "approximate": approximate}})  # fmt: skip


def file_search(filters: dict[str, Any]) -> bytes:
    # The provider hands the filters on to the vector store's search.
    return responses(tools=[{"type": "file_search", "vector_store_ids": ["vs_1"],
                             "filters": filters}])  # fmt: skip


CASES = [
    ("anthropic-messages", "/v1/messages",
     lambda v: anthropic_search(allowed_domains=["docs.example.com", v])),
    ("anthropic-messages", "/v1/messages",
     lambda v: anthropic_search(user_location={"type": "approximate", "city": v})),
    ("anthropic-messages", "/v1/messages", lambda v: anthropic_fetch(blocked_domains=[v])),
    ("openai-responses", "/v1/responses",
     lambda v: responses_search(filters={"allowed_domains": [v]})),
    ("openai-responses", "/v1/responses",
     lambda v: responses_search(user_location={"type": "approximate", "region": v})),
    ("openai-chat", "/v1/chat/completions", lambda v: chat_search(city=v)),
    ("openai-responses", "/v1/responses",
     lambda v: file_search({"type": "eq", "key": "author", "value": v})),
    ("openai-responses", "/v1/responses",
     lambda v: file_search({"type": "and", "filters": [
         {"type": "gte", "key": "year", "value": 2024},
         {"type": "or", "filters": [{"type": "in", "key": "team", "value": ["ops", v]}]}]})),
    ("openai-responses", "/v1/responses",
     lambda v: file_search({"type": "eq", "key": v, "value": True})),
]  # fmt: skip
IDS = ["anthropic-domains", "anthropic-location", "fetch-domains", "responses-domains",
       "responses-location", "chat-location", "file-search-value", "file-search-compound",
       "file-search-key"]  # fmt: skip


@pytest.mark.parametrize(("route", "path", "body"), CASES, ids=IDS)
async def test_a_key_in_a_server_tools_setting_refuses_the_request(
    route: str, path: str, body: Any
) -> None:
    gate = gateway_for(route)
    found = refused(await gate.send(path, body(f"{FALCON}.example.com")))
    assert found is not None, "the setting reached the provider unread"
    assert found[0] == 403
    assert MESSAGE in orjson.dumps(found[1]).decode()
    assert FALCON not in orjson.dumps(found[1]).decode()
    assert {"guard": "aws-keys", "phase": "request", "action": "reject"} in gate.log()["guardrails"]


@pytest.mark.parametrize(("route", "path", "body"), CASES, ids=IDS)
async def test_a_mask_matching_a_setting_refuses_rather_than_break_it(
    route: str, path: str, body: Any
) -> None:
    found = refused(await gateway_for(route).send(path, body("EMP-123456.example.com")))
    assert found is not None
    assert MASKED in orjson.dumps(found[1]).decode()


@pytest.mark.parametrize(("route", "path", "body"), CASES, ids=IDS)
async def test_plain_settings_go_on_unchanged(route: str, path: str, body: Any) -> None:
    sent = body("news.example.org")
    answers = await gateway_for(route).send(path, sent)
    assert refused(answers) is None
    upstream_sent = upstream_body(answers[1])
    original = orjson.loads(sent)
    for field in ("tools", "web_search_options"):
        assert upstream_sent.get(field) == original.get(field)


async def test_a_gemini_google_search_exclusion_is_read(
    vertex: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    body = gemini(tools=[{"googleSearch": {"excludeDomains": [f"{FALCON}.example.com"]}}])
    async with gateway(vertex, GUARDS, guardrails="p") as gw:
        status, error = refusal((await gw.send(GENERATE, body))[-1])
        assert status == 403
        assert error["error"]["message"] == MESSAGE
        body["tools"][0]["googleSearch"]["excludeDomains"] = ["news.example.org"]
        sent = upstream(await gw.send(GENERATE, body))
    assert sent["tools"] == [{"googleSearch": {"excludeDomains": ["news.example.org"]}}]


async def test_a_gemini_retrieval_config_is_read(
    vertex: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    def body(language: str) -> dict[str, Any]:
        retrieval = {"latLng": {"latitude": 37.42, "longitude": -122.08}, "languageCode": language}
        return gemini(tools=[{"googleMaps": {}}], toolConfig={"retrievalConfig": retrieval})

    async with gateway(vertex, GUARDS, guardrails="p") as gw:
        status, error = refusal((await gw.send(GENERATE, body(FALCON)))[-1])
        assert status == 403
        assert error["error"]["message"] == MESSAGE
        status, error = refusal((await gw.send(GENERATE, body("EMP-123456")))[-1])
        assert MASKED in error["error"]["message"]
        sent = upstream(await gw.send(GENERATE, body("en_US")))
    assert sent["toolConfig"] == body("en_US")["toolConfig"]


# Gemini's File Search and Vertex's retrieval tools hand their filters on to the store's
# search; Vertex's Web Grounding for Enterprise its excluded domains.
GEMINI_FILTERS = [
    lambda v: {"fileSearch": {"fileSearchStoreNames": ["fileSearchStores/s1"],
                              "metadataFilter": f'author = "{v}"'}},
    lambda v: {"file_search": {"file_search_store_names": ["fileSearchStores/s1"],
                               "metadata_filter": f'author = "{v}"'}},
    lambda v: {"retrieval": {"vertexAiSearch": {"datastore": "projects/p/dataStores/d",
                                                "filter": f'owner: ANY("{v}")'}}},
    lambda v: {"retrieval": {"vertexAiSearch": {"engine": "projects/p/engines/e",
               "dataStoreSpecs": [{"dataStore": "projects/p/dataStores/d", "filter": v}]}}},
    lambda v: {"retrieval": {"vertexRagStore": {"ragResources": [{"ragCorpus": "c1"}],
               "ragRetrievalConfig": {"topK": 3, "filter": {"metadataFilter": f"team = {v}",
                                                            "vectorDistanceThreshold": 0.5}}}}},
    lambda v: {"enterpriseWebSearch": {"excludeDomains": [f"{v}.example.com"]}},
]  # fmt: skip
GEMINI_IDS = ["file-search", "file-search-snake", "vertex-ai-search", "data-store-spec",
              "rag-store", "enterprise-web-search"]  # fmt: skip


@pytest.mark.parametrize("tool", GEMINI_FILTERS, ids=GEMINI_IDS)
async def test_a_gemini_search_filter_is_read(
    vertex: Any,  # noqa: F811 (the fixture imported above)
    tool: Any,
) -> None:
    async with gateway(vertex, GUARDS, guardrails="p") as gw:
        status, error = refusal((await gw.send(GENERATE, gemini(tools=[tool(FALCON)])))[-1])
        assert status == 403
        assert error["error"]["message"] == MESSAGE
        status, error = refusal((await gw.send(GENERATE, gemini(tools=[tool("EMP-123456")])))[-1])
        assert MASKED in error["error"]["message"]
        sent = upstream(await gw.send(GENERATE, gemini(tools=[tool("ops")])))
    assert sent["tools"] == [tool("ops")]


# MCP servers' names and the tools they allow name what the model is given and calls.
MCP_CASES = [
    ("anthropic-messages", "/v1/messages",
     lambda v: messages(mcp_servers=[{"type": "url", "url": "https://mcp.example.com/sse",
                                      "name": v, "authorization_token": "tok"}])),
    ("anthropic-messages", "/v1/messages",
     lambda v: messages(mcp_servers=[{"type": "url", "url": "https://mcp.example.com/sse",
                                      "name": "wiki", "tool_configuration": {
                                          "enabled": True, "allowed_tools": ["ask", v]}}])),
    ("openai-responses", "/v1/responses",
     lambda v: responses(tools=[{"type": "mcp", "server_label": v,
                                 "server_url": "https://mcp.example.com/mcp"}])),
    ("openai-responses", "/v1/responses",
     lambda v: responses(tools=[{"type": "mcp", "server_label": "wiki",
                                 "server_url": "https://mcp.example.com/mcp",
                                 "allowed_tools": {"tool_names": [v]}}])),
]  # fmt: skip
MCP_IDS = ["anthropic-server", "anthropic-allowed-tools", "responses-label",
           "responses-allowed-tools"]  # fmt: skip


@pytest.mark.parametrize(("route", "path", "body"), MCP_CASES, ids=MCP_IDS)
async def test_an_mcp_servers_names_are_read_and_never_renamed(
    route: str, path: str, body: Any
) -> None:
    found = refused(await gateway_for(route).send(path, body(FALCON)))
    assert found is not None, "the name reached the provider unread"
    assert found[0] == 403 and MESSAGE in orjson.dumps(found[1]).decode()
    found = refused(await gateway_for(route).send(path, body("get_EMP-123456")))
    assert found is not None
    assert "contains EMPLOYEE_ID, which cannot be masked" in orjson.dumps(found[1]).decode()
    sent = body("deepwiki")
    answers = await gateway_for(route).send(path, sent)
    assert refused(answers) is None
    original = orjson.loads(sent)
    for field in ("tools", "mcp_servers"):
        assert upstream_body(answers[1]).get(field) == original.get(field)
