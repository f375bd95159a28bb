"""A tool list in the answer to a tool call reaches the client filtered.

Bob (key team2, group marketing) may not see ``deploy_*`` on the MCP server ``tools``.
An MCP client matches answers to its requests by id, whatever stream carries them: a
server that sends the answer to Bob's pending ``tools/list`` (id 9) down the stream of
his ``tools/call`` (id 1), alone or batched with the call's result, gave him the whole
list, hidden tools included; the gateway filtered stray lists only in the answer to a
body holding a ``tools/list``. Now the answer to a tool call on a server whose tools
rules hide is read for them too, JSON or SSE, and the call's own result passes as it came.
(So is the answer to every other POST: test_agent_other_answers_strays.)
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.agents import answers
from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import client_body, response_body, response_headers
from tests.unit.test_agent_route_edges import SSE, event, log_line
from tests.unit.test_mcp_gaps import post

JSON = {"content-type": "application/json"}
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}}}  # fmt: skip
RESULT = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "hi"}]}}
FAILED = {"jsonrpc": "2.0", "id": 1,
          "result": {"content": [{"type": "text", "text": "no"}], "isError": True}}  # fmt: skip
TOOLS = [{"name": "echo", "inputSchema": {}}, {"name": "deploy_prod", "inputSchema": {}}]
STRAY = {"jsonrpc": "2.0", "id": 9, "result": {"tools": TOOLS}}


async def answered(
    config: GatewayConfig, services: Services, headers: dict[str, str], chunks: list[bytes]
) -> bytes:
    """What Bob's client receives of the answer to his tool call, sent in ``chunks``."""
    bodies = [response_body(c, end_of_stream=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    replies: list[ext.ProcessingResponse] = await post(
        config, services, CALL, response_headers(200, headers), *bodies
    )
    return client_body(chunks, replies)


def messages(seen: bytes, sse: bool) -> list[Any]:
    """The JSON-RPC messages the client read, in order (a batch's one by one)."""
    if not sse:
        documents = [orjson.loads(seen)]
    else:
        documents = [
            orjson.loads(line.removeprefix(b"data: "))
            for line in seen.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data: ")
        ]
    return [m for d in documents for m in (d if isinstance(d, list) else [d])]


@pytest.mark.parametrize(
    ("headers", "chunks"),
    [
        pytest.param(SSE, [event(orjson.dumps([RESULT, STRAY])), b""], id="sse-batch"),
        pytest.param(SSE, [event(orjson.dumps(STRAY)), event(orjson.dumps(RESULT)), b""],
                     id="sse-before-the-result"),
        pytest.param(SSE, [event(orjson.dumps(RESULT)), event(orjson.dumps(STRAY))[:25],
                           event(orjson.dumps(STRAY))[25:]], id="sse-after-the-result-split"),
        pytest.param(JSON, [orjson.dumps([RESULT, STRAY])], id="json-batch"),
        pytest.param(JSON, [orjson.dumps(STRAY)[:10], orjson.dumps(STRAY)[10:]],
                     id="json-list-alone"),
    ],
)  # fmt: skip
async def test_a_stray_list_in_a_tool_calls_answer_is_filtered(
    config: GatewayConfig, services: Services, headers: dict[str, str], chunks: list[bytes]
) -> None:
    seen = await answered(config, services, headers, chunks)
    assert b"deploy_prod" not in seen, seen
    read = messages(seen, headers is SSE)
    assert {"jsonrpc": "2.0", "id": 9, "result": {"tools": TOOLS[:1]}} in read
    line = log_line(services)
    assert line["agent"]["tools_hidden"] == 1


async def test_the_calls_own_result_passes_and_its_outcome_stays(
    config: GatewayConfig, services: Services
) -> None:
    # The list is no answer to the call: the log line keeps the tool's own error.
    seen = await answered(config, services, SSE, [event(orjson.dumps([FAILED, STRAY])), b""])
    assert messages(seen, True)[0] == FAILED
    line = log_line(services)
    assert line["agent"]["status"] == "tool_error" and line["agent"]["tool"] == "echo"


async def test_an_answer_without_lists_reaches_the_client_as_it_came(
    config: GatewayConfig, services: Services
) -> None:
    body = event(orjson.dumps(RESULT), event_id="e1")
    chunks = [b": priming\r\n\r\n" + body[:15], body[15:], b""]
    assert await answered(config, services, SSE, chunks) == b"".join(chunks)
    assert log_line(services)["agent"]["status"] == "ok"


async def test_an_answer_too_large_to_hold_passes_unread_rather_than_fail_the_call(
    config: GatewayConfig, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a list the body asked for fails closed; a tool's large result is its own.
    monkeypatch.setattr(answers, "MAX_HELD_BYTES", 64)
    big = orjson.dumps({**RESULT, "result": {"content": [{"type": "text", "text": "x" * 200}]}})
    chunks = [big[:50], big[50:120], big[120:]]
    assert await answered(config, services, JSON, chunks) == big


async def test_an_event_the_gateway_cannot_parse_becomes_an_error_without_an_id(
    config: GatewayConfig, services: Services
) -> None:
    # A trailing comma: no parser the gateway has reads it, a JSON5 or lenient one may
    # read the list behind it. (A BOM or a lone surrogate is read as a lax client would:
    # test_agent_other_answers_strays.)
    unreadable = event(orjson.dumps(STRAY)[:-1] + b",}")
    seen = await answered(config, services, SSE, [event(orjson.dumps(RESULT)), unreadable, b""])
    assert b"deploy_prod" not in seen, seen
    first, second = messages(seen, True)
    assert first == RESULT and second["id"] is None and second["error"]["code"] == -32603
