"""The agent log line never shows a credential the client put where a name goes.

Bob (key team2) has his provider key in his settings where the tool's name should be, a
client whose settings were swapped. The gateway's error (``error_message``) and the
``tool`` label hide it; so must the line's ``agent.tool`` and ``agent.method``, which
everyone who reads the gateway's log sees.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

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
from tests.unit.test_agents_review import samples

# An OpenAI project key's shape (made up).
PROVIDER_KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7dEf0hIj3kLm6n"


async def logged_mcp_exchange(
    config: GatewayConfig, services: Services, body: Any, answer: Any
) -> dict[str, Any]:
    """Bob sends ``body`` to the MCP route and the server answers ``answer``: the
    request's log line."""
    await run_stream(
        processor_for(with_agents(config), services),
        [
            request_headers("/mcp", headers=TEAM2),
            request_body(orjson.dumps(body)),
            response_headers(200),
            response_body(orjson.dumps(answer)),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line


@pytest.mark.parametrize(
    ("tool", "logged"),
    [
        pytest.param(PROVIDER_KEY, "[redacted]", id="the-whole-name"),
        pytest.param("lookup_" + PROVIDER_KEY, "lookup_[redacted]", id="inside-a-name"),
    ],
)
async def test_a_provider_key_as_a_tool_name_is_hidden_in_the_log_line(
    config: GatewayConfig, services: Services, tool: str, logged: str
) -> None:
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": tool}}
    answer = {"jsonrpc": "2.0", "id": 3, "result": {"content": [], "isError": True}}
    line = await logged_mcp_exchange(config, services, body, answer)
    assert line["agent"]["tool"] == logged
    assert line["agent"]["status"] == "tool_error"  # the call is still told apart
    assert PROVIDER_KEY not in orjson.dumps(line).decode()
    [label] = [s for s in samples(services, "aigw_mcp_tool_calls_total")]
    assert label["tool"] == "[redacted]"


async def test_a_provider_key_as_a_method_name_is_hidden_in_the_log_line(
    config: GatewayConfig, services: Services
) -> None:
    body = {"jsonrpc": "2.0", "id": 3, "method": PROVIDER_KEY}
    error = {"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "no such method"}}
    line = await logged_mcp_exchange(config, services, body, error)
    assert line["agent"]["method"] == "[redacted]"
    assert PROVIDER_KEY not in orjson.dumps(line).decode()


async def test_ordinary_names_are_logged_as_sent(config: GatewayConfig, services: Services) -> None:
    # Tool names with long random-looking parts are not keys: only a key's shape is hidden.
    tool = "lookup_order_3f2a9c1e-77b0-4c1d-9e52-0d8f4b6a1c23"
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": tool}}
    answer = {"jsonrpc": "2.0", "id": 3, "result": {}}
    line = await logged_mcp_exchange(config, services, body, answer)
    assert line["agent"]["tool"] == tool and line["agent"]["method"] == "tools/call"
