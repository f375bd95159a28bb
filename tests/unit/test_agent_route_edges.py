"""Agent routes at their edges: answers the gateway cannot parse, hosts and URLs it must
still take, refusal codes that must not mean something else to an A2A client, and bodies
of notifications only.

Bob (key team2, group marketing) may not use ``deploy_*`` on the MCP server ``tools``
(engineering only, ``test_agents.SERVERS``); ``helper`` is an A2A agent.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.agents.answers import rewrite_card
from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import (
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_agents import TEAM2, with_agents
from tests.unit.test_agents_review import immediate
from tests.unit.test_mcp_gaps import LIST_REQUEST, LISTED, post

SSE = {"content-type": "text/event-stream"}
HELPER = "/a2a/helper/"


def log_line(services: Services) -> dict[str, Any]:
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line  # type: ignore[no-any-return]


def event(data: bytes, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\r\n".encode() if event_id is not None else b""
    return head + b"event: message\r\ndata: " + data + b"\r\n\r\n"


async def sse_answer(
    config: GatewayConfig, services: Services, chunks: list[bytes], method: str = "POST"
) -> bytes:
    """What the client receives of an SSE answer sent in ``chunks`` (the last ends it)."""
    bodies = [response_body(c, end_of_stream=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    answers = await post(
        config, services, LIST_REQUEST, response_headers(200, SSE), *bodies, method=method
    )
    return client_body(chunks, answers)


def errors_in(seen: bytes) -> list[dict[str, Any]]:
    found = []
    for line in seen.splitlines():
        if line.startswith(b"data: "):
            try:
                message = orjson.loads(line[6:])
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict) and "error" in message:
                found.append(message)
    return found


async def a2a_post(
    config: GatewayConfig, services: Services, body: bytes, *answer: ext.ProcessingRequest
) -> list[ext.ProcessingResponse]:
    processor = processor_for(with_agents(config), services)
    messages = [request_headers(HELPER, headers=TEAM2), request_body(body)]
    return await run_stream(processor, [*messages, *answer])


# --- 1. a tool list over SSE that orjson cannot parse ---------------------------------------

_LISTED = orjson.dumps(LISTED)
UNPARSEABLE = [
    # A UTF-8 BOM before the JSON: Python's json.loads(bytes) skips it.
    pytest.param(b"\xef\xbb\xbf" + _LISTED, id="utf8-bom"),
    # A lone surrogate escape in a description: JavaScript and Python's json read it.
    pytest.param(
        _LISTED.replace(b'"inputSchema":{}}', b'"inputSchema":{},"description":"\\ud800"}', 1),
        id="lone-surrogate",
    ),
]


@pytest.mark.parametrize("data", UNPARSEABLE)
async def test_a_tool_list_event_the_gateway_cannot_parse_never_reaches_the_client_unfiltered(
    config: GatewayConfig, services: Services, data: bytes
) -> None:
    seen = await sse_answer(config, services, [event(data), b""])
    assert b"deploy_prod" not in seen, seen
    [error] = errors_in(seen)
    assert error["id"] == 5 and error["error"]["code"] == -32603


@pytest.mark.parametrize("data", UNPARSEABLE)
async def test_an_unparseable_event_on_a_server_stream_is_replaced_and_later_lists_filtered(
    config: GatewayConfig, services: Services, data: bytes
) -> None:
    later = {**LISTED, "id": 6}
    chunks = [event(data, "1") + event(orjson.dumps(later), "2"), b""]
    seen = await sse_answer(config, services, chunks, method="GET")
    assert b"deploy_prod" not in seen, seen
    assert seen.startswith(b"id: 1\r\n")  # the event keeps its id: resumption still works
    [error] = errors_in(seen)
    assert error["id"] is None and error["error"]["code"] == -32603
    assert b'"id":6' in seen and b'"echo"' in seen


async def test_an_event_without_data_passes_and_the_list_after_it_is_filtered(
    config: GatewayConfig, services: Services
) -> None:
    # A priming event (an id and empty data) holds no message: nothing to refuse.
    priming = b"id: 0\r\ndata: \r\n\r\n"
    seen = await sse_answer(config, services, [priming + event(_LISTED), b""])
    assert seen.startswith(priming)
    assert b"deploy_prod" not in seen and b'"echo"' in seen and not errors_in(seen)


# --- 2. the log line says the answer was replaced ----------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param(SSE, event(b"\xef\xbb\xbf" + _LISTED), id="unparseable-sse-event"),
        pytest.param(SSE, event(orjson.dumps({**LISTED, "id": 99})), id="sse-without-the-answer"),
        pytest.param({}, b'{"jsonrpc":"2.0","id":5,"result":{"tools":[', id="truncated-json"),
    ],
)
async def test_a_tool_list_replaced_by_an_error_is_logged_as_such(
    config: GatewayConfig, services: Services, content_type: dict[str, str], body: bytes
) -> None:
    answers = await post(
        config, services, LIST_REQUEST, response_headers(200, content_type), response_body(body)
    )
    assert b"-32603" in client_body([body], answers)
    line = log_line(services)
    assert line["agent"]["status"] == "upstream_error"
    assert line["agent"]["rpc_error_code"] == -32603
    assert line["outcome"] == "rejected" and line["error_type"] == "upstream_error"


# --- 7. an A2A refusal must not read as one of A2A's own errors ---------------------------------

A2A_DEFINED = range(-32009, -32000)  # TaskNotFound (-32001) .. VersionNotSupported (-32009)


def agent_rule(config: GatewayConfig) -> GatewayConfig:
    """``helper`` for engineering only: Bob may not use it."""
    agents = with_agents(config)
    rule = {"name": "helper-eng", "servers": ["helper"], "groups": ["engineering"]}
    section = agents.agents.model_validate(
        {**agents.agents.model_dump(mode="json"), "access": [rule]}
    )
    return agents.model_copy(update={"agents": section})


async def test_an_a2a_access_refusal_uses_a_code_a2a_does_not_define(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(agent_rule(config), services)
    body = {"jsonrpc": "2.0", "id": "m", "method": "tasks/get", "params": {"id": "t"}}
    answers = await run_stream(
        processor, [request_headers(HELPER, headers=TEAM2), request_body(orjson.dumps(body))]
    )
    refusal = immediate(answers)
    assert refusal is not None
    status, error = refusal
    code = error["error"]["code"]
    # An A2A SDK raises -32003 as PushNotificationNotSupportedError, not a refusal.
    assert code not in A2A_DEFINED and code == -32030
    assert status == 200 and error["error"]["data"]["code"] == "agent_not_allowed"
    assert log_line(services)["agent"]["rpc_error_code"] == -32030


# --- 5. a malformed URL from the agent server ---------------------------------------------------


@pytest.mark.parametrize("location", ["http://[oops/x", "http://[::1/rpc", "//[/"])
async def test_a_redirect_to_a_malformed_url_is_a_clear_502_not_a_500(
    config: GatewayConfig, services: Services, location: str
) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"t"}}'
    answers = await a2a_post(config, services, body, response_headers(307, {"location": location}))
    refusal = immediate(answers)
    assert refusal is not None
    status, error = refusal
    assert status == 502 and error["error"]["data"]["code"] == "upstream_redirect"
    assert "malformed" in error["error"]["message"]


async def test_a_card_with_a_malformed_url_is_served_pointing_at_the_route(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_agents(config), services)
    card = {
        "url": "http://[helper.internal/",
        "supportedInterfaces": [{"url": "http://[::1/rpc", "protocolBinding": "JSONRPC"}],
    }
    answers = await run_stream(
        processor,
        [
            request_headers(HELPER + ".well-known/agent-card.json", method="GET"),
            response_headers(200),
            response_body(orjson.dumps(card)),
        ],
    )
    assert immediate(answers) is None
    served = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    assert served["url"] == "http://gateway/a2a/helper/"
    assert served["supportedInterfaces"][0]["url"] == "http://gateway/a2a/helper/"


# --- 8. a body of notifications only ------------------------------------------------------------

NOTIFICATIONS = [{"jsonrpc": "2.0", "method": "tasks/get", "params": {"id": "t"}}] * 2


async def test_a_refused_batch_of_notifications_is_an_http_error_never_an_empty_array(
    config: GatewayConfig, services: Services
) -> None:
    answers = await a2a_post(config, services, orjson.dumps(NOTIFICATIONS))
    refusal = immediate(answers)
    assert refusal is not None
    status, error = refusal
    # JSON-RPC never answers "[]"; MCP's transport: an HTTP error, an error without id.
    assert status == 400 and isinstance(error, dict)
    assert error["id"] is None and error["error"]["code"] == -32600


async def test_a_notification_to_an_agent_the_caller_may_not_use_is_a_403_not_a_200(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(agent_rule(config), services)
    answers = await run_stream(
        processor,
        [request_headers(HELPER, headers=TEAM2), request_body(orjson.dumps(NOTIFICATIONS[0]))],
    )
    refusal = immediate(answers)
    assert refusal is not None
    status, error = refusal
    assert status == 403 and error["id"] is None and error["error"]["code"] == -32030


async def test_mirror_headers_on_a_batch_of_notifications_get_one_error_without_id(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_agents(config), services)
    batch = [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
    headers = {**TEAM2, "mcp-method": "tools/call", "mcp-name": "deploy_prod"}
    answers = await run_stream(
        processor, [request_headers("/mcp", headers=headers), request_body(orjson.dumps(batch))]
    )
    refusal = immediate(answers)
    assert refusal is not None
    status, error = refusal
    assert status == 400 and isinstance(error, dict) and error["id"] is None


# --- 3. a Host with an underscore ---------------------------------------------------------------


async def test_a_host_with_an_underscore_reaches_the_agent_and_names_the_card_urls(
    config: GatewayConfig, services: Services
) -> None:
    # Docker Compose service names (aigw_gateway) are hosts clients use on internal networks.
    host = {":authority": "aigw_gateway:10000"}
    body = b'{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"t"}}'
    processor = processor_for(with_agents(config), services)
    answers = await run_stream(
        processor, [request_headers(HELPER, headers={**TEAM2, **host}), request_body(body)]
    )
    assert immediate(answers) is None
    card = orjson.dumps({"url": "https://helper.example.com/"})
    answers = await run_stream(
        processor,
        [
            request_headers(HELPER + ".well-known/agent-card.json", method="GET", headers=host),
            response_headers(200),
            response_body(card),
        ],
    )
    served = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    assert served["url"] == "http://aigw_gateway:10000/a2a/helper/"


@pytest.mark.parametrize("host", ["evil.example/x", "user@evil.example", "a b"])
async def test_a_host_that_would_move_the_card_urls_elsewhere_is_still_refused(
    config: GatewayConfig, services: Services, host: str
) -> None:
    processor = processor_for(with_agents(config), services)
    path = HELPER + ".well-known/agent-card.json"
    answers = await run_stream(
        processor, [request_headers(path, method="GET", headers={":authority": host})]
    )
    refusal = immediate(answers)
    assert refusal is not None and refusal[0] == 400


# --- 4. an A2A 0.3 card whose preferred transport is gRPC ----------------------------------------


def test_a_grpc_preferred_card_points_its_url_at_the_route_path_of_its_jsonrpc_interface() -> None:
    card = {
        "url": "grpc://agent.internal:50051",
        "preferredTransport": "GRPC",
        "additionalInterfaces": [
            {"url": "grpc://agent.internal:50051", "transport": "GRPC"},
            {"url": "http://agent.internal/api/rpc", "transport": "JSONRPC"},
        ],
    }
    moved = rewrite_card(card, "/api", "https://gw.example.com/a2a/x")
    # Where JSON-RPC goes: the JSON-RPC interface's path, not the gRPC endpoint's.
    assert moved["url"] == "https://gw.example.com/a2a/x/rpc"
    assert moved["preferredTransport"] == "JSONRPC"
    assert moved["additionalInterfaces"] == [
        {"url": "https://gw.example.com/a2a/x/rpc", "transport": "JSONRPC"}
    ]


def test_a_card_with_no_jsonrpc_interface_gets_the_route_base_not_its_grpc_address() -> None:
    card = {"url": "agent.internal:50051", "preferredTransport": "GRPC"}
    moved = rewrite_card(card, "", "https://gw.example.com/a2a/x")
    assert moved["url"] == "https://gw.example.com/a2a/x/"
    assert moved["preferredTransport"] == "JSONRPC"


# --- 6. a card whose content type is not JSON ----------------------------------------------------


async def card_answer(
    config: GatewayConfig, services: Services, content_type: str, body: bytes
) -> bytes:
    processor = processor_for(with_agents(config), services)
    answers = await run_stream(
        processor,
        [
            request_headers(HELPER + ".well-known/agent-card.json", method="GET"),
            response_headers(200, {"content-type": content_type}),
            response_body(body),
        ],
    )
    return client_body([body], answers)


@pytest.mark.parametrize("content_type", ["text/html", "text/plain", "application/octet-stream"])
async def test_a_json_card_under_another_content_type_is_still_rewritten(
    config: GatewayConfig, services: Services, content_type: str
) -> None:
    card = orjson.dumps({"name": "helper", "url": "https://helper.example.com/"})
    served = orjson.loads(await card_answer(config, services, content_type, card))
    assert served["url"] == "http://gateway/a2a/helper/"


async def test_a_card_path_answering_html_passes_as_it_came(
    config: GatewayConfig, services: Services
) -> None:
    page = b"<html><body>not found</body></html>"
    assert await card_answer(config, services, "text/html", page) == page


# --- 9. a covered server stream that ends (checked: not a bug, kept as a guard) ------------------


async def test_a_filtered_server_stream_that_ends_normally_is_not_logged_as_aborted(
    config: GatewayConfig, services: Services
) -> None:
    seen = await sse_answer(config, services, [event(_LISTED, "1"), b""], method="GET")
    assert b"deploy_prod" not in seen
    line = log_line(services)
    assert line["outcome"] == "completed" and line["agent"]["status"] != "aborted"
    assert line["agent"]["kind"] == "stream" and line["agent"]["tools_hidden"] == 1
