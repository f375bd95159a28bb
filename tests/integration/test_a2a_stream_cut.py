"""An A2A stream its agent ends before its task settled, through Envoy and the gateway.

The test agent (``agent_servers._cut_a2a_stream``, on the lenient test server) answers
``SendStreamingMessage`` with its task submitted and working, then ends the body: between
two events, or inside the second. The official A2A SDK's JSON-RPC transport used to end
its iteration quietly there, the task ``working`` for where it stopped, and the request
was logged ``completed``; now it raises the gateway's error, and the log line names the
cut. A stream that settled under an id of the agent's own (the SDK reads answers without
looking at their id) is no cut: it reaches the SDK whole, without the gateway's error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from a2a.client.transports.jsonrpc import JsonRpcTransport
from a2a.types.a2a_pb2 import AgentCard, Message, Part, Role, SendMessageRequest, TaskState
from a2a.utils.errors import InternalError

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, running_stack, wait_for
from tests.integration.test_agents import TEAM2
from tests.integration.test_mcp_gaps import lenient_mcp_server

AGENTS = """
agents:
  servers:
    - name: cut-agent
      protocol: a2a
      url: http://127.0.0.1:{port}/a2a
    - name: other-id-agent
      protocol: a2a
      url: http://127.0.0.1:{port}/a2a-other-id
"""
ROUTES = """routes:
  - name: a2a-cut
    path_prefix: /a2a/cut
    api: a2a
    server: cut-agent
  - name: a2a-other-id
    path_prefix: /a2a/other-id
    api: a2a
    server: other-id-agent
"""
ENDED_EARLY = "the agent's stream ended before it was complete"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("a2a-stream-cut")
    with lenient_mcp_server(workdir / "agent.err") as port:
        text = DEFAULT_CONFIG.read_text().replace("\nroutes:\n", "\n" + ROUTES, 1)
        config = workdir / "gateway.yaml"
        config.write_text(text + AGENTS.format(port=port))
        with running_stack(workdir, config) as running:
            yield running


@asynccontextmanager
async def a2a_sdk(
    stack: LocalStack, path: str
) -> AsyncIterator[tuple[JsonRpcTransport, list[str]]]:
    """The A2A SDK's JSON-RPC transport to the agent route at ``path`` with Bob's key, and
    the ``x-request-id`` of every answer it gets (to find the request's log line)."""
    request_ids: list[str] = []

    async def remember(response: httpx.Response) -> None:
        request_ids.append(response.headers["x-request-id"])

    headers = {"authorization": f"Bearer {TEAM2}"}
    hooks = {"response": [remember]}
    async with httpx.AsyncClient(headers=headers, timeout=30.0, event_hooks=hooks) as client:
        yield JsonRpcTransport(client, AgentCard(), f"{stack.base_url}{path}"), request_ids


def hi() -> SendMessageRequest:
    """Bob's streamed message to the agent."""
    return SendMessageRequest(
        message=Message(role=Role.ROLE_USER, message_id="m1", parts=[Part(text="hi")])
    )


@pytest.mark.parametrize("cut", ["between", "inside"])
async def test_the_a2a_sdk_raises_the_gateways_error_for_a_stream_cut_mid_task(
    stack: LocalStack, cut: str
) -> None:
    events = []
    async with a2a_sdk(stack, f"/a2a/cut/?cut={cut}") as (transport, request_ids):
        with pytest.raises(InternalError, match="ended before it was complete"):
            async for event in transport.send_message_streaming(hi()):
                events.append(event)
    # The whole events came first: the task, and (cut between) its working state.
    assert events and events[0].task.id == "t-cut"
    assert len(events) == (2 if cut == "between" else 1)
    log = GatewayLog(stack.gateway_log)
    [line] = wait_for(lambda: log.for_request(request_ids[0]))
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")
    assert line["error_message"] == ENDED_EARLY
    agent = line["agent"]
    assert (agent["status"], agent["rpc_error_code"], agent["task_id"]) == (
        "upstream_error", -32603, "t-cut",
    )  # fmt: skip
    assert agent["task_state"] == ("working" if cut == "between" else "submitted")


async def test_a_settled_stream_under_the_agents_own_id_reaches_the_sdk_without_an_error(
    stack: LocalStack,
) -> None:
    # The agent answers the SDK's string id under its own number. The gateway matched
    # answers by id: it took the completed stream for one cut short and appended its
    # error, which the SDK raised after the task had completed.
    async with a2a_sdk(stack, "/a2a/other-id/") as (transport, request_ids):
        events = [event async for event in transport.send_message_streaming(hi())]
    assert events[0].task.id == "t-other"
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    log = GatewayLog(stack.gateway_log)
    [line] = wait_for(lambda: log.for_request(request_ids[0]))
    assert (line["outcome"], line["error_code"]) == ("completed", None)
    agent = line["agent"]
    assert (agent["status"], agent["task_id"], agent["task_state"]) == (
        "ok", "t-other", "completed",
    )  # fmt: skip
