"""Behind an egress proxy: Envoy reaches the provider and an MCP server only through the
configured HTTP forward proxy, with CONNECT, and the client's answer comes back through it.

The proxy is the unit tests' ``ForwardProxy`` (loopback only, it records the CONNECT
targets it tunnels), run on its own event loop in a thread beside the stack. The mock
provider speaks plain http on loopback, which a CONNECT tunnel carries as it carries
TLS."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future

import httpx
import openai
import pytest

from extproc.devstack import LocalStack, free_port
from tests.integration.conftest import (
    default_config,
    mock_requests,
    running_stack,
    write_config,
)
from tests.integration.test_mcp_gaps import lenient_mcp_server
from tests.unit.test_egress_proxy import ForwardProxy

CLIENT_KEY = "team1-key"


class ProxyThread:
    """A ``ForwardProxy`` on its own loop in a daemon thread, for a synchronous test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxy = ForwardProxy()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self, port: int) -> None:
        self._thread.start()
        started: Future[ForwardProxy] = asyncio.run_coroutine_threadsafe(
            self.proxy.start(port), self.loop
        )
        started.result(timeout=10)

    def targets(self) -> list[str]:
        # Read on the proxy's own loop: the deque is appended to there.
        async def copy() -> list[str]:
            return list(self.proxy.targets)

        return asyncio.run_coroutine_threadsafe(copy(), self.loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def proxy() -> Iterator[ProxyThread]:
    running = ProxyThread()
    running.start(free_port())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mcp_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """An MCP server outside the gateway's network (the tests' lenient one)."""
    with lenient_mcp_server(tmp_path_factory.mktemp("egress-mcp") / "mcp.err") as port:
        yield port


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, proxy: ProxyThread, mcp_port: int
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("egress")
    raw = default_config()
    raw["egress"] = {"proxy_url": f"http://127.0.0.1:{proxy.proxy.port}"}
    raw["agents"] = {
        "servers": [{"name": "tools", "protocol": "mcp", "url": f"http://127.0.0.1:{mcp_port}/mcp"}]
    }
    raw["routes"].insert(
        0, {"name": "mcp-tools", "path_prefix": "/mcp/tools", "api": "mcp", "server": "tools"}
    )
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def test_envoy_reaches_the_provider_only_through_the_egress_proxy(
    stack: LocalStack, proxy: ProxyThread
) -> None:
    client = openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30.0
    )
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello through the proxy"}]
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.total_tokens > 0
    # Envoy asked the proxy for a tunnel to the provider's address, and the request
    # reached the provider through it.
    assert f"127.0.0.1:{stack.ports.mock}" in proxy.targets()
    assert any(
        "Hello through the proxy" in str(request.get("body")) for request in mock_requests(stack)
    )


def test_envoy_reaches_an_mcp_server_only_through_the_egress_proxy(
    stack: LocalStack, proxy: ProxyThread, mcp_port: int
) -> None:
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    answer = httpx.post(
        f"{stack.base_url}/mcp/tools",
        json=listing,
        headers={
            "authorization": f"Bearer {CLIENT_KEY}",
            "accept": "application/json, text/event-stream",
        },
        timeout=30.0,
    )
    assert answer.status_code == 200, answer.text
    assert "echo" in answer.text
    assert f"127.0.0.1:{mcp_port}" in proxy.targets()
