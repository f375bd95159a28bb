"""Review s36, agents: MCP and A2A as an attacker with a key allowed only some tools.

Bob (key team2, user bob, group marketing) may not use ``deploy_*`` on the MCP server
``tools`` (engineering only, ``test_agents.SERVERS``). Whatever shape his request takes,
a ``deploy_*`` call must never reach the server, and no answer may show him a
``deploy_*`` tool.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_agents import TEAM2, set_headers, with_agents
from tests.unit.test_agents_review import immediate, tool_call, with_limits
from tests.unit.test_mcp_gaps import LISTED, post, refused

SSE = {"content-type": "text/event-stream"}
DEPLOY = {"name": "deploy_prod", "arguments": {}}


def sse_event(message: Any) -> bytes:
    return b"event: message\r\ndata: " + orjson.dumps(message) + b"\r\n\r\n"


def went_upstream(answers: list[ext.ProcessingResponse]) -> bool:
    return immediate(answers) is None


# --- tool lists that could reach the client unfiltered ----------------------------------------


@pytest.mark.parametrize(
    "answered_id",
    [
        # A TypeScript SDK server reads -0.0 as -0, an integer to its schema, and
        # JSON.stringify(-0) is "0"; the Python SDK's lax int reads it as 0.
        pytest.param(0, id="server-writes-0"),
        pytest.param(-0.0, id="server-writes-minus-0.0"),
    ],
)
async def test_a_tool_list_asked_under_id_minus_zero_never_reaches_the_client_unfiltered(
    config: GatewayConfig, services: Services, answered_id: Any
) -> None:
    # The answer event comes in one chunk, the end of the stream in the next: the way
    # a server writes its last event and then closes the stream.
    request = {"jsonrpc": "2.0", "id": -0.0, "method": "tools/list"}
    chunks = [sse_event({**LISTED, "id": answered_id}), b""]
    answers = await post(
        config,
        services,
        request,
        response_headers(200, SSE),
        response_body(chunks[0], end_of_stream=False),
        response_body(chunks[1], end_of_stream=True),
    )
    seen = client_body(chunks, answers)
    assert b"deploy_prod" not in seen, seen


async def test_a_json_tool_list_under_id_minus_zero_is_filtered_or_refused(
    config: GatewayConfig, services: Services
) -> None:
    request = {"jsonrpc": "2.0", "id": -0.0, "method": "tools/list"}
    upstream = orjson.dumps({**LISTED, "id": 0})
    answers = await post(config, services, request, response_headers(200), response_body(upstream))
    seen = client_body([upstream], answers)
    assert b"deploy_prod" not in seen
    answer = orjson.loads(seen)
    assert "error" in answer or [t["name"] for t in answer["result"]["tools"]] == ["echo"]


@pytest.mark.parametrize("size", [1, 7, 64])
async def test_a_tool_list_split_across_sse_chunks_reaches_the_client_filtered(
    config: GatewayConfig, services: Services, size: int
) -> None:
    request = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}
    page = {**LISTED, "result": {**LISTED["result"], "nextCursor": "p2"}}
    stream = sse_event(progress) + sse_event(page)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    bodies = [response_body(c, end_of_stream=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    answers = await post(config, services, request, response_headers(200, SSE), *bodies)
    seen = client_body(chunks, answers)
    assert b"deploy_prod" not in seen and b'"echo"' in seen and b"nextCursor" in seen


# --- tool calls by another spelling or shape ---------------------------------------------------


@pytest.mark.parametrize(
    "name", ["deploy_prod", "deploy_prod ", "deploy_prod\n", "deploy_prod\u200b", "deploy_"]
)
async def test_spellings_of_a_forbidden_tool_the_rule_covers_are_refused(
    config: GatewayConfig, services: Services, name: str
) -> None:
    processor = processor_for(with_agents(config), services)
    refusal = immediate(await tool_call(processor, {"name": name, "arguments": {}}, "r-1"))
    assert refusal is not None
    status, error = refusal
    assert status == 200 and error["id"] == "r-1" and error["error"]["code"] == -32003
    assert error["error"]["data"] == {
        "type": "permission_error",
        "code": "tool_not_allowed",
        "tool": name,
    }


@pytest.mark.parametrize(
    "body",
    [
        # params.name spelt with an escape, then the real name: a first-key server runs deploy.
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"n\\u0061me":"deploy_prod","name":"echo","arguments":{}}}',
        # method twice, the tool call first.
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"deploy_prod"},'
        b'"method":"ping"}',
        # params twice.
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"deploy_prod"},'
        b'"params":{"name":"echo"}}',
        # Go's case-insensitive match, with the long s of "params".
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},'
        b'"param\xc5\xbf":{"name":"deploy_prod"}}',
        # Inside a batch.
        b'[{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call",'
        b'"params":{"name":"deploy_prod"}}]',
    ],
)
async def test_a_body_a_server_could_read_as_a_forbidden_call_never_goes_upstream(
    config: GatewayConfig, services: Services, body: bytes
) -> None:
    processor = processor_for(with_agents(config), services)
    answers = await run_stream(
        processor, [request_headers("/mcp", headers=TEAM2), request_body(body)]
    )
    status, error = refused(answers)
    assert status == 400
    found = error[0] if isinstance(error, list) else error
    assert found["error"]["code"] == -32600


async def test_another_callers_session_id_brings_none_of_its_rights(
    config: GatewayConfig, services: Services
) -> None:
    # Alice (engineering) opened the session; Bob reuses its id for a deploy.
    processor = processor_for(with_agents(config), services)
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": DEPLOY}
    headers = {**TEAM2, "mcp-session-id": "alices-session"}
    answers = await run_stream(
        processor, [request_headers("/mcp", headers=headers), request_body(orjson.dumps(body))]
    )
    status, error = refused(answers)
    assert status == 200 and error["id"] == 3 and error["error"]["code"] == -32003


# --- Mcp-Method / Mcp-Name: the docs refuse any request whose headers name another call ------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"jsonrpc": "2.0", "method": "notifications/initialized"},
                     id="notification"),
        pytest.param([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}], id="batch"),
        pytest.param({"jsonrpc": "2.0", "id": 9, "result": {}}, id="client-answer"),
    ],
)  # fmt: skip
async def test_mirror_headers_naming_a_forbidden_tool_call_are_refused_whatever_the_body(
    config: GatewayConfig, services: Services, body: Any
) -> None:
    # docs/agents.md: "A request whose headers name another method or tool than its body
    # ... is refused with HTTP 400, -32600, before it reaches anything that routes on
    # them". A router after the gateway reading Mcp-Method/Mcp-Name sees a deploy call.
    processor = processor_for(with_agents(config), services)
    headers = {**TEAM2, "mcp-method": "tools/call", "mcp-name": "deploy_prod"}
    answers = await run_stream(
        processor, [request_headers("/mcp", headers=headers), request_body(orjson.dumps(body))]
    )
    status, error = refused(answers)
    assert status == 400
    found = error[0] if isinstance(error, list) else error
    assert found["error"]["code"] == -32600


# --- limits: what is counted, and the refusal's shape ------------------------------------------


async def test_refused_calls_use_up_no_limit_and_the_limit_refusal_has_the_documented_shape(
    config: GatewayConfig, quota_store: QuotaStore
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    rule = {"name": "one-a-day", "subject": "api_key", "per_tool": False, "requests_per_day": 1}
    processor = processor_for(with_limits(config, rule), services)
    for _ in range(3):  # refused by the access rule: not counted
        refusal = immediate(await tool_call(processor, DEPLOY))
        assert refusal is not None and refusal[1]["error"]["code"] == -32003
    echo = {"name": "echo", "arguments": {}}
    assert went_upstream(await tool_call(processor, echo))
    answers = await tool_call(processor, echo, "again")
    found = [a for a in answers if a.WhichOneof("response") == "immediate_response"]
    assert found
    answer = found[0].immediate_response
    error = orjson.loads(answer.body)
    assert answer.status.code == 200 and error["id"] == "again"
    assert error["error"]["code"] == -32029
    assert error["error"]["data"]["code"] == "rate_limit_exceeded"
    assert error["error"]["data"]["rule"] == "one-a-day"
    sent = {h.header.key: h.header.raw_value.decode() for h in answer.headers.set_headers}
    assert int(sent["retry-after"]) == error["error"]["data"]["retry_after_s"] >= 1


# --- A2A ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["tasks/get", "tasks/cancel", "GetTask", "CancelTask"])
async def test_a_task_query_names_the_real_caller_to_the_agent_whatever_the_client_claims(
    config: GatewayConfig, services: Services, method: str
) -> None:
    # The gateway does not own tasks (docs: the agent scopes them by x-aigw-caller);
    # what it must do is name Bob, never the caller Bob claims to be.
    processor = processor_for(with_agents(config), services)
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"id": "alices-task"}}
    claims = {**TEAM2, "x-aigw-caller": "user:alice", "x-aigw-user-id": "alice"}
    answers = await run_stream(
        processor,
        [request_headers("/a2a/helper/", headers=claims), request_body(orjson.dumps(body))],
    )
    assert went_upstream(answers)
    sent = set_headers(answers[0], "request_headers")
    assert sent["x-aigw-caller"] == "user:bob" and sent["x-aigw-user-id"] == "bob"


async def test_an_agent_the_caller_may_not_use_refuses_task_queries_too(
    config: GatewayConfig, services: Services
) -> None:
    agents = with_agents(config)
    rule = {"name": "helper-eng", "servers": ["helper"], "groups": ["engineering"]}
    section = agents.agents.model_validate(
        {**agents.agents.model_dump(mode="json"), "access": [rule]}
    )
    processor = processor_for(agents.model_copy(update={"agents": section}), services)
    body = {"jsonrpc": "2.0", "id": "q", "method": "tasks/get", "params": {"id": "t"}}
    answers = await run_stream(
        processor,
        [request_headers("/a2a/helper/", headers=TEAM2), request_body(orjson.dumps(body))],
    )
    status, error = refused(answers)
    # -32030, not -32003: that is A2A's PushNotificationNotSupportedError.
    assert status == 200 and error["id"] == "q" and error["error"]["code"] == -32030
    assert error["error"]["data"]["code"] == "agent_not_allowed"


async def test_a_tool_list_asked_under_id_null_gets_its_filtered_list_over_sse(
    config: GatewayConfig, services: Services
) -> None:
    # docs/agents.md: "An id of null is still a request to JSON-RPC and is checked as one."
    # Its filtered answer must reach the client, not an "unreadable" error in its place.
    request = {"jsonrpc": "2.0", "id": None, "method": "tools/list"}
    chunk = sse_event({**LISTED, "id": None})
    answers = await post(config, services, request, response_headers(200, SSE),
                         response_body(chunk))  # fmt: skip
    seen = client_body([chunk], answers)
    assert b"deploy_prod" not in seen
    assert b'"echo"' in seen and b"-32603" not in seen, seen


def test_two_servers_never_share_one_envoy_cluster() -> None:
    # "tools-a" and "tools_a" are distinct valid names, but both rendered as the cluster
    # and routing header agent_tools_a: Envoy refuses the bootstrap (duplicate cluster),
    # or the first route takes both servers' traffic, under the other's rules.
    from extproc.agents.directory import agent_cluster_name
    from tests.unit.test_envoy_bootstrap import gateway

    servers = {
        "servers": [
            {"name": "tools-a", "protocol": "mcp", "url": "http://10.0.0.1:1/mcp"},
            {"name": "tools_a", "protocol": "mcp", "url": "http://10.0.0.2:1/mcp"},
        ]
    }
    routes = [
        {"name": "a", "path": "/a", "api": "mcp", "server": "tools-a"},
        {"name": "b", "path": "/b", "api": "mcp", "server": "tools_a"},
    ]
    try:
        loaded = gateway(routes=routes, agents=servers)
    except ValueError:
        return  # refused at load: fine
    clusters = [agent_cluster_name(server) for server in loaded.agents.servers]
    assert len(set(clusters)) == len(clusters), clusters
