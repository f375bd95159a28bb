"""Agent traffic logic: access rules, limits, answer readers, the card rewrite, config,
the processor's answers on MCP and A2A routes, and the rendered Envoy routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc import headers
from extproc.agents.access import ToolAccess
from extproc.agents.answers import (
    AnswerReader,
    CardReader,
    TaskWatch,
    ToolCallOutcome,
    ToolListFilter,
    normalize_state,
    rewrite_card,
)
from extproc.agents.call import AgentCall
from extproc.agents.limits import AgentLimits
from extproc.agents.sse import EventSplitter, event_data, with_data
from extproc.config import GatewayConfig
from extproc.config.agents_model import (
    AccessEffect,
    AgentLimitRule,
    AgentProtocol,
    AgentServerConfig,
    ToolAccessRule,
)
from extproc.config.quota_model import QuotasConfig
from extproc.context import Identity
from extproc.envoy_bootstrap import render_bootstrap, render_bootstrap_yaml
from extproc.runtime import Services
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.test_envoy_bootstrap import ENVOY, assert_envoy_accepts, cluster, gateway, routes

ENGINEER = Identity(method="api_key", api_key_id="team1", user_id="alice", group_id="engineering",
                    groups=("engineering",))  # fmt: skip
MARKETER = Identity(method="api_key", api_key_id="team2", user_id="bob", group_id="marketing",
                    groups=("marketing",))  # fmt: skip
MCP = AgentServerConfig(name="tools", protocol=AgentProtocol.MCP, url="http://127.0.0.1:1/mcp")
A2A = AgentServerConfig(name="helper", protocol=AgentProtocol.A2A, url="http://10.0.0.9:8080")


# --- access rules -------------------------------------------------------------------------


def access(*rules: dict[str, Any], default: str = "allow") -> ToolAccess:
    return ToolAccess([ToolAccessRule(**rule) for rule in rules], AccessEffect(default))


def test_a_tool_covered_by_an_allow_rule_is_only_for_those_it_names() -> None:
    policy = access({"name": "deploy", "tools": ["deploy_*"], "groups": ["engineering"]})
    assert policy.denial(ENGINEER, "tools", "deploy_prod") is None
    denial = policy.denial(MARKETER, "tools", "deploy_prod")
    assert denial == (
        "group 'marketing' may not use tool 'deploy_prod' on server 'tools' (access rule 'deploy')"
    )
    assert policy.denial(MARKETER, "tools", "echo") is None  # not covered: default allow


def test_deny_wins_over_allow_and_a_rule_naming_nobody_names_everyone() -> None:
    policy = access(
        {"name": "all-tools", "servers": ["tools"]},
        {"name": "no-deletes", "effect": "deny", "tools": ["*delete*"]},
        {"name": "no-interns", "effect": "deny", "users": ["bob"], "tools": ["deploy_?*"]},
    )
    assert policy.denial(ENGINEER, "tools", "echo") is None
    assert "no-deletes" in (policy.denial(ENGINEER, "tools", "bulk_delete_rows") or "")
    assert "no-interns" in (policy.denial(MARKETER, "tools", "deploy_x") or "")
    assert policy.denial(ENGINEER, "tools", "deploy_x") is None


def test_default_deny_needs_an_allow_rule_and_tool_rules_never_cover_an_agent() -> None:
    policy = access(
        {"name": "eng-tools", "tools": ["*"], "groups": ["engineering"]},
        {"name": "helper-for-marketing", "servers": ["helper"], "groups": ["marketing"]},
        default="deny",
    )
    assert policy.denial(ENGINEER, "tools", "anything") is None
    # eng-tools names tools, so it covers no agent: default deny decides.
    assert "no access rule allows it" in (policy.denial(ENGINEER, "other", None) or "")
    assert "helper-for-marketing" in (policy.denial(ENGINEER, "helper", None) or "")
    assert policy.denial(MARKETER, "helper", None) is None


# --- limits ----------------------------------------------------------------------------------


def test_limits_count_per_tool_and_subject_under_names_quota_rules_cannot_take() -> None:
    rules = [
        AgentLimitRule(
            name="deploys",
            subject="user",
            tools=["deploy_*"],
            requests_per_minute=2,
            requests_per_day=10,
        ),
        AgentLimitRule(
            name="shared",
            subject="group",
            match="marketing",
            per_tool=False,
            servers=["tools"],
            requests_per_hour=5,
        ),
        AgentLimitRule(
            name="agent", subject="header:x-team", servers=["helper"], requests_per_second=1
        ),
    ]
    limits = AgentLimits(rules, QuotasConfig())
    found = limits.limits_for(MARKETER, {}, "tools", "deploy_prod", 1_700_000_000.0)
    # The one that holds longest first (refusal_order): a refusal names it.
    assert [(lim.rule, lim.counter, lim.limit) for lim in found] == [
        ("agent:deploys:deploy_prod", "requests_per_day", 10),
        ("agent:shared", "requests_per_hour", 5),
        ("agent:deploys:deploy_prod", "requests_per_minute", 2),
    ]
    assert all(lim.kind == "r" and lim.enforce for lim in found)
    assert [lim.rule for lim in limits.limits_for(ENGINEER, {}, "tools", "echo", 0.0)] == []
    agent = limits.limits_for(ENGINEER, {"x-team": "blue"}, "helper", None, 0.0)
    assert [(lim.subject_kind, lim.subject) for lim in agent] == [("header:x-team", "blue")]


# --- SSE framing -----------------------------------------------------------------------------


STREAM = (
    b'event: message\r\nid: 1\r\ndata: {"a":1}\r\n\r\n: keep-alive\n\ndata: {"b":\r\ndata: 2}\r\r'
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(STREAM)])
def test_events_come_out_whole_with_their_bytes_whatever_the_chunking(size: int) -> None:
    splitter = EventSplitter()
    events: list[bytes] = []
    for start in range(0, len(STREAM), size):
        events += splitter.feed(STREAM[start : start + size])
    events += [rest] if (rest := splitter.flush()) else []
    assert b"".join(events) == STREAM
    assert [event_data(event) for event in events] == [b'{"a":1}', None, b'{"b":\n2}']


def test_replacing_data_keeps_the_other_fields_and_line_endings() -> None:
    event = b"event: message\r\nid: 7\r\ndata: {}\r\n\r\n"
    assert with_data(event, b'{"x":1}') == b'event: message\r\nid: 7\r\ndata: {"x":1}\r\n\r\n'


# --- answer readers --------------------------------------------------------------------------

TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("echo", "deploy_prod")]
LISTED = {"jsonrpc": "2.0", "id": 2, "result": {"tools": TOOLS, "cacheScope": "public"}}


def call_record(server: AgentServerConfig = MCP) -> AgentCall:
    return AgentCall(server.protocol, server)


def feed_all(reader: Any, body: bytes, size: int) -> bytes:
    out = b""
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    for index, chunk in enumerate(chunks):
        replaced = reader.feed(chunk, index == len(chunks) - 1)
        out += chunk if replaced is None else replaced
    return out


def only_echo(call: AgentCall) -> ToolListFilter:
    return ToolListFilter(2, call, lambda name: not name.startswith("deploy"))


@pytest.mark.parametrize("size", [1, 5, 64, 100_000])
def test_an_sse_tool_list_reaches_the_client_filtered_and_nothing_else_changes(size: int) -> None:
    call = call_record()
    ping = b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\r\n\r\n'
    body = ping + b"event: message\r\ndata: " + orjson.dumps(LISTED) + b"\r\n\r\n" + b": bye\n\n"
    out = feed_all(AnswerReader([only_echo(call)], sse=True), body, size)
    assert out.startswith(ping) and out.endswith(b": bye\n\n")
    answer = orjson.loads(event_data(out[len(ping) :].split(b"\r\n\r\n")[0]) or b"")
    assert [tool["name"] for tool in answer["result"]["tools"]] == ["echo"]
    assert answer["result"]["cacheScope"] == "private"
    assert (call.tools_listed, call.tools_hidden, call.status) == (1, 1, "ok")


@pytest.mark.parametrize("size", [3, 100_000])
def test_a_json_tool_list_is_filtered_and_a_batch_answer_too(size: int) -> None:
    call = call_record()
    out = feed_all(AnswerReader([only_echo(call)], sse=False), orjson.dumps([LISTED]), size)
    assert [tool["name"] for tool in orjson.loads(out)[0]["result"]["tools"]] == ["echo"]


def test_an_sse_stream_that_ends_without_the_tool_list_answer_fails_closed() -> None:
    # Answered under another id than the request's (1 where the client sent 1.0, say):
    # the list the gateway was to filter must not reach the client unfiltered.
    reader = AnswerReader([only_echo(call_record())], sse=True)
    other_id = {**LISTED, "id": 3}
    body = b"event: message\ndata: " + orjson.dumps(other_id) + b"\n\n"
    out = feed_all(reader, body, 100_000)
    assert b"deploy_prod" not in out
    assert orjson.loads(event_data(out) or b"")["error"]["code"] == -32603


def test_a_tool_list_the_gateway_cannot_read_fails_closed() -> None:
    reader = AnswerReader([only_echo(call_record())], sse=False)
    assert reader.feed(b'{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"deploy_', False) == b""
    out = orjson.loads(reader.feed(b"", True) or b"")
    assert out["id"] == 2 and out["error"]["code"] == -32603
    assert b"deploy" not in orjson.dumps(out)


def test_a_tool_call_answer_passes_untouched_and_its_outcome_is_recorded() -> None:
    call = call_record()
    reader = AnswerReader([ToolCallOutcome("7", call)], sse=True)
    failed = {"jsonrpc": "2.0", "id": "7", "result": {"content": [], "isError": True}}
    assert reader.feed(b"data: " + orjson.dumps(failed) + b"\n\n", True) is None
    assert call.status == "tool_error" and call.answered_at is not None
    # An answer to another id is not this call's.
    other = call_record()
    AnswerReader([ToolCallOutcome(8, other)], sse=False).feed(orjson.dumps(failed), True)
    assert other.status == "forwarded"


@pytest.mark.parametrize(
    ("events", "task_id", "state"),
    [
        pytest.param(
            [{"task": {"id": "t1", "contextId": "c1", "status": {"state": "TASK_STATE_SUBMITTED"}}},
             {"statusUpdate": {"taskId": "t1", "contextId": "c1",
                               "status": {"state": "TASK_STATE_INPUT_REQUIRED"}}}],
            "t1", "input-required", id="a2a-1.0",
        ),
        pytest.param(
            [{"kind": "task", "id": "t2", "contextId": "c", "status": {"state": "submitted"}},
             {"kind": "status-update", "taskId": "t2", "status": {"state": "completed"}}],
            "t2", "completed", id="a2a-0.3",
        ),
    ],
)  # fmt: skip
def test_a2a_streams_leave_the_task_and_its_last_state(
    events: list[dict[str, Any]], task_id: str, state: str
) -> None:
    call = call_record(A2A)
    body = b"".join(
        b"data: " + orjson.dumps({"jsonrpc": "2.0", "id": "r", "result": e}) + b"\n\n"
        for e in events
    )
    assert feed_all(AnswerReader([TaskWatch("r", call)], sse=True), body, 11) == body
    assert (call.task_id, call.task_state, call.status) == (task_id, state, "ok")


def test_task_states_get_one_bounded_spelling() -> None:
    assert normalize_state("TASK_STATE_AUTH_REQUIRED") == "auth-required"
    assert normalize_state("canceled") == "canceled"
    assert normalize_state("x" * 100) == "other"


# --- agent cards -----------------------------------------------------------------------------


def test_a_card_points_every_jsonrpc_interface_at_the_gateway_and_drops_the_others() -> None:
    card = {
        "name": "helper",
        "supportedInterfaces": [
            {"url": "http://10.0.0.9:8080/", "protocolBinding": "JSONRPC"},
            {"url": "10.0.0.9:50051", "protocolBinding": "GRPC"},
        ],
    }
    moved = rewrite_card(card, "", "https://gw.example.com/a2a/helper")
    assert moved["supportedInterfaces"] == [
        {"url": "https://gw.example.com/a2a/helper/", "protocolBinding": "JSONRPC"}
    ]
    legacy = {"url": "http://agent.internal/api/rpc", "preferredTransport": "GRPC",
              "additionalInterfaces": [{"url": "http://agent.internal/api/rpc",
                                        "transport": "JSONRPC"}]}  # fmt: skip
    moved = rewrite_card(legacy, "/api", "http://gw/a2a/x")
    assert moved["url"] == "http://gw/a2a/x/rpc" and moved["preferredTransport"] == "JSONRPC"
    assert moved["additionalInterfaces"][0]["url"] == "http://gw/a2a/x/rpc"


def test_the_card_reader_holds_the_card_until_it_is_whole() -> None:
    call = call_record(A2A)
    call.public_base = "http://gw/a2a/helper"
    reader = CardReader(call)
    card = orjson.dumps({"url": "http://10.0.0.9:8080/"})
    assert reader.feed(card[:5], False) == b""
    assert orjson.loads(reader.feed(card[5:], True) or b"") == {"url": "http://gw/a2a/helper/"}


# --- config ----------------------------------------------------------------------------------

SERVERS = {
    "servers": [
        {"name": "tools", "protocol": "mcp", "url": "http://127.0.0.1:9000/mcp",
         "api_key": "upstream-secret"},
        {"name": "helper", "protocol": "a2a", "url": "https://helper.example.com",
         "timeout_s": 900},
    ],
    "access": [{"name": "deploy", "tools": ["deploy_*"], "groups": ["engineering"]}],
}  # fmt: skip
AGENT_ROUTES = [
    {"name": "mcp", "path": "/mcp", "api": "mcp", "server": "tools"},
    {"name": "helper", "path_prefix": "/a2a/helper", "api": "a2a", "server": "helper"},
]


def with_agents(config: GatewayConfig) -> GatewayConfig:
    """The default config with the agent servers and routes above."""
    extra = gateway(routes=AGENT_ROUTES, agents=SERVERS)
    return config.model_copy(
        update={"routes": (*config.routes, *extra.routes), "agents": extra.agents}
    )


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"name": "r", "path": "/m", "api": "mcp"}, "server: required for api mcp"),
        ({"name": "r", "path": "/m", "api": "mcp", "server": "nope"}, "unknown server 'nope'"),
        ({"name": "r", "path": "/m", "api": "mcp", "server": "helper"}, "speaks a2a, not mcp"),
        ({"name": "r", "path": "/a", "api": "a2a", "server": "helper"}, "needs a path_prefix"),
        ({"name": "r", "path": "/c", "server": "tools"}, "only for routes with api mcp or a2a"),
    ],
)
def test_agent_routes_must_name_a_server_of_their_protocol(
    route: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        gateway(routes=[route], agents=SERVERS)


def test_every_agent_route_problem_is_listed_at_once() -> None:
    # check-config lists every problem: an operator fixing agent routes one run at a time
    # would take as many runs as mistakes.
    bad = [
        {"name": "r1", "path": "/m", "api": "mcp", "server": "nope"},
        {"name": "r2", "path": "/a", "api": "a2a", "server": "tools"},
    ]
    with pytest.raises(ValueError) as refused:
        gateway(routes=bad, agents=SERVERS)
    message = str(refused.value)
    assert "routes[0].server: unknown server 'nope'" in message
    assert "routes[1].server: 'tools' speaks mcp, not a2a" in message
    assert "routes[1]: an a2a route needs a path_prefix" in message


def test_agent_servers_render_as_clusters_with_routes_before_the_catch_all() -> None:
    bootstrap = render_bootstrap(gateway(routes=AGENT_ROUTES, agents=SERVERS))
    names = [route["name"] for route in routes(bootstrap)]
    assert names[-3:] == ["agent_tools", "agent_helper", "not_found"]
    helper = next(r for r in routes(bootstrap) if r["name"] == "agent_helper")
    assert helper["match"]["headers"][0]["string_match"]["exact"] == "agent_helper"
    assert helper["route"]["timeout"] == "900s"
    assert helper["route"]["host_rewrite_literal"] == "helper.example.com"
    assert "transport_socket" in cluster(bootstrap, "agent_helper")
    assert cluster(bootstrap, "agent_tools")["type"] == "STATIC"
    # The upstream credential is the gateway's business, never in Envoy's config.
    assert "upstream-secret" not in render_bootstrap_yaml(gateway(routes=AGENT_ROUTES,
                                                                  agents=SERVERS))  # fmt: skip


def test_envoy_accepts_a_bootstrap_with_agent_servers(tmp_path: Path) -> None:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    assert_envoy_accepts(
        render_bootstrap_yaml(gateway(routes=AGENT_ROUTES, agents=SERVERS)), tmp_path
    )


# --- the processor on agent routes -----------------------------------------------------------

TEAM2 = {"authorization": "Bearer team2-key"}


def set_headers(answer: Any, phase: str) -> dict[str, str]:
    mutation = getattr(answer, phase).response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


async def test_a_forbidden_tool_call_is_answered_with_a_jsonrpc_error(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_agents(config), services)
    body = {"jsonrpc": "2.0", "id": 41, "method": "tools/call",
            "params": {"name": "deploy_prod", "arguments": {}}}  # fmt: skip
    answers = await run_stream(
        processor, [request_headers("/mcp", headers=TEAM2), request_body(orjson.dumps(body))]
    )
    routed = set_headers(answers[0], "request_headers")
    assert routed[":path"] == "/mcp" and routed[headers.CLUSTER] == "agent_tools"
    # The client's key is swapped for the server's own credential.
    assert routed["authorization"] == "Bearer upstream-secret"
    refused = answers[1].immediate_response
    assert refused.status.code == 200
    error = orjson.loads(refused.body)
    assert error["id"] == 41 and error["error"]["code"] == -32003
    assert error["error"]["data"]["tool"] == "deploy_prod"
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["outcome"] == "rejected" and line["agent"]["status"] == "denied"


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"{not json", -32700), (b'{"jsonrpc":"1.0","method":"x"}', -32600), (b"[]", -32600),
     (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}', -32602)],
)  # fmt: skip
async def test_a_body_that_is_not_jsonrpc_is_a_400_with_its_code(
    config: GatewayConfig, services: Services, body: bytes, code: int
) -> None:
    processor = processor_for(with_agents(config), services)
    answers = await run_stream(
        processor, [request_headers("/mcp", headers=TEAM2), request_body(body)]
    )
    assert answers[1].immediate_response.status.code == 400
    assert orjson.loads(answers[1].immediate_response.body)["error"]["code"] == code


async def test_the_agent_card_needs_no_credentials_but_a_message_does(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_agents(config), services)
    card = "/a2a/helper/.well-known/agent-card.json"
    [answer] = await run_stream(processor, [request_headers(card, method="GET")])
    assert set_headers(answer, "request_headers")[":path"] == "/.well-known/agent-card.json"
    [refused] = await run_stream(processor, [request_headers("/a2a/helper/")])
    assert refused.immediate_response.status.code == 401
    [wrong] = await run_stream(processor, [request_headers("/a2a/helper/x", method="DELETE")])
    assert wrong.immediate_response.status.code == 405


def test_tool_lists_of_servers_no_rule_covers_are_not_read() -> None:
    policy = access({"name": "deploy", "servers": ["tools"], "tools": ["deploy_*"]})
    assert policy.governs_tools("tools") and not policy.governs_tools("search")
    assert access(default="deny").governs_tools("search")


def test_a_resumed_server_stream_has_replayed_tool_lists_filtered_event_by_event() -> None:
    call = call_record()
    lists = ToolListFilter(None, call, lambda name: not name.startswith("deploy"))
    reader = AnswerReader([], sse=True, any_answer=lists)
    note = b'id: 1\ndata: {"jsonrpc":"2.0","method":"notifications/tools/list_changed"}\n\n'
    # A whole event goes on at once; the start of the next one waits for its end.
    assert reader.feed(note + b"id: 2\ndata: ", False) == note
    out = reader.feed(orjson.dumps(LISTED) + b"\n\n", False) or b""
    assert [t["name"] for t in orjson.loads(event_data(out) or b"")["result"]["tools"]] == ["echo"]
    assert out.startswith(b"id: 2\n")
    assert call.tools_hidden == 1


async def test_a_batch_with_two_requests_of_one_id_is_refused(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_agents(config), services)
    twice = [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}] * 2
    answers = await run_stream(
        processor, [request_headers("/mcp", headers=TEAM2), request_body(orjson.dumps(twice))]
    )
    refused = answers[1].immediate_response
    assert refused.status.code == 400
    assert orjson.loads(refused.body)["error"]["code"] == -32600
