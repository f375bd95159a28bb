"""Agent routes, reviewed again: what the upstream learns of the caller, the A2A binding the
gateway does not read, JSON-RPC ids of the wrong type, and the server's redirects.

Bob (key team2, user bob, group marketing) calls the MCP server ``tools`` and the A2A
agent ``helper``. Both get the gateway's credential, the same for every caller.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from pydantic import SecretStr

from extproc.config import GatewayConfig
from extproc.config.auth_model import ApiKeyConfig
from extproc.runtime import Services
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_headers,
    run_stream,
)
from tests.unit.test_agents import TEAM2, set_headers, with_agents

CALLER = {
    "x-aigw-caller": "user:bob",
    "x-aigw-api-key-id": "team2",
    "x-aigw-user-id": "bob",
    "x-aigw-group-id": "marketing",
}
# What a client may send to speak for someone else.
CLAIMED = {"x-aigw-caller": "user:alice", "x-aigw-user-id": "alice"}


def routed(answers: list[ext.ProcessingResponse]) -> tuple[dict[str, str], list[str]]:
    """The headers the gateway set and removed on the request it sent on."""
    mutation = answers[0].request_headers.response.header_mutation
    return set_headers(answers[0], "request_headers"), list(mutation.remove_headers)


def without_identity(config: GatewayConfig) -> GatewayConfig:
    """The agent config of ``test_agents``, its servers told nothing of callers."""
    agents = with_agents(config)
    servers = tuple(
        server.model_copy(update={"forward_identity": False}) for server in agents.agents.servers
    )
    return agents.model_copy(
        update={"agents": agents.agents.model_copy(update={"servers": servers})}
    )


@pytest.mark.parametrize("path", ["/mcp", "/a2a/helper/"])
async def test_the_server_is_told_who_calls_and_never_by_the_client(
    config: GatewayConfig, services: Services, path: str
) -> None:
    processor = processor_for(with_agents(config), services)
    answers = await run_stream(processor, [request_headers(path, headers={**TEAM2, **CLAIMED})])
    sent, _ = routed(answers)
    assert {name: sent.get(name) for name in CALLER} == CALLER


async def test_a_server_that_must_not_learn_who_calls_gets_no_caller_nor_a_clients_claim(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(without_identity(config), services)
    answers = await run_stream(processor, [request_headers("/mcp", headers={**TEAM2, **CLAIMED})])
    sent, removed = routed(answers)
    assert not CALLER.keys() & sent.keys()
    assert set(CLAIMED) <= set(removed)


async def test_an_anonymous_card_fetch_speaks_for_nobody(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_agents(config), services)
    card = "/a2a/helper/.well-known/agent-card.json"
    answers = await run_stream(processor, [request_headers(card, method="GET", headers=CLAIMED)])
    sent, removed = routed(answers)
    assert not CALLER.keys() & sent.keys()
    assert set(CLAIMED) <= set(removed)


async def test_a_user_id_no_header_can_hold_reaches_the_server_percent_encoded(
    config: GatewayConfig, services: Services
) -> None:
    # Ids come from the key config or a JWT's claims, which may hold any character; an
    # invalid header value would make Envoy fail the request.
    agents = with_agents(config)
    zoe = ApiKeyConfig(
        id="team3", key=SecretStr("team3-key"), user_id="zoë\r\nsmith", group_id="r&d 100%"
    )
    auth = agents.auth.model_copy(update={"api_keys": (*agents.auth.api_keys, zoe)})
    processor = processor_for(agents.model_copy(update={"auth": auth}), services)
    answers = await run_stream(
        processor, [request_headers("/mcp", headers={"authorization": "Bearer team3-key"})]
    )
    sent, _ = routed(answers)
    assert sent["x-aigw-caller"] == "user:zo%C3%AB%0D%0Asmith"
    assert sent["x-aigw-group-id"] == "r&d%20100%25"


# --- A2A's HTTP+JSON binding ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/a2a/helper/message:send",
        "/a2a/helper/message%3Astream",
        "/a2a/helper/acme/message:send",
        "/a2a/helper/v1/message:send",
        "/a2a/helper/tasks/t-1:cancel",
        "/a2a/helper/v1/tasks/t-1/pushNotificationConfigs",
    ],
)
async def test_a_post_to_the_agents_http_json_binding_never_reaches_it(
    config: GatewayConfig, services: Services, path: str
) -> None:
    processor = processor_for(with_agents(config), services)
    # JSON-RPC the gateway would read as a task query, and the binding as a message.
    sent = {"role": "ROLE_USER", "messageId": "m", "parts": [{"text": "hi"}]}
    body = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "t-1"},
            "message": sent}  # fmt: skip
    [refused] = await run_stream(
        processor, [request_headers(path, headers=TEAM2), request_body(orjson.dumps(body))]
    )
    assert refused.immediate_response.status.code == 404
    error = orjson.loads(refused.immediate_response.body)["error"]
    assert error["code"] == -32600 and error["data"]["code"] == "binding_not_served"
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["agent"]["status"] == "invalid"


@pytest.mark.parametrize("path", ["/a2a/helper", "/a2a/helper/", "/a2a/helper/rpc"])
async def test_json_rpc_below_the_agents_base_still_goes_on(
    config: GatewayConfig, services: Services, path: str
) -> None:
    processor = processor_for(with_agents(config), services)
    body = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "t-1"}}
    answers = await run_stream(
        processor, [request_headers(path, headers=TEAM2), request_body(orjson.dumps(body))]
    )
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]


# --- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", [True, False])
async def test_a_tool_call_whose_id_is_no_json_rpc_id_is_refused_not_counted(
    config: GatewayConfig, services: Services, request_id: Any
) -> None:
    # JSON-RPC ids are strings, numbers or null; MCP servers refuse a true (the SDK's
    # strictly), so forwarded it would be counted by limits and logged as a call the
    # server saw.
    processor = processor_for(with_agents(config), services)
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {}}}  # fmt: skip
    answers = await run_stream(
        processor, [request_headers("/mcp", headers=TEAM2), request_body(orjson.dumps(body))]
    )
    refused = answers[-1].immediate_response
    assert refused.status.code == 400
    assert orjson.loads(refused.body) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "'id' must be a string, a number or null"},
    }


# --- redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "location", "moved"),
    [
        pytest.param("/mcp", "http://127.0.0.1:9000/mcp/", "/mcp/", id="mcp-own-address"),
        pytest.param("/a2a/helper/", "https://helper.example.com/?v=1", "/a2a/helper/?v=1",
                     id="a2a-own-address"),
        pytest.param("/a2a/helper/x/", "/x", "/a2a/helper/x", id="a2a-absolute-path"),
        pytest.param("/a2a/helper/x/", "../y", None, id="relative-path"),
        pytest.param("/mcp", "https://login.example.com/authorize", None, id="another-site"),
    ],
)  # fmt: skip
async def test_a_redirect_of_the_server_points_at_the_gateway_never_at_the_server(
    config: GatewayConfig, services: Services, path: str, location: str, moved: str | None
) -> None:
    # Followed as it came, the server's own address takes the client past the gateway
    # (and its tool list filter), or nowhere it can reach.
    processor = processor_for(with_agents(config), services)
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    answers = await run_stream(
        processor,
        [
            request_headers(path, headers=TEAM2),
            request_body(body),
            response_headers(307, {"location": location}, end_of_stream=True),
        ],
    )
    assert set_headers(answers[-1], "response_headers").get("location") == moved


async def test_a_redirect_elsewhere_on_the_server_is_refused(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_agents(config), services)
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    answers = await run_stream(
        processor,
        [
            request_headers("/mcp", headers=TEAM2),
            request_body(body),
            response_headers(302, {"location": "http://127.0.0.1:9000/admin"}),
        ],
    )
    refused = answers[-1].immediate_response
    assert refused.status.code == 502
    assert orjson.loads(refused.body)["error"]["data"]["code"] == "upstream_redirect"
