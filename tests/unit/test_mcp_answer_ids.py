"""An MCP answer under its request's id spelt as a string is that request's answer.

A server may echo the id ``5`` as ``"5"``. The MCP SDKs match it to request 5 all the
same (the Python SDK's ``coerce_request_id``, the TypeScript SDK's ``Number(id)``), so a
client reaching the server directly gets its tool list or its tool's result. The gateway
matched ids exactly: Bob's ``tools/list`` got the -32603 "could not read the upstream's
answer" error in place of a list he may see whole (JSON or SSE; a list with a tool to
hide was filtered but logged ``forwarded``), and a tool call's outcome (``tool_error``,
``rpc_error``) was logged and counted ``forwarded``. Now the ids are matched as the
SDKs match them.

And a server that could not read the id answers its error under the id null, as
JSON-RPC says; to a body of one request that error is the request's (the Python SDK takes
it so on the request's stream). The gateway replaced it, on a ``tools/list``, by its own
-32603 "could not read the upstream's answer", the server's reason (a session it no longer
knows) lost, and logged a tool call's error ``forwarded``. Now it reaches the client as it
came and is logged as the server's error.

Bob (key team2, group marketing) may not use ``deploy_*`` on the MCP server ``tools``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from mcp.shared.dispatcher import coerce_request_id

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import client_body, response_body, response_headers
from tests.unit.test_agent_route_edges import SSE, event, log_line
from tests.unit.test_agents_review import immediate, samples
from tests.unit.test_mcp_gaps import LIST_REQUEST, post

JSON = {"content-type": "application/json"}


def the_list(**result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": "5", "result": result}


def test_the_python_sdk_takes_the_string_for_its_integer_id() -> None:
    # The premise, from the official SDK the gateway's MCP clients use.
    assert coerce_request_id("5") == 5


@pytest.mark.parametrize(
    ("frame", "headers"),
    [
        pytest.param(lambda data: data, JSON, id="json"),
        pytest.param(lambda data: event(data), SSE, id="sse"),
    ],
)
async def test_a_tool_list_under_the_ids_string_reaches_the_client_filtered(
    config: GatewayConfig, services: Services, frame: Any, headers: dict[str, str]
) -> None:
    body = frame(orjson.dumps(the_list(tools=[{"name": "echo", "inputSchema": {}}])))
    replies = await post(
        config, services, LIST_REQUEST, response_headers(200, headers), response_body(body)
    )
    received = client_body([body], replies)
    assert received == body  # Bob may see every tool: the list as it came, no error
    line = log_line(services)
    assert (line["outcome"], line["agent"]["status"]) == ("completed", "ok")
    assert line["agent"]["tools_listed"] == 1


async def test_a_list_with_a_hidden_tool_under_the_ids_string_is_filtered_and_logged_ok(
    config: GatewayConfig, services: Services
) -> None:
    tools = [{"name": "echo", "inputSchema": {}}, {"name": "deploy_prod", "inputSchema": {}}]
    body = orjson.dumps(the_list(tools=tools))
    replies = await post(
        config, services, LIST_REQUEST, response_headers(200, JSON), response_body(body)
    )
    sent = orjson.loads(client_body([body], replies))
    assert [tool["name"] for tool in sent["result"]["tools"]] == ["echo"]
    agent = log_line(services)["agent"]
    assert (agent["status"], agent["tools_hidden"]) == ("ok", 1)


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        pytest.param({"result": {"content": [], "isError": True}}, "tool_error", None,
                     id="tool-error"),
        pytest.param({"error": {"code": -32602, "message": "bad arguments"}}, "rpc_error",
                     -32602, id="rpc-error"),
    ],
)  # fmt: skip
async def test_a_tool_calls_outcome_under_the_ids_string_is_logged_and_counted(
    config: GatewayConfig, services: Services, answer: dict[str, Any], status: str,
    code: int | None,
) -> None:  # fmt: skip
    request = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo"}}
    body = orjson.dumps({"jsonrpc": "2.0", "id": "7", **answer})
    await post(config, services, request, response_headers(200, JSON), response_body(body))
    agent = log_line(services)["agent"]
    assert (agent["status"], agent["rpc_error_code"]) == (status, code)
    [counted] = samples(services, "aigw_mcp_tool_calls_total")
    assert counted["status"] == status


async def test_a_batch_whose_requests_share_an_id_spelt_two_ways_is_refused(
    config: GatewayConfig, services: Services
) -> None:
    # To a client, "1" answers 1: two requests, one id, answers matched ambiguously.
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"},
             {"jsonrpc": "2.0", "id": "1", "method": "tools/list"}]  # fmt: skip
    refusal = immediate(await post(config, services, batch))
    assert refusal is not None, "the batch went on to the server"
    status, error = refusal
    assert status == 400 and error["error"]["code"] == -32600


async def test_other_strings_stay_other_ids(config: GatewayConfig, services: Services) -> None:
    # "5a", "5.0" and "" are not 5 to the Python SDK: the list awaited never came.
    for spelt in ("5a", "5.0", ""):
        body = orjson.dumps({**the_list(tools=[{"name": "echo"}]), "id": spelt})
        replies = await post(
            config, services, LIST_REQUEST, response_headers(200, JSON), response_body(body)
        )
        sent = orjson.loads(client_body([body], replies))
        assert sent["id"] == 5 and sent["error"]["code"] == -32603, spelt


SESSION_GONE = {"jsonrpc": "2.0", "id": None,
                "error": {"code": -32001, "message": "Session not found"}}  # fmt: skip
FRAMES = [
    pytest.param(lambda data: data, JSON, id="json"),
    pytest.param(lambda data: event(data), SSE, id="sse"),
]


@pytest.mark.parametrize(("frame", "headers"), FRAMES)
async def test_a_servers_error_under_a_null_id_to_a_tool_list_reaches_the_client_as_it_came(
    config: GatewayConfig, services: Services, frame: Any, headers: dict[str, str]
) -> None:
    body = frame(orjson.dumps(SESSION_GONE))
    replies = await post(
        config, services, LIST_REQUEST, response_headers(200, headers), response_body(body)
    )
    assert client_body([body], replies) == body  # the server's reason, not the gateway's
    line = log_line(services)
    assert (line["outcome"], line["error_code"]) == ("completed", None)
    assert (line["agent"]["status"], line["agent"]["rpc_error_code"]) == ("rpc_error", -32001)


@pytest.mark.parametrize(("frame", "headers"), FRAMES)
async def test_a_servers_error_under_a_null_id_to_a_tool_call_is_logged_and_counted(
    config: GatewayConfig, services: Services, frame: Any, headers: dict[str, str]
) -> None:
    request = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo"}}
    body = frame(orjson.dumps(SESSION_GONE))
    await post(config, services, request, response_headers(200, headers), response_body(body))
    agent = log_line(services)["agent"]
    assert (agent["status"], agent["rpc_error_code"]) == ("rpc_error", -32001)
    [counted] = samples(services, "aigw_mcp_tool_calls_total")
    assert counted["status"] == "rpc_error"


async def test_a_null_id_error_that_also_holds_a_list_for_a_go_client_is_still_filtered(
    config: GatewayConfig, services: Services
) -> None:
    # Go's encoding/json reads "ID" and "Result" as id and result, the last one winning:
    # to such a client this is the list of its request 5, not an error of this call's.
    request = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo"}}
    tools = [{"name": "echo", "inputSchema": {}}, {"name": "deploy_prod", "inputSchema": {}}]
    answer = {**SESSION_GONE, "ID": 5, "Result": {"tools": tools}}
    body = orjson.dumps(answer)
    replies = await post(
        config, services, request, response_headers(200, JSON), response_body(body)
    )
    sent = orjson.loads(client_body([body], replies))
    assert [tool["name"] for tool in sent["Result"]["tools"]] == ["echo"]
