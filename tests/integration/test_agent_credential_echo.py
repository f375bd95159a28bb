"""An MCP server that echoes its Authorization header never hands Bob the gateway's key.

The server ``echoer`` (built with the official ``mcp`` SDK) takes the gateway's own
credential, ``Authorization: Bearer <KEY>``; Bob (team 2) calls it through Envoy with his
own key and the official ``mcp`` client. Its tool ``whoami`` answers with the header it
got, and its tool ``refuse`` answers a JSON-RPC error quoting it. Before, Bob's client
read the gateway's key in both; now it reads asterisks where it stood (SSE answers of a
session and JSON answers of the 2026-07-28 era alike), the gateway's log names the
server without the key, and ``aigw_agent_credential_echoes_total{server="echoer"}``
counts the requests. Bob's own key, sent in a tool's arguments by a client whose settings
were swapped, is starred where the server's error quotes it (``lookup``), and passes as
it came in a result that repeats it (``repeat``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError

from extproc.devstack import LocalStack, free_port
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.test_agents import MODES, TEAM2, _listening, mcp_session

KEY = "sk-echoer-7Hq2/Zp9+Lw4=xR8"
STARS = "*" * len(KEY)


def echoing_server() -> MCPServer:
    server = MCPServer("echoer")

    @server.tool()
    def whoami(ctx: Context) -> str:
        """Say which credential the request came with (a debug tool left on)."""
        headers = ctx.headers or {}
        return f"you sent {headers.get('authorization', '')}"

    @server.tool()
    def refuse(ctx: Context) -> str:
        """Refuse with a JSON-RPC error quoting the credential (a validation error listing
        what it was sent)."""
        headers = ctx.headers or {}
        raise MCPError(-32602, f"not allowed for {headers.get('authorization', '')}")

    @server.tool()
    def lookup(query: str) -> str:
        """Refuse a query it cannot read, quoting it (a validation error)."""
        raise MCPError(-32602, f"invalid query '{query}'")

    @server.tool()
    def repeat(text: str) -> str:
        """Repeat what it was sent."""
        return f"you said {text}"

    return server


def config_for(port: int) -> dict[str, Any]:
    raw = default_config()
    raw["agents"] = {
        "servers": [{"name": "echoer", "protocol": "mcp",
                     "url": f"http://127.0.0.1:{port}/mcp", "api_key": KEY}],
    }  # fmt: skip
    raw["routes"] = [
        {"name": "echoer", "path_prefix": "/mcp/echoer", "api": "mcp", "server": "echoer"},
        *raw["routes"],
    ]
    return raw


@pytest.fixture(scope="module")
def echo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    port = free_port()
    app = echoing_server().streamable_http_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: _listening(port), 30.0), "the echoing MCP server did not start"
        workdir = tmp_path_factory.mktemp("agent-credential-echo")
        with running_stack(workdir, write_config(workdir, config_for(port))) as stack:
            yield stack
    finally:
        server.should_exit = True
        thread.join(15)


def _text(result: Any) -> str:
    return "".join(getattr(part, "text", "") for part in result.content)


@pytest.mark.parametrize("mode", MODES)
async def test_bobs_client_reads_stars_where_the_server_quoted_the_gateways_key(
    echo_stack: LocalStack, mode: str
) -> None:
    async with mcp_session(echo_stack, TEAM2, mode, server="echoer") as client:
        said = await client.call_tool("whoami", {})
        with pytest.raises(MCPError) as refused:
            await client.call_tool("refuse", {})
    assert _text(said) == f"you sent Bearer {STARS}"
    assert refused.value.message == f"not allowed for Bearer {STARS}"
    samples = scrape(echo_stack.metrics_url)
    assert metric(samples, "aigw_agent_credential_echoes_total", server="echoer") >= 2
    # The operator learns which server did it, never the key itself.
    # The diagnostic log is written by a thread of its own: the line lands a moment later.
    warned = "the MCP server 'echoer' quoted the gateway's credential"
    errors = wait_for(
        lambda: text if warned in (text := (echo_stack.workdir / "gateway.err").read_text()) else ""
    )
    assert warned in errors
    assert KEY not in errors
    assert KEY not in echo_stack.gateway_log.read_text()
    assert any(line.get("agent") for line in GatewayLog(echo_stack.gateway_log).lines())


@pytest.mark.parametrize("mode", MODES)
async def test_bobs_own_key_quoted_in_an_error_reaches_him_starred_and_echoed_results_pass(
    echo_stack: LocalStack, mode: str
) -> None:
    # Bob's client had its settings swapped: his own key went into a tool's arguments.
    # The server's error quoted it, and Bob's SDK raised it into whatever logs his errors.
    async with mcp_session(echo_stack, TEAM2, mode, server="echoer") as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("lookup", {"query": TEAM2})
        said = await client.call_tool("repeat", {"text": TEAM2})
    assert refused.value.message == f"invalid query '{'*' * len(TEAM2)}'"
    # A result repeating what Bob sent is his own data: as it came.
    assert _text(said) == f"you said {TEAM2}"
