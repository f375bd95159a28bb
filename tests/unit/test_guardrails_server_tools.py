"""Anthropic's server-tool results meet the guards, in requests, whole answers and streams.

Claude's server tools (web search and fetch, code execution, bash, the text editor) answer
in blocks of their own: ``web_fetch_tool_result`` (the fetched page as a document),
``code_execution_tool_result`` and ``bash_code_execution_tool_result`` (``stdout``,
``stderr``), ``text_editor_code_execution_tool_result`` (a file's ``content``, the changed
``lines``, an ``error_message``), ``web_search_tool_result`` (each result's ``title``; the
page itself is ``encrypted_content``). A client sends them back in the history, the model
reads them: no guard read them, so a refused word or an address went to the provider
inside one, and came to the client inside one in a whole answer or a stream (where such a
block, and an ``mcp_tool_result``, comes whole in ``content_block_start``).

The quota's prompt estimate missed text the guards read: OpenAI refusal parts, an
assistant's ``refusal``, ``mcp_tool_result`` content, server and MCP tool calls' input.
A prompt made of such text reserved next to nothing before the provider billed it.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from extproc.quota.estimate import CHARS_PER_TOKEN, estimate_prompt_tokens
from extproc.testing import client_body, response_body, response_headers
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import Gateway, immediate, upstream_body

POLICY = {"policies": [{"name": "workshop",
    "request": [{"name": "card-talk", "patterns": ["credit card"], "case_insensitive": True},
                {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}],
    "response": [{"name": "secret-out", "literals": ["hunter2"], "status": 422},
                 {"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"}]}]}  # fmt: skip
ROUTE = {"anthropic-messages": {"guardrails": "workshop"}}
SSE = {"content-type": "text/event-stream"}

SEARCH_USE = {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search",
              "input": {"query": "weather"}}  # fmt: skip
# An opaque blob as Anthropic sends it: never text, never to be rewritten.
ENCRYPTED = "EqgfCioIARgBIiQ3YTAwMjY1Mi1hZDU5LTQ0ZDEtYmEzZS00OTJlNWE4YmQ4OTkSDJ7"


def fetch_result(text: str) -> dict[str, Any]:
    document = {"type": "document", "title": "Notes",
                "source": {"type": "text", "media_type": "text/plain", "data": text}}  # fmt: skip
    return {"type": "web_fetch_tool_result", "tool_use_id": "srvtoolu_01",
            "content": {"type": "web_fetch_result", "url": "https://example.com/notes",
                        "retrieved_at": "2025-08-25T10:30:00Z", "content": document}}  # fmt: skip


OUTPUT_FILE = {"type": "code_execution_output", "file_id": "file_01"}


def code_result(stdout: str, stderr: str = "") -> dict[str, Any]:
    return {"type": "code_execution_tool_result", "tool_use_id": "srvtoolu_01",
            "content": {"type": "code_execution_result", "stdout": stdout, "stderr": stderr,
                        "return_code": 0, "content": [OUTPUT_FILE]}}  # fmt: skip


def bash_result(stdout: str, stderr: str = "") -> dict[str, Any]:
    return {"type": "bash_code_execution_tool_result", "tool_use_id": "srvtoolu_01",
            "content": {"type": "bash_code_execution_result", "stdout": stdout,
                        "stderr": stderr, "return_code": 1, "content": []}}  # fmt: skip


def editor_result(content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "text_editor_code_execution_tool_result", "tool_use_id": "srvtoolu_01",
            "content": content}  # fmt: skip


def search_result(title: str, url: str = "https://example.com/a") -> dict[str, Any]:
    return {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01",
            "content": [{"type": "web_search_result", "title": title, "url": url,
                         "encrypted_content": ENCRYPTED, "page_age": "May 2025"}]}  # fmt: skip


def messages_body(*assistant: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-0",
        "max_tokens": 50,
        "stream": stream,
        "messages": [
            {"role": "user", "content": "Look it up."},
            {"role": "assistant", "content": list(assistant)},
            {"role": "user", "content": "Thanks, go on."},
        ],
    }


# --- requests ------------------------------------------------------------------------------

REFUSED_RESULTS = {
    "fetched page": fetch_result("Paste your credit card here."),
    "code stdout": code_result("credit card: 4111"),
    "code stderr": code_result("", "KeyError: 'credit card'"),
    "bash stdout": bash_result("grep credit card notes.txt"),
    "file viewed": editor_result({"type": "text_editor_code_execution_view_result",
                                  "file_type": "text", "content": "# credit card store\n",
                                  "num_lines": 1, "start_line": 1, "total_lines": 1}),
    "lines edited": editor_result({"type": "text_editor_code_execution_str_replace_result",
                                   "old_start": 1, "old_lines": 1, "new_start": 1,
                                   "new_lines": 1, "lines": ["-x", "+credit card = 1"]}),
    "editor error": editor_result({"type": "text_editor_code_execution_tool_result_error",
                                   "error_code": "unavailable",
                                   "error_message": "no credit card file"}),
    "search title": search_result("Credit card numbers, leaked"),
}  # fmt: skip


@pytest.mark.parametrize("result", REFUSED_RESULTS.values(), ids=REFUSED_RESULTS.keys())
async def test_a_refused_word_in_a_server_tool_result_is_refused(result: dict[str, Any]) -> None:
    gateway = Gateway(config_with(POLICY, ROUTE))
    body = orjson.dumps(messages_body(SEARCH_USE, result))
    answers = await gateway.send("/v1/messages", body)
    assert answers[-1].HasField("immediate_response"), "the tool's result reached the provider"
    status, error = immediate(answers[-1])
    assert (status, error["type"]) == (403, "error")


async def test_an_address_in_server_tool_results_is_masked_and_the_rest_kept_as_it_was() -> None:
    gateway = Gateway(config_with(POLICY, ROUTE))
    fetched = fetch_result("Contact jane@example.com.")
    code = code_result("owner=bob@example.com\n", "warn: amy@example.com")
    viewed = editor_result({"type": "text_editor_code_execution_view_result", "file_type": "text",
                            "content": "to: jo@example.com", "num_lines": 1})  # fmt: skip
    edited = editor_result({"type": "text_editor_code_execution_str_replace_result",
                            "lines": ["+cc: li@example.com"], "new_lines": 1})  # fmt: skip
    body = messages_body(SEARCH_USE, fetched, code, viewed, edited)
    answers = await gateway.send("/v1/messages", orjson.dumps(body))
    sent = upstream_body(answers[1])["messages"][1]["content"]
    expected = copy.deepcopy(body["messages"][1]["content"])
    expected[1]["content"]["content"]["source"]["data"] = "Contact <EMAIL>."
    expected[2]["content"]["stdout"] = "owner=<EMAIL>\n"
    expected[2]["content"]["stderr"] = "warn: <EMAIL>"
    expected[3]["content"]["content"] = "to: <EMAIL>"
    expected[4]["content"]["lines"] = ["+cc: <EMAIL>"]
    # Only the text changed: ids, URLs, timestamps, numbers and file ids went as they came.
    assert sent == expected


async def test_encrypted_content_urls_and_ids_are_not_read_as_text() -> None:
    policy = {"policies": [{"name": "workshop", "request": [
        {"name": "blob", "patterns": ["EqgfCio"], "action": "reject"},
        {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}]}]}  # fmt: skip
    gateway = Gateway(config_with(policy, ROUTE))
    result = search_result("Weather today", url="https://example.com/?u=jane@example.com")
    encrypted = {"type": "code_execution_tool_result", "tool_use_id": "srvtoolu_01",
                 "content": {"type": "encrypted_code_execution_result", "encrypted_stdout":
                             ENCRYPTED, "stderr": "", "return_code": 0, "content": []}}  # fmt: skip
    body = messages_body(SEARCH_USE, result, encrypted)
    answers = await gateway.send("/v1/messages", orjson.dumps(body))
    assert not answers[-1].HasField("immediate_response"), "an encrypted blob was read as text"
    assert upstream_body(answers[1])["messages"][1] == body["messages"][1]


# --- whole answers -------------------------------------------------------------------------


def message(*content: dict[str, Any]) -> dict[str, Any]:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-0",
            "content": list(content), "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 9}}  # fmt: skip


async def answered(gateway: Gateway, answer: dict[str, Any]) -> bytes:
    """What the client gets of a whole ``answer`` to a messages request."""
    raw = orjson.dumps(answer)
    answers = await gateway.send(
        "/v1/messages", orjson.dumps(messages_body()), response_headers(200), response_body(raw)
    )
    return client_body([raw], answers)


async def test_an_address_in_an_answers_server_tool_result_is_masked() -> None:
    gateway = Gateway(config_with(POLICY, ROUTE))
    answer = message(SEARCH_USE, bash_result("mail li@example.com"), {"type": "text", "text": "ok"})
    shown = orjson.loads(await answered(gateway, answer))
    assert shown["content"][1]["content"]["stdout"] == "mail <EMAIL>"
    assert shown["content"][1]["content"]["return_code"] == 1


async def test_a_refused_word_in_an_answers_fetched_page_is_refused() -> None:
    gateway = Gateway(config_with(POLICY, ROUTE))
    answer = orjson.dumps(message(SEARCH_USE, fetch_result("The password is hunter2.")))
    answers = await gateway.send(
        "/v1/messages", orjson.dumps(messages_body()), response_headers(200), response_body(answer)
    )
    assert answers[-1].HasField("immediate_response"), "the page reached the client"
    status, error = immediate(answers[-1])
    assert (status, error["error"]["message"]) == (422, "Rejected by guardrail 'secret-out'")


# --- streams -------------------------------------------------------------------------------


def sse(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\n".encode() + b"data: " + orjson.dumps(payload) + b"\n\n"


def stream_of(block: dict[str, Any]) -> list[bytes]:
    """A stream whose second block is ``block``, whole in its ``content_block_start``."""
    start = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-0",
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    call = {**SEARCH_USE, "input": {}}
    return [
        sse({"type": "message_start", "message": start}),
        sse({"type": "content_block_start", "index": 0, "content_block": call}),
        sse({"type": "content_block_delta", "index": 0,
             "delta": {"type": "input_json_delta", "partial_json": '{"query": "x"}'}}),
        sse({"type": "content_block_stop", "index": 0}),
        sse({"type": "content_block_start", "index": 1, "content_block": block}),
        sse({"type": "content_block_stop", "index": 1}),
        sse({"type": "content_block_start", "index": 2,
             "content_block": {"type": "text", "text": ""}}),
        sse({"type": "content_block_delta", "index": 2,
             "delta": {"type": "text_delta", "text": "Done."}}),
        sse({"type": "content_block_stop", "index": 2}),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"output_tokens": 9}}),
        sse({"type": "message_stop"}),
    ]  # fmt: skip


async def streamed(block: dict[str, Any]) -> list[dict[str, Any]]:
    """The events the client gets of a stream carrying ``block``, through the processor."""
    gateway = Gateway(config_with(POLICY, ROUTE))
    chunks = stream_of(block)
    answers = await gateway.send(
        "/v1/messages",
        orjson.dumps(messages_body(stream=True)),
        response_headers(200, SSE),
        *(response_body(chunk, end_of_stream=False) for chunk in chunks),
        response_body(b"", end_of_stream=True),
    )
    got = client_body([*chunks, b""], answers)
    return [
        orjson.loads(event.split(b"data: ", 1)[1])
        for event in got.split(b"\n\n")
        if b"data: " in event
    ]


STREAMED_RESULTS = {
    "code": (code_result("owner=li@example.com"), ("content", "stdout")),
    "mcp": ({"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1", "is_error": False,
             "content": [{"type": "text", "text": "owner: li@example.com"}]},
            ("content", 0, "text")),
    "fetch": (fetch_result("write to li@example.com"), ("content", "content", "source", "data")),
}  # fmt: skip


@pytest.mark.parametrize("case", STREAMED_RESULTS.values(), ids=STREAMED_RESULTS.keys())
async def test_an_address_in_a_streamed_tool_result_is_masked_in_its_block_start(
    case: tuple[dict[str, Any], tuple[Any, ...]],
) -> None:
    block, path = case
    events = await streamed(block)
    starts = [e for e in events if e["type"] == "content_block_start" and e["index"] == 1]
    assert len(starts) == 1
    value: Any = starts[0]["content_block"]
    for step in path:
        value = value[step]
    assert isinstance(value, str) and "li@example.com" not in value, "sent unmasked"
    assert "<EMAIL>" in value
    # The rest of the stream goes on as it came.
    assert events[-1] == {"type": "message_stop"}


async def test_a_refused_word_in_a_streamed_tool_result_ends_the_stream() -> None:
    events = await streamed(bash_result("cat .env\nPASSWORD=hunter2"))
    assert not any(b"hunter2" in orjson.dumps(e) for e in events), "the result reached the client"
    assert events[-1]["type"] == "error"
    assert "secret-out" in events[-1]["error"]["message"]
    assert not any(e["type"] == "content_block_start" and e["index"] == 1 for e in events)


# --- the quota's prompt estimate ---------------------------------------------------------

LONG = "word " * 800  # 4,000 characters: 1,000 tokens at four characters each


def chat_body(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": list(messages)}


UNCOUNTED = {
    "refusal part": chat_body({"role": "assistant", "content": [{"type": "refusal",
                                                                  "refusal": LONG}]}),
    "assistant refusal": chat_body({"role": "assistant", "content": None, "refusal": LONG}),
    "custom tool input": chat_body({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "custom", "custom": {"name": "shell", "input": LONG}}]}),
    "mcp result": messages_body({"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1",
                                 "content": [{"type": "text", "text": LONG}]}),
    "mcp result string": messages_body({"type": "mcp_tool_result",
                                        "tool_use_id": "mcptoolu_1", "content": LONG}),
    "mcp call": messages_body({"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "q",
                               "server_name": "crm", "input": {"q": LONG}}),
    "server call": messages_body({"type": "server_tool_use", "id": "srvtoolu_01",
                                  "name": "web_search", "input": {"query": LONG}}),
    "code stdout": messages_body(code_result(LONG)),
    "fetched page": messages_body(fetch_result(LONG)),
}  # fmt: skip


@pytest.mark.parametrize("body", UNCOUNTED.values(), ids=UNCOUNTED.keys())
def test_the_prompt_estimate_counts_the_text_the_guards_read(body: dict[str, Any]) -> None:
    assert estimate_prompt_tokens(body) >= len(LONG) // CHARS_PER_TOKEN, "text not counted"


# --- a block whose type is no string -----------------------------------------------------

ODD_TYPES = {
    "anthropic block": ("/v1/messages", messages_body({"type": ["text"], "text": "hi"})),
    "chat part": ("/v1/chat/completions", chat_body({"role": "user", "content": [{"type": {}}]})),
    "server result": ("/v1/messages", messages_body(editor_result({"type": [], "content": "x"}))),
    "responses item": ("/v1/responses", {"model": "gpt-4o-mini", "input": [{"type": ["x"]}]}),
    "responses part": ("/v1/responses", {"model": "gpt-4o-mini", "input": [
        {"type": "mcp_call", "output": [{"type": {}, "text": "x"}]}]}),
}  # fmt: skip


@pytest.mark.parametrize("case", ODD_TYPES.values(), ids=ODD_TYPES.keys())
async def test_a_block_whose_type_is_no_string_is_no_gateway_failure(
    case: tuple[str, dict[str, Any]],
) -> None:
    path, body = case
    routes = {"anthropic-messages", "openai-chat", "openai-responses"}
    gateway = Gateway(config_with(POLICY, {name: {"guardrails": "workshop"} for name in routes}))
    answers = await gateway.send(path, orjson.dumps(body))
    if answers[-1].HasField("immediate_response"):
        status, _ = immediate(answers[-1])
        assert status < 500, "the gateway failed on the client's malformed block"
    # The provider, which knows its own schema, answers for the block.
