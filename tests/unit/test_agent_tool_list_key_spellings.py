"""Tool lists under another spelling of their keys, as a Go client reads them.

JSON keys are exact, and the Python and TypeScript MCP clients read ``result.tools``
only. Go's ``encoding/json`` (mcp-go's client, the Go MCP SDK's before CVE-2026-27896)
matches keys regardless of case, the long s folded, and keeps the last of two: to
such a client ``"Tools"``, ``"TOOLS"`` or ``"tool\\u017f"``, under ``"Result"`` too, is the
tool list. Bob (key team2, group marketing) may not see ``deploy_*`` tools, however
the server spells the list.
"""

from __future__ import annotations

import random
import re
from typing import Any

import orjson
import pytest

from extproc.agents import lenient_json
from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_agents import TEAM2, with_agents

ALL = [{"name": "echo", "inputSchema": {}}, {"name": "deploy_prod", "inputSchema": {}}]
LIST_REQUEST = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
CALL_REQUEST = {"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                "params": {"name": "echo", "arguments": {}}}  # fmt: skip


async def client_gets(
    config: GatewayConfig, services: Services, request: Any, answer: bytes, media: str
) -> bytes:
    processor = processor_for(with_agents(config), services)
    answers = await run_stream(
        processor,
        [
            request_headers("/mcp", headers=TEAM2),
            request_body(orjson.dumps(request)),
            response_headers(200, {"content-type": media}),
            response_body(answer, end_of_stream=True),
        ],
    )
    mutation = answers[-1].response_body.response.body_mutation
    return bytes(mutation.body) if mutation.WhichOneof("mutation") == "body" else answer


def names(document: Any) -> set[str]:
    """Every tool name a Go client could read in any spelling of result and tools."""
    found: set[str] = set()
    for key, result in document.items():
        if key.casefold() == "result" and isinstance(result, dict):
            for inner, tools in result.items():
                if inner.casefold() == "tools":
                    found |= {tool["name"] for tool in tools}
    return found


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"jsonrpc": "2.0", "id": 5, "result": {"Tools": ALL}}, id="Tools"),
        pytest.param({"jsonrpc": "2.0", "id": 5, "result": {"TOOLS": ALL}}, id="TOOLS"),
        pytest.param({"jsonrpc": "2.0", "id": 5, "result": {"tool\u017f": ALL}}, id="long-s"),
        pytest.param({"jsonrpc": "2.0", "id": 5, "result": {"tools": ALL[:1], "Tools": ALL}},
                     id="both-the-last-wins-in-go"),
        pytest.param({"jsonrpc": "2.0", "id": 5, "result": {"tools": ALL[:1]},
                      "Result": {"tools": ALL}}, id="Result"),
        pytest.param({"jsonrpc": "2.0", "ID": 5, "Result": {"Tools": ALL}}, id="ID-and-Result"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("request_", [LIST_REQUEST, CALL_REQUEST], ids=["list", "tool-call"])
async def test_a_tool_list_under_another_spelling_of_its_keys_is_filtered(
    config: GatewayConfig, services: Services, answer: Any, request_: Any
) -> None:
    got = await client_gets(config, services, request_, orjson.dumps(answer), "application/json")
    assert names(orjson.loads(got)) == {"echo"}
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["agent"]["tools_hidden"] >= 1


async def test_a_tool_list_spelt_otherwise_on_an_sse_stream_is_filtered(
    config: GatewayConfig, services: Services
) -> None:
    answer = {"jsonrpc": "2.0", "id": 5, "result": {"Tools": ALL}}
    event = b"event: message\ndata: " + orjson.dumps(answer) + b"\n\n"
    got = await client_gets(config, services, LIST_REQUEST, event, "text/event-stream")
    data = next(line[5:] for line in got.splitlines() if line.startswith(b"data:"))
    assert names(orjson.loads(data)) == {"echo"}


async def test_a_tool_with_a_second_name_key_is_hidden_unless_both_names_may_be_seen(
    config: GatewayConfig, services: Services
) -> None:
    # A Go client reads the last of "name" and "Name": deploy_prod, under echo's name.
    tools = [{"name": "echo", "Name": "deploy_prod"}, {"name": "echo", "NAME": "echo"}]
    answer = {"jsonrpc": "2.0", "id": 5, "result": {"tools": tools}}
    got = await client_gets(
        config, services, LIST_REQUEST, orjson.dumps(answer), "application/json"
    )
    assert orjson.loads(got)["result"]["tools"] == [{"name": "echo", "NAME": "echo"}]


async def test_a_tool_result_that_only_mentions_tools_passes_as_it_came(
    config: GatewayConfig, services: Services
) -> None:
    # A tool's own result naming "Tools" in its text, or a "Tools" key that holds no list,
    # is no tool list: it reaches the client byte for byte.
    result = {"content": [{"type": "text", "text": "Tools: deploy_prod"}], "Tools": "none"}
    answer = orjson.dumps({"jsonrpc": "2.0", "id": 8, "result": result})
    got = await client_gets(config, services, CALL_REQUEST, answer, "application/json")
    assert got == answer


# The pre-check's first form, one pattern: the searches that replaced it (faster on long
# answers) must say the same of every text.
_SPELLINGS_AS_A_PATTERN = re.compile(rb"[Tt][Oo][Oo][Ll](?:[Ss]|\xc5\xbf)|\\u|\x00")


def test_the_tool_list_pre_check_finds_every_spelling_the_pattern_did() -> None:
    pieces = [b"t", b"T", b"o", b"O", b"l", b"L", b"s", b"S", b"\xc5", b"\xbf", b"\xc5\xbf",
              b"\\", b"u", b"U", b"\x00", b"tool", b"TOOL", b"x", b'"', b"\xff"]  # fmt: skip
    chosen = random.Random(7)
    texts = [
        *(case + end for case in (b"tools"[:4], b"TOOL", b"ToOl", b"tOoL") for end in pieces),
        *(b"".join(chosen.choices(pieces, k=chosen.randint(0, 12))) for _ in range(20_000)),
    ]
    for text in texts:
        expected = _SPELLINGS_AS_A_PATTERN.search(text) is not None
        assert lenient_json.may_hold_tools(text) is expected, text
