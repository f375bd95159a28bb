"""MCP and A2A through the gateway: the official SDK clients against SDK-built servers,
behind the real Envoy and the gateway.

Team 1 (group engineering) and team 2 (group marketing) share an MCP server of five
tools and an A2A echo agent. Only engineering may see and call ``deploy_*``;
marketing may not call ``fail``; ``add`` allows each key two calls an hour; bob
(team 2) may send the agent one message an hour.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import orjson
import pytest
from a2a.client import ClientConfig, create_client
from a2a.client.errors import A2AClientError
from a2a.types.a2a_pb2 import (
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from extproc.devstack import DEFAULT_CONFIG, LocalStack, free_port
from extproc.store.agent_owners import binding_digest
from extproc.store.connection import connect
from extproc.store.embedded import running_endpoint
from tests.integration.conftest import (
    REFUSED_PORT,
    GatewayLog,
    metric,
    running_stack,
    scrape,
    wait_for,
)

TEAM1 = "team1-key"  # group engineering, user alice
TEAM2 = "team2-key"  # group marketing, user bob
MODES = ("legacy", "auto")  # initialize + session + SSE answers; 2026-07-28 + JSON answers
FORBIDDEN = -32003
RATE_LIMITED = -32029

AGENTS = """
agents:
  servers:
    - name: tools
      protocol: mcp
      url: http://127.0.0.1:{mcp}/mcp
    - name: echo-agent
      protocol: a2a
      url: http://127.0.0.1:{a2a}
    - name: gone
      protocol: mcp
      url: http://127.0.0.1:{gone}/mcp
  access:
    - name: deploy-is-engineering
      tools: ["deploy_*"]
      groups: [engineering]
    - name: marketing-never-fails
      effect: deny
      tools: [fail]
      groups: [marketing]
  limits:
    - name: add-twice-an-hour
      subject: api_key
      servers: [tools]
      tools: [add]
      requests_per_hour: 2
    - name: bob-one-message
      subject: user
      match: bob
      servers: [echo-agent]
      requests_per_hour: 1
"""
ROUTES = """routes:
  - name: mcp-tools
    path_prefix: /mcp/tools
    api: mcp
    server: tools
  - name: echo-agent
    path_prefix: /a2a/echo
    api: a2a
    server: echo-agent
  - name: mcp-gone
    path_prefix: /mcp/gone
    api: mcp
    server: gone
"""


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def agent_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("agents")
    mcp_port, a2a_port = free_port(), free_port()
    with (workdir / "agent-servers.err").open("ab") as err:
        servers = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.agent_servers",
             "--mcp-port", str(mcp_port), "--a2a-port", str(a2a_port)],
            stdout=subprocess.DEVNULL, stderr=err, cwd=Path.cwd(),
        )  # fmt: skip
    try:
        assert wait_for(lambda: _listening(mcp_port) and _listening(a2a_port), 60.0), (
            "the test MCP server and A2A agent did not start"
        )
        text = DEFAULT_CONFIG.read_text().replace("\nroutes:\n", "\n" + ROUTES, 1)
        config = workdir / "gateway.yaml"
        # Nothing listens on the gone server's port.
        config.write_text(text + AGENTS.format(mcp=mcp_port, a2a=a2a_port, gone=REFUSED_PORT))
        with running_stack(workdir, config) as running:
            yield running
    finally:
        servers.terminate()
        servers.wait(15)


@asynccontextmanager
async def mcp_session(
    stack: LocalStack, key: str | None, mode: str, server: str = "tools"
) -> AsyncIterator[Client]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30.0) as http:
        transport = streamable_http_client(f"{stack.base_url}/mcp/{server}", http_client=http)
        async with Client(transport, mode=mode) as client:  # type: ignore[arg-type]
            yield client


async def raw_tool_call(
    stack: LocalStack, key: str, tool: str, arguments: dict[str, Any]
) -> httpx.Response:
    """One tools/call as a 2026-07-28 client sends it: one POST, no session."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": meta}}  # fmt: skip
    async with httpx.AsyncClient(timeout=30.0) as http:
        return await http.post(
            f"{stack.base_url}/mcp/tools",
            json=body,
            headers={
                "authorization": f"Bearer {key}",
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/call",
                "mcp-name": tool,
            },
        )


def tool_lines(stack: LocalStack, tool: str, user: str) -> list[dict[str, Any]]:
    return [
        line
        for line in GatewayLog(stack.gateway_log).lines()
        if (line.get("agent") or {}).get("tool") == tool and line.get("user_id") == user
    ]


# --- MCP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_each_caller_lists_only_the_tools_it_may_call(
    agent_stack: LocalStack, mode: str
) -> None:
    async with mcp_session(agent_stack, TEAM1, mode) as engineering:
        listed = {tool.name for tool in (await engineering.list_tools()).tools}
    assert listed == {"echo", "add", "fail", "deploy_staging", "deploy_production"}
    async with mcp_session(agent_stack, TEAM2, mode) as marketing:
        listed = {tool.name for tool in (await marketing.list_tools()).tools}
    assert listed == {"echo", "add"}


@pytest.mark.parametrize("mode", MODES)
async def test_a_forbidden_tool_call_is_a_jsonrpc_error_and_allowed_ones_run(
    agent_stack: LocalStack, mode: str
) -> None:
    async with mcp_session(agent_stack, TEAM2, mode) as marketing:
        echoed = await marketing.call_tool("echo", {"text": "hello through the gateway"})
        assert echoed.content[0].text == "hello through the gateway"  # type: ignore[union-attr]
        with pytest.raises(MCPError) as refused:
            await marketing.call_tool("deploy_production", {"service": "billing"})
        assert refused.value.code == FORBIDDEN
        assert "deploy-is-engineering" in refused.value.message
        # The session survives a refusal.
        again = await marketing.call_tool("echo", {"text": "still here"})
        assert again.structured_content == {"result": "still here"}
    async with mcp_session(agent_stack, TEAM1, mode) as engineering:
        deployed = await engineering.call_tool("deploy_production", {"service": "billing"})
        assert deployed.content[0].text == "billing deployed to production"  # type: ignore[union-attr]
        failed = await engineering.call_tool("fail", {})
        assert failed.is_error


async def test_tool_calls_are_logged_and_counted_per_tool_server_and_identity(
    agent_stack: LocalStack,
) -> None:
    async with mcp_session(agent_stack, TEAM2, "legacy") as marketing:
        with pytest.raises(MCPError):
            await marketing.call_tool("deploy_staging", {"service": "web"})
        await marketing.call_tool("echo", {"text": "logged"})
    denied = wait_for(lambda: tool_lines(agent_stack, "deploy_staging", "bob"))
    line = denied[-1]
    assert line["route"] == "mcp-tools" and line["group_id"] == "marketing"
    assert line["http_status_code"] == 200 and line["outcome"] == "rejected"
    assert line["agent"]["status"] == "denied" and line["agent"]["server"] == "tools"
    assert line["agent"]["rpc_error_code"] == FORBIDDEN
    assert line["agent"]["session"] and len(line["agent"]["session"]) == 16
    ok = wait_for(lambda: tool_lines(agent_stack, "echo", "bob"))[-1]
    assert ok["agent"]["status"] == "ok" and ok["outcome"] == "completed"
    assert ok["agent"]["answer_ms"] > 0
    samples = scrape(agent_stack.metrics_url)
    assert metric(samples, "aigw_mcp_tool_calls_total", tool="deploy_staging",
                  status="denied", group_id="marketing", server="tools") >= 1  # fmt: skip
    assert metric(samples, "aigw_mcp_tool_calls_total", tool="echo", status="ok",
                  user_id="bob") >= 1  # fmt: skip
    assert metric(samples, "aigw_mcp_tool_call_duration_seconds_count", tool="echo") >= 1
    assert metric(samples, "aigw_mcp_tools_hidden_total", server="tools") >= 0
    lines = GatewayLog(agent_stack.gateway_log).lines()
    kinds = {(line.get("agent") or {}).get("kind") for line in lines}
    # The legacy session opened its GET stream and ended with DELETE, both through the gateway.
    assert {"stream", "session_end"} <= kinds


async def test_a_tool_limit_refuses_the_third_call_in_the_hour(agent_stack: LocalStack) -> None:
    if time.time() % 3600 > 3590:
        await asyncio.sleep(11)  # the three calls must fall in one hour window
    first = await raw_tool_call(agent_stack, TEAM2, "add", {"a": 1, "b": 1})
    assert first.json()["result"]["structuredContent"] == {"result": 2}
    # The tightest limit's state, in OpenAI's headers, as on LLM routes.
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    async with mcp_session(agent_stack, TEAM2, "auto") as marketing:
        assert (await marketing.call_tool("add", {"a": 1, "b": 2})).structured_content
        with pytest.raises(MCPError) as limited:
            await marketing.call_tool("add", {"a": 1, "b": 3})
        # Other tools are not counted by that rule.
        await marketing.call_tool("echo", {"text": "still fine"})
    assert limited.value.code == RATE_LIMITED
    assert "add-twice-an-hour" in limited.value.message
    assert limited.value.data["retry_after_s"] > 0
    samples = scrape(agent_stack.metrics_url)
    assert metric(samples, "aigw_mcp_tool_calls_total", tool="add", status="rate_limited") == 1


def _mcp_error(raised: BaseException) -> MCPError:
    """The MCPError the client raised, out of the task groups that wrap it when it
    comes while the client connects."""
    while isinstance(raised, BaseExceptionGroup):
        raised = raised.exceptions[0]
    assert isinstance(raised, MCPError), repr(raised)
    return raised


@pytest.mark.parametrize("mode", MODES)
async def test_the_official_client_reads_why_the_gateway_refused_a_call(
    agent_stack: LocalStack, mode: str
) -> None:
    # HTTP errors carry JSON-RPC errors, which the SDK raises with their message: the
    # OpenAI-shaped body it raised as "Server returned an error response".
    async with mcp_session(agent_stack, TEAM2, mode) as marketing:
        with pytest.raises(MCPError) as too_large:
            await marketing.call_tool("echo", {"text": "x" * 1_100_000})
        assert "over the limit of 1048576 bytes" in too_large.value.message
        # The session survives it.
        again = await marketing.call_tool("echo", {"text": "smaller"})
        assert again.structured_content == {"result": "smaller"}
    with pytest.raises(BaseException) as unauthenticated:
        async with mcp_session(agent_stack, "not-a-key", mode):
            pass
    assert "invalid API key" in _mcp_error(unauthenticated.value).message


@pytest.mark.parametrize("mode", MODES)
async def test_a_server_that_is_down_is_an_error_the_official_client_reads(
    agent_stack: LocalStack, mode: str
) -> None:
    # Envoy's own 503, in the JSON-RPC shape on an agent route.
    with pytest.raises(BaseException) as down:
        async with mcp_session(agent_stack, TEAM1, mode, server="gone") as client:
            await client.list_tools()
    assert _mcp_error(down.value).message == "the agent server is unavailable"
    async with httpx.AsyncClient(timeout=30.0) as http:
        answer = await http.post(
            f"{agent_stack.base_url}/mcp/gone",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"authorization": f"Bearer {TEAM1}",
                     "accept": "application/json, text/event-stream"},
        )  # fmt: skip
    assert answer.status_code == 503
    assert answer.json()["error"]["data"]["code"] == "upstream_unavailable"


def test_an_unauthenticated_mcp_client_is_refused(agent_stack: LocalStack) -> None:
    answer = httpx.post(
        f"{agent_stack.base_url}/mcp/tools",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"accept": "application/json, text/event-stream"},
        timeout=30.0,
    )
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


# --- A2A ----------------------------------------------------------------------------------


def _message(text: str) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(
            role=Role.ROLE_USER, message_id=f"m-{time.time_ns()}", parts=[Part(text=text)]
        )
    )


async def _send(
    stack: LocalStack, key: str | None, text: str, *, streaming: bool
) -> list[StreamResponse]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(headers=headers, timeout=30.0) as http:
        client = await create_client(
            f"{stack.base_url}/a2a/echo",
            client_config=ClientConfig(streaming=streaming, httpx_client=http),
        )
        return [event async for event in client.send_message(_message(text))]


def test_the_agent_card_points_clients_at_the_gateway(agent_stack: LocalStack) -> None:
    # Public: discovery comes before credentials.
    card = httpx.get(f"{agent_stack.base_url}/a2a/echo/.well-known/agent-card.json", timeout=30.0)
    assert card.status_code == 200
    urls = [item["url"] for item in card.json()["supportedInterfaces"]]
    assert urls == [f"{agent_stack.base_url}/a2a/echo/"]


async def test_a_message_is_sent_through_the_gateway_and_its_task_logged(
    agent_stack: LocalStack,
) -> None:
    events = await _send(agent_stack, TEAM1, "hello agent", streaming=False)
    task = events[-1].task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.artifacts[0].parts[0].text == "echo: hello agent"
    lines = wait_for(
        lambda: [
            line
            for line in GatewayLog(agent_stack.gateway_log).lines()
            if (line.get("agent") or {}).get("task_id") == task.id
        ]
    )
    agent = lines[-1]["agent"]
    assert agent["protocol"] == "a2a" and agent["server"] == "echo-agent"
    assert agent["method"] == "SendMessage" and agent["task_state"] == "completed"
    assert lines[-1]["user_id"] == "alice"


async def test_a_streamed_message_arrives_event_by_event(agent_stack: LocalStack) -> None:
    events = await _send(agent_stack, TEAM1, "stream it", streaming=True)
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds[0] == "task" and "artifact_update" in kinds
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    labels = {"agent": "echo-agent", "method": "SendStreamingMessage", "status": "ok"}

    def counted() -> bool:
        # Counted once the gateway has seen the stream end, which may come just after
        # the client read its last event.
        samples = scrape(agent_stack.metrics_url)
        return (
            metric(samples, "aigw_a2a_messages_total", group_id="engineering", **labels) >= 1
            and metric(samples, "aigw_a2a_tasks_total", agent="echo-agent", state="completed") >= 1
        )

    assert wait_for(counted), "the streamed message and its completed task were not counted"


@pytest.mark.parametrize("method", ["message/send", "message/stream"])
async def test_a2a_0_3_clients_are_served_and_logged_too(
    agent_stack: LocalStack, method: str
) -> None:
    message = {"role": "user", "kind": "message", "messageId": f"m-{time.time_ns()}",
               "parts": [{"kind": "text", "text": "old protocol"}]}  # fmt: skip
    body = {"jsonrpc": "2.0", "id": "req-1", "method": method, "params": {"message": message}}
    async with httpx.AsyncClient(timeout=30.0) as http:
        answer = await http.post(
            f"{agent_stack.base_url}/a2a/echo/",
            json=body,
            headers={"authorization": f"Bearer {TEAM1}", "accept": "text/event-stream"},
        )
    assert answer.status_code == 200
    if method == "message/stream":
        events = [
            orjson.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:")
        ]
        assert [e["result"]["kind"] for e in events][-1] == "status-update"
        task_id = events[0]["result"]["id"]
    else:
        task_id = answer.json()["result"]["id"]
    line = wait_for(
        lambda: [
            found
            for found in GatewayLog(agent_stack.gateway_log).lines()
            if (found.get("agent") or {}).get("task_id") == task_id
        ]
    )[-1]
    assert line["agent"]["method"] == method and line["agent"]["task_state"] == "completed"
    assert line["stream"] is (method == "message/stream")


async def test_an_unauthenticated_message_is_refused(agent_stack: LocalStack) -> None:
    with pytest.raises(A2AClientError) as refused:
        await _send(agent_stack, None, "who am I", streaming=False)
    assert "401" in str(refused.value)


async def test_the_agent_limit_refuses_bobs_second_message(agent_stack: LocalStack) -> None:
    if time.time() % 3600 > 3590:
        await asyncio.sleep(11)
    await _send(agent_stack, TEAM2, "first", streaming=False)
    with pytest.raises(A2AClientError) as limited:
        await _send(agent_stack, TEAM2, "second", streaming=False)
    assert "bob-one-message" in str(limited.value)


# --- sessions and tasks belong to the caller who opened them -------------------------------


def _not_owner_lines(stack: LocalStack, user: str, protocol: str) -> list[dict[str, Any]]:
    return [
        line
        for line in GatewayLog(stack.gateway_log).lines()
        if (line.get("agent") or {}).get("status") == "not_owner"
        and (line["user_id"], line["agent"]["protocol"]) == (user, protocol)
    ]


async def test_bob_holding_alices_session_id_is_refused_and_alice_goes_on(
    agent_stack: LocalStack,
) -> None:
    opened: list[str] = []

    async def note_session(response: httpx2.Response) -> None:
        if "mcp-session-id" in response.headers:
            opened.append(response.headers["mcp-session-id"])

    alice_http = httpx2.AsyncClient(
        headers={"authorization": f"Bearer {TEAM1}"},
        timeout=30.0,
        event_hooks={"response": [note_session]},
    )
    async with alice_http:
        url = f"{agent_stack.base_url}/mcp/tools"
        transport = streamable_http_client(url, http_client=alice_http)
        async with Client(transport, mode="legacy") as alice:  # type: ignore[arg-type]
            assert opened, "the server opened no session"
            session = opened[0]
            # Bob's own client, every request of it carrying Alice's session id (a log
            # line, a screenshot): the gateway answers as for an unknown session.
            bob_headers = {"authorization": f"Bearer {TEAM2}", "mcp-session-id": session}
            async with httpx2.AsyncClient(headers=bob_headers, timeout=30.0) as bob_http:
                bob_transport = streamable_http_client(url, http_client=bob_http)
                with pytest.raises(BaseException) as refused:
                    async with Client(bob_transport, mode="legacy") as bob:  # type: ignore[arg-type]
                        await bob.list_tools()
                error = _mcp_error(refused.value)
                assert (error.code, error.message) == (-32600, "Session not found")
            # Nor may he read its stream or end it.
            async with httpx.AsyncClient(headers=bob_headers, timeout=30.0) as raw:
                stream = await raw.get(url, headers={"accept": "text/event-stream"})
                ended = await raw.delete(url)
            for answer in (stream, ended):
                assert answer.status_code == 404
                assert answer.json()["error"] == {"code": -32600, "message": "Session not found"}
            # Alice's session is whole: her call runs in it.
            result = await alice.call_tool("add", {"a": 2, "b": 3})
            assert not result.is_error
    lines = wait_for(lambda: len(found := _not_owner_lines(agent_stack, "bob", "mcp")) >= 3
                     and found)  # fmt: skip
    assert {line["agent"]["kind"] for line in lines} >= {"rpc", "stream", "session_end"}
    assert all(line["http_status_code"] == 404 for line in lines)
    samples = scrape(agent_stack.metrics_url)
    assert metric(samples, "aigw_agent_binding_refusals_total", server="tools", kind="session") >= 3


async def test_bobs_get_task_on_alices_task_is_task_not_found_and_alices_works(
    agent_stack: LocalStack,
) -> None:
    events = await _send(agent_stack, TEAM1, "mine", streaming=False)
    task_id = events[-1].task.id

    async def get_task(key: str) -> Any:
        async with httpx.AsyncClient(
            headers={"authorization": f"Bearer {key}"}, timeout=30.0
        ) as http:
            client = await create_client(
                f"{agent_stack.base_url}/a2a/echo",
                client_config=ClientConfig(streaming=False, httpx_client=http),
            )
            return await client.get_task(GetTaskRequest(id=task_id))

    with pytest.raises(TaskNotFoundError):
        await get_task(TEAM2)
    task = await get_task(TEAM1)
    assert task.id == task_id and task.status.state == TaskState.TASK_STATE_COMPLETED
    [line] = wait_for(lambda: _not_owner_lines(agent_stack, "bob", "a2a"))
    assert line["agent"]["method"] == "GetTask" and line["error_code"] == "task_not_found"
    samples = scrape(agent_stack.metrics_url)
    assert (
        metric(samples, "aigw_agent_binding_refusals_total", server="echo-agent", kind="task") == 1
    )


async def test_a_session_alice_ends_leaves_no_record_in_the_store(agent_stack: LocalStack) -> None:
    # The mcp client ends its session with DELETE when it closes; the server answers 200,
    # and the record of who opened the session goes with it, not 7 days later.
    opened: list[str] = []

    async def note_session(response: httpx2.Response) -> None:
        if "mcp-session-id" in response.headers:
            opened.append(response.headers["mcp-session-id"])

    url = running_endpoint(Path(agent_stack.env["EXTPROC_DATA_DIR"]))
    assert url is not None
    store = connect(url, 5.0)
    alice_http = httpx2.AsyncClient(
        headers={"authorization": f"Bearer {TEAM1}"},
        timeout=30.0,
        event_hooks={"response": [note_session]},
    )
    try:
        async with alice_http:
            transport = streamable_http_client(
                f"{agent_stack.base_url}/mcp/tools", http_client=alice_http
            )
            async with Client(transport, mode="legacy") as alice:  # type: ignore[arg-type]
                await alice.list_tools()
                record = f"aigw:agent_owner:{binding_digest('tools', 'session', opened[0])}"
                assert await store.get(record) == b"user:alice"
        # The log line names the session by its digest (AgentCall.set_session).
        logged = hashlib.sha256(opened[0].encode()).hexdigest()[:16]
        ended = wait_for(
            lambda: [
                line
                for line in GatewayLog(agent_stack.gateway_log).lines()
                if (line.get("agent") or {}).get("kind") == "session_end"
                and line["agent"].get("session") == logged
            ]
        )
        assert ended[-1]["http_status_code"] == 200 and ended[-1]["user_id"] == "alice"
        assert await store.exists(record) == 0
    finally:
        await store.aclose()
