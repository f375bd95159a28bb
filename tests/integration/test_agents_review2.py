"""Agents behind the gateway, as a platform team runs them: one agent, many callers.

The agent is built with the official ``a2a-sdk`` and serves both of its HTTP bindings on
one base URL, JSON-RPC at ``/`` and HTTP+JSON (``/message:send``, ``/tasks``...), as the
SDK lets an agent do. It keeps each caller's tasks apart the way the SDK does it, by an
owner per task, and it has no credentials of its own to tell callers by: the gateway
authenticated them and sends its own. So the owner is the caller the gateway names.

Alice (team 1) and Bob (team 2) both use the agent; Bob may send it one message an hour.
Bob must never see Alice's tasks, and never send more messages than his limit. Nor may
he, marketing, see the MCP server's ``deploy_*`` tools (engineering's) whatever URL his
client is configured with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from a2a.helpers import get_message_text
from a2a.server.agent_execution import RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from starlette.applications import Starlette

from extproc.devstack import LocalStack, free_port
from tests.integration.agent_servers import EchoAgent
from tests.integration.conftest import default_config, running_stack, wait_for, write_config
from tests.integration.test_agents import TEAM1, TEAM2, _listening, agent_stack

__all__ = ["agent_stack"]  # the SDK-built MCP server of test_agents, for its redirect

# Where the gateway names the caller it authenticated (docs/agents.md).
CALLER = "x-aigw-caller"


def caller_of(context: ServerCallContext) -> str:
    """The task owner: the caller the gateway names ('' when it names none)."""
    headers: dict[str, str] = context.state.get("headers", {})
    return headers.get(CALLER, "")


class Desk:
    """The agent, in this process, and the gateway in front of it."""

    def __init__(self, stack: LocalStack, agent: CountingAgent) -> None:
        self.stack = stack
        self.agent = agent

    def rpc(self, key: str, method: str, params: dict[str, Any], **headers: str) -> Any:
        """One JSON-RPC call through the gateway; its JSON answer."""
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        return self.post("/", key, body, **headers).json()

    def post(self, path: str, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.stack.base_url}/a2a/desk{path}",
            json=body,
            headers={"authorization": f"Bearer {key}", "a2a-version": "1.0", **headers},
            timeout=30.0,
        )

    def ran(self) -> list[str]:
        """The messages the agent ran, for anyone (read from the agent itself)."""
        return list(self.agent.ran)


class CountingAgent(EchoAgent):
    """The echo agent, keeping the text of each message it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        if context.message is not None:
            self.ran.append(get_message_text(context.message))
        await super().execute(context, event_queue)


def message(text: str) -> dict[str, Any]:
    return {
        "message": {"role": "ROLE_USER", "messageId": f"m-{time.time_ns()}",
                    "parts": [{"text": text}]},
    }  # fmt: skip


def agent_app(agent: CountingAgent, url: str) -> Starlette:
    card = AgentCard(
        name="desk",
        description="Echoes what it is told",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=url, protocol_binding="HTTP+JSON", protocol_version="1.0"),
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="Echoes text", tags=["echo"])],
    )
    # Each caller's tasks apart, by the caller the gateway names.
    handler = DefaultRequestHandlerV2(agent, InMemoryTaskStore(owner_resolver=caller_of), card)
    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, "/"),
        *create_rest_routes(handler),
    ]
    return Starlette(routes=routes)


def config_for(port: int) -> dict[str, Any]:
    raw = default_config()
    raw["agents"] = {
        "servers": [{"name": "desk", "protocol": "a2a", "url": f"http://127.0.0.1:{port}"}],
        "limits": [{"name": "bob-one-message", "subject": "user", "match": "bob",
                    "servers": ["desk"], "requests_per_hour": 1}],
    }  # fmt: skip
    raw["routes"] = [
        {"name": "desk", "path_prefix": "/a2a/desk", "api": "a2a", "server": "desk"},
        *raw["routes"],
    ]
    return raw


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    port = free_port()
    agent = CountingAgent()
    app = agent_app(agent, f"http://127.0.0.1:{port}/")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: _listening(port), 30.0), "the test agent did not start"
        workdir = tmp_path_factory.mktemp("agents-review2")
        with running_stack(workdir, write_config(workdir, config_for(port))) as stack:
            yield Desk(stack, agent)
    finally:
        server.should_exit = True
        thread.join(15)


def test_bob_neither_lists_nor_reads_alices_tasks(desk: Desk) -> None:
    sent = desk.rpc(TEAM1, "SendMessage", message("alice's salary review"))
    task_id = sent["result"]["task"]["id"]
    assert desk.rpc(TEAM1, "GetTask", {"id": task_id})["result"]["id"] == task_id
    listed = desk.rpc(TEAM2, "ListTasks", {})["result"]
    assert task_id not in [task["id"] for task in listed.get("tasks", [])]
    # Task ids are in logs, push notifications and other agents' messages: knowing one
    # must not be enough.
    assert "result" not in desk.rpc(TEAM2, "GetTask", {"id": task_id})
    # Nor may Bob say he is Alice: the gateway names the caller, not the client.
    claimed = desk.rpc(TEAM2, "ListTasks", {}, **{CALLER: "user:alice"})["result"]
    assert task_id not in [task["id"] for task in claimed.get("tasks", [])]


@pytest.mark.parametrize(
    "path", ["/message:send", "/message:stream", "/acme/message:send", "/message%3Asend"]
)
def test_bob_sends_no_message_past_his_limit_through_the_agents_other_binding(
    desk: Desk, path: str
) -> None:
    if time.time() % 3600 > 3590:
        time.sleep(11)  # Bob's messages must fall in one hour window
    desk.rpc(TEAM2, "SendMessage", message("my one message"))
    limited = desk.rpc(TEAM2, "SendMessage", message("and another"))
    assert limited["error"]["code"] == -32029
    # A JSON-RPC request the gateway reads as a task query (neither limited nor logged as
    # a message), sent to the HTTP+JSON binding, which ignores the fields it does not know
    # and reads the message beside them.
    disguised = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"},
                 **message("a message no limit counted")}  # fmt: skip
    answer = desk.post(path, TEAM2, disguised)
    assert answer.status_code == 404
    assert "a message no limit counted" not in desk.ran()


# --- MCP: the server's redirects -----------------------------------------------------------

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def test_a_client_configured_with_a_trailing_slash_stays_on_the_gateway(
    agent_stack: LocalStack,
) -> None:
    # The SDK server answers /mcp/ with a redirect to /mcp; MCP clients follow redirects
    # (the SDK's own HTTP client does), and drop the credential on the way to another host.
    gateway = httpx.URL(agent_stack.base_url)
    answer = httpx.post(
        f"{agent_stack.base_url}/mcp/tools/",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}},
        headers={"authorization": f"Bearer {TEAM2}", "mcp-protocol-version": "2026-07-28",
                 "accept": "application/json, text/event-stream", "mcp-method": "tools/list"},
        follow_redirects=True,
        timeout=30.0,
    )  # fmt: skip
    assert (answer.url.host, answer.url.port) == (gateway.host, gateway.port)
    assert {tool["name"] for tool in answer.json()["result"]["tools"]} == {"echo", "add"}
