"""Agent routes' HTTP errors in the clients' shape: a JSON-RPC error object.

Bob (key team2) calls the MCP route ``/mcp`` and the A2A route ``/a2a/helper``. When the
gateway refuses him before any JSON-RPC is read (no key, a wrong one, a method or a
body the route does not take), or the quota store is down, or Envoy answers itself
(the server unreachable, too slow), he gets the HTTP status as before, and a body
that MCP's Python SDK can read: it takes a non-2xx body only as a JSON-RPC error, and
showed "Server returned an error response" for the OpenAI-shaped one.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config import GatewayConfig
from extproc.envoy_bootstrap import render_bootstrap
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_agents import AGENT_ROUTES, SERVERS, TEAM2, with_agents
from tests.unit.test_agents_review import dead_store, immediate, tool_call, with_limits
from tests.unit.test_envoy_bootstrap import gateway, hcm

__all__ = ["dead_store"]

_BIG = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":'


@pytest.mark.parametrize("path", ["/mcp", "/a2a/helper/"])
@pytest.mark.parametrize(
    ("headers", "method", "body", "http_status", "code", "said"),
    [
        pytest.param({}, "POST", b"{}", 401, "invalid_api_key", "API key", id="no-key"),
        pytest.param({"authorization": "Bearer nope"}, "POST", b"{}", 401, "invalid_api_key",
                     "invalid API key", id="wrong-key"),
        pytest.param(TEAM2, "PUT", b"", 405, "method_not_allowed", "PUT is not allowed",
                     id="method"),
        pytest.param(TEAM2, "POST", _BIG + b'{"text":"' + b"x" * 1_100_000 + b'"}}}', 413,
                     "request_too_large", "over the limit", id="too-large"),
        pytest.param({**TEAM2, "content-encoding": "gzip"}, "POST", b"\x1f\x8b\x08\x00", 415,
                     "unsupported_content_encoding", "uncompressed", id="compressed"),
    ],
)  # fmt: skip
async def test_an_http_refusal_on_an_agent_route_is_a_jsonrpc_error_the_sdk_reads(
    config: GatewayConfig,
    services: Services,
    path: str,
    headers: dict[str, str],
    method: str,
    body: bytes,
    http_status: int,
    code: str,
    said: str,
) -> None:
    processor = processor_for(with_agents(config), services)
    messages = [request_headers(path, method=method, headers=headers)]
    if body:
        messages.append(request_body(body))
    answers = await run_stream(processor, messages)
    refusal = immediate(answers)
    assert refusal is not None
    status, error = refusal
    assert status == http_status
    # No request was read: the id is null (the SDK puts its request's id on it).
    assert error["jsonrpc"] == "2.0" and error["id"] is None
    assert error["error"]["code"] == -32600
    assert said in error["error"]["message"]
    assert error["error"]["data"]["code"] == code
    found = {h.header.key: h.header.raw_value for h in answers[-1].immediate_response.headers
             .set_headers}  # fmt: skip
    assert found["content-type"] == b"application/json"
    if http_status == 401:
        assert found["www-authenticate"].startswith(b"Bearer")
    if http_status == 405:
        assert b"POST" in found["allow"]
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["http_status_code"] == http_status and line["error_code"] == code


async def test_a_tool_call_refused_for_a_store_down_is_a_503_under_its_own_id(
    config: GatewayConfig, dead_store: QuotaStore
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=dead_store)
    rule = {"name": "per-key", "subject": "api_key", "requests_per_minute": 5,
            "on_store_failure": "fail_closed"}  # fmt: skip
    processor = processor_for(with_limits(config, rule), services)
    refusal = immediate(await tool_call(processor, {"name": "echo", "arguments": {}}, "call-7"))
    assert refusal is not None
    status, error = refusal
    assert status == 503
    assert error["id"] == "call-7" and error["error"]["code"] == -32603
    assert error["error"]["message"] == "the quota store is unavailable; try again shortly"
    assert error["error"]["data"] == {"type": "service_unavailable",
                                      "code": "quota_store_unavailable"}  # fmt: skip
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["outcome"] == "rejected" and line["agent"]["status"] == "unavailable"
    assert line["error_code"] == "quota_store_unavailable"


async def test_llm_routes_keep_openais_error_shape(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_agents(config), services)
    refusal = immediate(await run_stream(processor, [request_headers("/v1/chat/completions")]))
    assert refusal is not None
    assert refusal[1]["error"]["type"] == "authentication_error" and "jsonrpc" not in refusal[1]


def _mappers(config: GatewayConfig) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = hcm(render_bootstrap(config))["local_reply_config"]["mappers"]
    return found


def _condition(mapper: dict[str, Any]) -> str:
    expression: str = mapper["filter"]["extension_filter"]["typed_config"]["expression"]
    return expression


def test_envoys_own_replies_on_agent_routes_are_jsonrpc_errors() -> None:
    mappers = _mappers(gateway(routes=AGENT_ROUTES, agents=SERVERS))
    on_agents = [m for m in mappers if "xds.route_name.startsWith('agent_')" in _condition(m)]
    assert on_agents, "no local reply mapper for agent routes"
    # First: the OpenAI-shaped mappers match any path.
    assert mappers[: len(on_agents)] == on_agents
    unavailable = next(m for m in on_agents if "response.code == 503" in _condition(m))
    assert unavailable["body_format_override"]["json_format"] == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {
            "code": -32603,
            "message": "the agent server is unavailable",
            "data": {"type": "service_unavailable", "code": "upstream_unavailable"},
        },
    }
    # A reply that is JSON already (the gateway's own) passes as it is, as on every route.
    assert all("content-type" in _condition(m) for m in on_agents)


def test_a_gateway_without_agents_renders_no_jsonrpc_replies() -> None:
    assert not any("agent_" in _condition(m) for m in _mappers(gateway()))
    assert orjson.dumps(_mappers(gateway())).count(b"jsonrpc") == 0


# --- a server's failure without JSON ----------------------------------------------------------

_ECHO = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{}}}'


async def _answered(
    config: GatewayConfig, services: Services, status: int, answer_headers: dict[str, str],
    body: bytes,
) -> list[Any]:  # fmt: skip
    processor = processor_for(with_agents(config), services)
    return await run_stream(
        processor,
        [
            request_headers("/mcp", headers=TEAM2),
            request_body(_ECHO),
            response_headers(status, answer_headers),
            response_body(body),
        ],
    )


@pytest.mark.parametrize(
    ("status", "answer_headers", "body"),
    [
        pytest.param(500, {"content-type": "text/html"},
                     b"<html>Traceback at /srv/tools/app.py line 12</html>", id="html-500"),
        pytest.param(502, {"content-type": ""}, b"", id="empty-502"),
        pytest.param(503, {"content-type": "text/plain", "retry-after": "30"}, b"overloaded",
                     id="text-503"),
    ],
)  # fmt: skip
async def test_a_servers_failure_page_becomes_a_jsonrpc_error_of_its_status(
    config: GatewayConfig,
    services: Services,
    status: int,
    answer_headers: dict[str, str],
    body: bytes,
) -> None:
    answers = await _answered(config, services, status, answer_headers, body)
    refusal = immediate(answers)
    assert refusal is not None
    got, error = refusal
    assert got == status
    assert error["error"]["code"] == -32603
    assert error["error"]["message"] == (
        f"the MCP server 'tools' failed (HTTP {status}) without a JSON-RPC answer"
    )
    assert error["error"]["data"]["code"] == "upstream_failed"
    sent = {h.header.key: h.header.raw_value for h in answers[-1].immediate_response.headers
            .set_headers}  # fmt: skip
    kept = answer_headers.get("retry-after")
    assert sent.get("retry-after") == (kept.encode() if kept is not None else None)
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["http_status_code"] == status and line["outcome"] == "upstream_error"
    assert line["agent"]["status"] == "upstream_error"


@pytest.mark.parametrize(
    ("status", "answer_headers", "body"),
    [
        # The server's own JSON-RPC error: the SDK reads it as it is.
        pytest.param(500, {"content-type": "application/json"},
                     b'{"jsonrpc":"2.0","id":5,"error":{"code":-32603,"message":"db down"}}',
                     id="jsonrpc-500"),
        # A 404 means "session terminated" to MCP's SDK: its body is not the gateway's.
        pytest.param(404, {"content-type": "text/plain"}, b"Not Found", id="404"),
    ],
)  # fmt: skip
async def test_a_servers_jsonrpc_error_and_its_4xx_pass_as_they_came(
    config: GatewayConfig,
    services: Services,
    status: int,
    answer_headers: dict[str, str],
    body: bytes,
) -> None:
    answers = await _answered(config, services, status, answer_headers, body)
    assert immediate(answers) is None
