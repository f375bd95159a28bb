"""Agent traffic review, behind the real Envoy and gateway.

A stand-in MCP server reads JSON the way some parsers do (the first of two equal keys
wins, where the gateway's orjson keeps the last), routes a tool call by its
``Mcp-Name`` header when it has one, and refuses any credential but its own with a 401
naming its internal authorization server. Bob (team 2, marketing) may not use
``deploy_*``: whatever he sends, no ``deploy_*`` tool runs for him. The official MCP
client, in its 2026-07-28 mode, still calls tools through the gateway.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, default_config, running_stack_calling, wait_for
from tests.integration.test_agents import TEAM1, TEAM2, agent_stack, mcp_session

__all__ = ["agent_stack"]  # the SDK server and agent, started once for this module

SERVER_TOKEN = "right-server-token"
INTERNAL_AUTH = 'Bearer resource_metadata="http://auth.tools.internal/.well-known/oauth"'
ACCEPT = {"accept": "application/json, text/event-stream"}


class FirstKeyServer(BaseHTTPRequestHandler):
    """An MCP endpoint that runs tool calls as a lax server would; ``ran`` lists them."""

    ran: list[str] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("authorization") != f"Bearer {SERVER_TOKEN}":
            # Some servers echo what they refused: it must not reach the gateway's client.
            said = f"invalid token: {self.headers.get('authorization')}".encode()
            self._answer(401, said, {"www-authenticate": INTERNAL_AUTH})
            return
        # The first of two equal keys wins (simdjson's on-demand API reads this way).
        message = json.loads(raw, object_pairs_hook=lambda pairs: dict(reversed(pairs)))
        params = message.get("params") or {}
        if message.get("method") == "tools/call":
            tool = self.headers.get("mcp-name") or params.get("name")
            with self.lock:
                self.ran.append(str(tool))
            if tool == "crash":
                # A framework's error page, with the server's internals in it.
                page = b"<html><pre>Traceback: /srv/tools/app.py, line 12</pre></html>"
                self._answer(500, page, {"content-type": "text/html"})
                return
            result: dict[str, Any] = {"content": [{"type": "text", "text": f"ran {tool}"}]}
        else:
            result = {}
        body = orjson.dumps({"jsonrpc": "2.0", "id": message.get("id"), "result": result})
        self._answer(200, body, {"content-type": "application/json"})

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def config_for(port: int) -> dict[str, Any]:
    raw = default_config()
    raw["agents"] = {
        "servers": [
            {"name": "lax", "protocol": "mcp", "url": f"http://127.0.0.1:{port}/mcp",
             "api_key": SERVER_TOKEN},
            {"name": "misconfigured", "protocol": "mcp", "url": f"http://127.0.0.1:{port}/mcp",
             "api_key": "stale-server-token"},
        ],
        "access": [{"name": "deploy-is-engineering", "tools": ["deploy_*"],
                    "groups": ["engineering"]}],
    }  # fmt: skip
    raw["routes"] = [
        {"name": "mcp-lax", "path_prefix": "/mcp/lax", "api": "mcp", "server": "lax"},
        {"name": "mcp-misconfigured", "path_prefix": "/mcp/misconfigured", "api": "mcp",
         "server": "misconfigured"},
        *raw["routes"],
    ]  # fmt: skip
    return raw


@pytest.fixture(scope="module")
def lax_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("agents-review")
    with running_stack_calling(FirstKeyServer, workdir, config_for) as stack:
        yield stack


def post(stack: LocalStack, route: str, key: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/mcp/{route}",
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json",
                 **ACCEPT, **headers},
        timeout=30.0,
    )  # fmt: skip


DEPLOY = b'{"name":"deploy_production","arguments":{"service":"billing"}}'


def test_the_lax_server_runs_what_engineering_may_call(lax_stack: LocalStack) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + DEPLOY + b"}"
    answer = post(lax_stack, "lax", TEAM1, body)
    assert answer.json()["result"]["content"][0]["text"] == "ran deploy_production"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":' + DEPLOY
                     + b',"method":"ping"}', {}, id="method-twice"),
        pytest.param(b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":'
                     b'{"name":"deploy_production","name":"echo"}}', {}, id="tool-twice"),
        pytest.param(b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo"}}',
                     {"mcp-method": "tools/call", "mcp-name": "deploy_production"},
                     id="header-names-another-tool"),
    ],
)  # fmt: skip
def test_bob_cannot_make_the_server_run_a_tool_other_than_the_one_checked(
    lax_stack: LocalStack, body: bytes, headers: dict[str, str]
) -> None:
    with FirstKeyServer.lock:
        FirstKeyServer.ran.clear()
    answer = post(lax_stack, "lax", TEAM2, body, **headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32600
    with FirstKeyServer.lock:
        assert "deploy_production" not in FirstKeyServer.ran


def test_the_servers_refusal_of_the_gateways_credential_is_a_502_for_the_client(
    lax_stack: LocalStack,
) -> None:
    body = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo"}}'
    answer = post(lax_stack, "misconfigured", TEAM1, body)
    assert answer.status_code == 502
    assert "www-authenticate" not in answer.headers
    assert "stale-server-token" not in answer.text and "tools.internal" not in answer.text
    assert answer.json()["error"]["data"]["code"] == "upstream_credentials_refused"
    request_id = answer.headers["x-request-id"]
    [line] = GatewayLog(lax_stack.gateway_log).for_request(request_id)
    assert line["agent"]["status"] == "upstream_error" and line["http_status_code"] == 502


def test_a_servers_error_page_reaches_the_client_as_a_jsonrpc_error(
    lax_stack: LocalStack,
) -> None:
    body = b'{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"crash"}}'
    answer = post(lax_stack, "lax", TEAM1, body)
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    assert "Traceback" not in answer.text
    error = answer.json()["error"]
    assert error["code"] == -32603 and error["data"]["code"] == "upstream_failed"
    assert error["message"] == "the MCP server 'lax' failed (HTTP 500) without a JSON-RPC answer"
    [line] = GatewayLog(lax_stack.gateway_log).for_request(answer.headers["x-request-id"])
    assert line["agent"]["status"] == "upstream_error" and line["http_status_code"] == 500


async def test_the_official_client_in_2026_mode_calls_tools_with_its_name_headers(
    agent_stack: LocalStack,
) -> None:
    # It mirrors the method and tool in Mcp-Method / Mcp-Name: they agree with the body.
    async with mcp_session(agent_stack, TEAM1, "auto") as client:
        result = await client.call_tool("echo", {"text": "still works"})
    assert not result.is_error
    lines = wait_for(
        lambda: [
            line
            for line in GatewayLog(agent_stack.gateway_log).lines()
            if (line.get("agent") or {}).get("tool") == "echo"
        ]
    )
    assert lines and lines[-1]["agent"]["status"] == "ok"
