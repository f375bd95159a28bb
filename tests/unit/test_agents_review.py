"""Agent traffic as an adversarial operator sees it: what the client gets, the log line and
the metrics for calls the gateway refused, limited, or could not check.

Bob (key team2, group marketing) may not use ``deploy_*`` on the MCP server ``tools``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.store.connection import connect
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
from tests.unit.test_agents import TEAM2, with_agents

DEPLOY = {"name": "deploy_prod", "arguments": {}}


def with_limits(config: GatewayConfig, *rules: dict[str, Any]) -> GatewayConfig:
    """The agent config of ``test_agents`` with these ``agents.limits`` rules."""
    agents = with_agents(config)
    limits = agents.agents.model_validate(
        {**agents.agents.model_dump(mode="json"), "limits": list(rules)}
    )
    return agents.model_copy(update={"agents": limits})


async def tool_call(processor: Processor, params: Any, request_id: Any = 1) -> Any:
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    return await run_stream(
        processor, [request_headers("/mcp", headers=TEAM2), request_body(orjson.dumps(body))]
    )


def immediate(answers: list[ext.ProcessingResponse]) -> tuple[int, Any] | None:
    """The gateway's own answer (status, JSON body), or None when the request went upstream."""
    for answer in answers:
        if answer.WhichOneof("response") == "immediate_response":
            found = answer.immediate_response
            return found.status.code, orjson.loads(found.body)
    return None


def samples(services: Services, metric: str) -> list[dict[str, str]]:
    """The label sets of a metric's samples on the gateway's registry."""
    registry = services.metrics.registry
    return [
        dict(sample.labels)
        for family in registry.collect()
        for sample in family.samples
        if sample.name == metric
    ]


# --- request limits --------------------------------------------------------------------------


async def test_made_up_tool_names_cannot_grow_the_rate_limited_series_past_the_budget(
    config: GatewayConfig, quota_store: QuotaStore
) -> None:
    # A per-tool limit names its counter after the tool, which the client chooses: each
    # refusal of a made-up tool must not add a series to aigw_rate_limited_total.
    budget = 3
    services = Services(GatewayMetrics(max_label_values=budget), MemoryLog(),
                        quota_store=quota_store)  # fmt: skip
    # Per day: a minute's boundary between a tool's two calls would admit the second.
    rule = {"name": "per-tool", "subject": "api_key", "requests_per_day": 1}
    processor = processor_for(with_limits(config, rule), services)
    for index in range(budget * 3):
        params = {"name": f"made_up_{index}", "arguments": {}}
        assert immediate(await tool_call(processor, params)) is None  # first call: admitted
        refusal = immediate(await tool_call(processor, params))
        assert refusal is not None and refusal[1]["error"]["code"] == -32029
    refused = samples(services, "aigw_rate_limited_total")
    assert {labels["rule"] for labels in refused} == {"agent:per-tool"}
    assert (
        services.metrics.registry.get_sample_value(
            "aigw_rate_limited_total", {"rule": "agent:per-tool", "subject_kind": "api_key"}
        )
        == budget * 3
    )
    # Which tools were refused is on the tool calls' counter, its tool label bounded.
    tools = {labels["tool"] for labels in samples(services, "aigw_mcp_tool_calls_total")}
    assert len(tools) <= budget + 1


async def test_a_refused_call_uses_up_no_other_limit(
    config: GatewayConfig, quota_store: QuotaStore
) -> None:
    # echo may run once a day; every tool together three times. Refusals of echo by the
    # first rule must not eat into the second: Bob still has two calls of other tools.
    # (Per day, not per minute: a minute's boundary mid-test would start both afresh.)
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    rules = (
        {"name": "echo-once", "subject": "api_key", "tools": ["echo"], "requests_per_day": 1},
        {"name": "three", "subject": "api_key", "per_tool": False, "requests_per_day": 3},
    )
    processor = processor_for(with_limits(config, *rules), services)
    echo = {"name": "echo", "arguments": {}}
    assert immediate(await tool_call(processor, echo)) is None
    for _ in range(3):
        refusal = immediate(await tool_call(processor, echo))
        assert refusal is not None and refusal[1]["error"]["data"]["rule"] == "echo-once"
    for tool in ("search", "fetch"):
        assert immediate(await tool_call(processor, {"name": tool, "arguments": {}})) is None
    refusal = immediate(await tool_call(processor, {"name": "fetch", "arguments": {}}))
    assert refusal is not None and refusal[1]["error"]["data"]["rule"] == "three"


@pytest.fixture
async def dead_store() -> AsyncIterator[QuotaStore]:
    """A quota store whose server is gone: every reservation fails."""
    client = connect("redis://127.0.0.1:1", 0.2)
    store = QuotaStore(client, "agents-review-dead:")
    yield store
    await client.aclose()


async def test_a_tool_call_refused_because_the_store_is_down_is_not_logged_as_forwarded(
    config: GatewayConfig, dead_store: QuotaStore
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=dead_store)
    rule = {"name": "per-key", "subject": "api_key", "requests_per_minute": 5,
            "on_store_failure": "fail_closed"}  # fmt: skip
    processor = processor_for(with_limits(config, rule), services)
    refusal = immediate(await tool_call(processor, {"name": "echo", "arguments": {}}))
    assert refusal is not None and refusal[0] == 503
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["outcome"] == "rejected" and line["quota_decision"] == "unavailable"
    # The call never reached the server: the log line and the metric must not say it did.
    assert line["agent"]["status"] == "unavailable"
    [labels] = samples(services, "aigw_mcp_tool_calls_total")
    assert labels["tool"] == "echo" and labels["status"] == "unavailable"


@pytest.mark.parametrize(
    ("headers", "method", "body", "http_status", "status"),
    [
        pytest.param({}, "POST", b"{}", 401, "denied", id="no-credentials"),
        pytest.param({"authorization": "Bearer nope"}, "POST", b"{}", 401, "denied",
                     id="bad-credentials"),
        pytest.param(TEAM2, "PUT", b"", 405, "invalid", id="method-not-allowed"),
        pytest.param(TEAM2, "POST", b" " * 1_100_000, 413, "invalid", id="body-too-large"),
        pytest.param({**TEAM2, "content-length": "9999999999"}, "POST", b"", 413, "invalid",
                     id="declared-too-large"),
        pytest.param({**TEAM2, "content-encoding": "gzip"}, "POST", b"\x1f\x8b\x08\x00", 415,
                     "invalid", id="compressed-body"),
    ],
)  # fmt: skip
async def test_an_http_refusal_on_an_agent_route_is_logged_as_the_gateways_refusal(
    config: GatewayConfig,
    services: Services,
    headers: dict[str, str],
    method: str,
    body: bytes,
    http_status: int,
    status: str,
) -> None:
    processor = processor_for(with_agents(config), services)
    messages = [request_headers("/mcp", method=method, headers=headers)]
    if body:
        messages.append(request_body(body))
    refusal = immediate(await run_stream(processor, messages))
    assert refusal is not None and refusal[0] == http_status
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["http_status_code"] == http_status and line["outcome"] == "rejected"
    assert line["agent"]["status"] == status


# --- requests the rules could not read ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method", "params"),
    [
        pytest.param("/mcp", " " * 1100 + "tools/call", DEPLOY, id="mcp-padded-tools-call"),
        pytest.param("/mcp", "tools/call" + "\u200b" * 1100, DEPLOY, id="mcp-zero-width-padding"),
        pytest.param("/mcp", "\t" * 500_000 + "tools/list", None, id="mcp-padded-tools-list"),
        pytest.param("/a2a/helper/", "SendMessage" + " " * 2000,
                     {"message": {"role": "ROLE_USER", "messageId": "m", "parts": []}},
                     id="a2a-padded-message"),
    ],
)  # fmt: skip
async def test_a_governed_method_padded_past_any_length_is_still_refused(
    config: GatewayConfig, services: Services, path: str, method: str, params: Any
) -> None:
    # A server that strips or normalises method names would run these as the governed
    # method; the gateway must not forward them unchecked because they are long.
    processor = processor_for(with_agents(config), services)
    body = {"jsonrpc": "2.0", "id": 9, "method": method, "params": params}
    answers = await run_stream(
        processor, [request_headers(path, headers=TEAM2), request_body(orjson.dumps(body))]
    )
    refusal = immediate(answers)
    assert refusal is not None, "the request went on to the server unchecked"
    status, error = refusal
    assert status == 400 and error["id"] == 9 and error["error"]["code"] == -32600
    # The log line names the method, not a megabyte of the client's padding.
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["agent"]["status"] == "invalid"
    assert len(orjson.dumps(line)) < 8192


# --- answers ----------------------------------------------------------------------------------

ASKS_FOR_INPUT = {
    "resultType": "input_required",
    "inputRequests": {"confirm": {"method": "elicitation/create",
                                  "params": {"message": "Deploy to prod?"}}},
    "requestState": "opaque-state",
}  # fmt: skip


@pytest.mark.parametrize("sse", [False, True])
async def test_a_tool_call_round_that_asks_for_input_is_not_counted_as_a_completed_call(
    config: GatewayConfig, services: Services, sse: bool
) -> None:
    # MCP 2026-07-28 (multi round-trip requests): the server answers input_required and
    # the client sends the call again with the input. The first round ran nothing yet.
    processor = processor_for(with_agents(config), services)
    answer = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": ASKS_FOR_INPUT})
    content_type = "text/event-stream" if sse else "application/json"
    body = b"event: message\ndata: " + answer + b"\n\n" if sse else answer
    body_request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {}}}  # fmt: skip
    await run_stream(
        processor,
        [
            request_headers("/mcp", headers=TEAM2),
            request_body(orjson.dumps(body_request)),
            response_headers(200, {"content-type": content_type}),
            response_body(body, True),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["agent"]["status"] == "input_required"
    [labels] = samples(services, "aigw_mcp_tool_calls_total")
    assert labels["status"] == "input_required"


def base64_header(value: str) -> str:
    import base64

    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


@pytest.mark.parametrize(
    ("extra", "tool"),
    [
        pytest.param({"mcp-method": "tools/call", "mcp-name": "deploy_prod"}, "echo",
                     id="name-header-names-another-tool"),
        pytest.param({"mcp-name": base64_header("deploy_prod")}, "echo",
                     id="base64-name-header"),
        pytest.param({"mcp-method": "ping"}, "echo", id="method-header-names-another-method"),
        pytest.param({"mcp-name": "=?base64?not base64?="}, "echo", id="unreadable-name-header"),
    ],
)  # fmt: skip
async def test_a_tool_call_whose_headers_name_another_call_is_refused(
    config: GatewayConfig, services: Services, extra: dict[str, str], tool: str
) -> None:
    # MCP 2026-07-28 mirrors the method and tool name in Mcp-Method / Mcp-Name so that
    # proxies and servers can route on them: what they route must be what was checked.
    processor = processor_for(with_agents(config), services)
    body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
            "params": {"name": tool, "arguments": {}}}  # fmt: skip
    answers = await run_stream(
        processor,
        [request_headers("/mcp", headers={**TEAM2, **extra}), request_body(orjson.dumps(body))],
    )
    refusal = immediate(answers)
    assert refusal is not None, "the request went on to the server"
    status, error = refusal
    assert status == 400 and error["id"] == 4 and error["error"]["code"] == -32600


@pytest.mark.parametrize(
    "extra",
    [{"mcp-method": "tools/call", "mcp-name": "echo"},
     {"mcp-method": "tools/call", "mcp-name": base64_header("echo")}, {}],
)  # fmt: skip
async def test_a_tool_call_whose_headers_agree_with_its_body_goes_on(
    config: GatewayConfig, services: Services, extra: dict[str, str]
) -> None:
    processor = processor_for(with_agents(config), services)
    body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
            "params": {"name": "echo", "arguments": {}}}  # fmt: skip
    answers = await run_stream(
        processor,
        [request_headers("/mcp", headers={**TEAM2, **extra}), request_body(orjson.dumps(body))],
    )
    assert immediate(answers) is None


INTERNAL_AUTH = (
    'Bearer resource_metadata="http://tools.internal:8000/.well-known/oauth-protected-resource"'
)


@pytest.mark.parametrize(
    ("status", "extra"),
    [
        pytest.param(401, {"www-authenticate": INTERNAL_AUTH}, id="401"),
        pytest.param(403, {"www-authenticate": 'Bearer error="insufficient_scope", '
                                               'scope="deploy"'}, id="403-insufficient-scope"),
    ],
)  # fmt: skip
async def test_the_servers_refusal_of_the_gateways_credential_is_not_the_clients_401(
    config: GatewayConfig, services: Services, status: int, extra: dict[str, str]
) -> None:
    # The client authenticated at the gateway and its credential never went upstream: a
    # 401 from the server is about the gateway's own credential. Passed on, it tells the
    # client its key is wrong, and an MCP SDK starts OAuth against the internal server.
    processor = processor_for(with_agents(config), services)
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "echo", "arguments": {}}}  # fmt: skip
    upstream = b'{"error":"invalid_token","token":"Bearer upstream-secret"}'
    answers = await run_stream(
        processor,
        [
            request_headers("/mcp", headers=TEAM2),
            request_body(orjson.dumps(body)),
            response_headers(status, extra),
            response_body(upstream, True),
        ],
    )
    found = [a for a in answers if a.WhichOneof("response") == "immediate_response"]
    assert found, "the server's refusal went to the client as it came"
    answer = found[0].immediate_response
    assert answer.status.code == 502
    sent = {h.header.key: h.header.raw_value for h in answer.headers.set_headers}
    assert "www-authenticate" not in sent
    assert b"upstream-secret" not in answer.body and b"tools.internal" not in answer.body
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["http_status_code"] == 502 and line["agent"]["status"] == "upstream_error"
    assert "upstream-secret" not in orjson.dumps(line).decode()


# A parser that keeps the first of two equal keys (simdjson's on-demand API, some
# hand-written ones) reads another call than the gateway's, which keeps the last.
_DEPLOY_FIRST = b'"params":{"name":"deploy_prod","arguments":{}}'


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/mcp", b'{"jsonrpc":"2.0","id":1,"method":"tools/call",' + _DEPLOY_FIRST
                     + b',"method":"ping"}', id="method-twice"),
        pytest.param("/mcp", b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
                     b'"params":{"name":"deploy_prod","name":"echo"}}', id="tool-name-twice"),
        pytest.param("/mcp", b'{"jsonrpc":"2.0","id":1,"method":"tools/call",' + _DEPLOY_FIRST
                     + b',"m\\u0065thod":"ping"}', id="escaped-key"),
        pytest.param("/mcp", b'[{"jsonrpc":"2.0","id":1,"method":"tools/call",' + _DEPLOY_FIRST
                     + b',"method":"ping"}]', id="in-a-batch"),
        pytest.param("/mcp", b'{"jsonrpc":"2.0","id":1,"method":"tools/call",' + _DEPLOY_FIRST
                     + b',"params":{"name":"echo"}}', id="params-twice"),
        pytest.param("/a2a/helper/", b'{"jsonrpc":"2.0","id":1,"method":"SendMessage",'
                     b'"params":{"message":{"role":"ROLE_USER","messageId":"m","parts":[]}},'
                     b'"method":"GetTask"}', id="a2a-message-uncounted"),
    ],
)  # fmt: skip
async def test_a_message_with_a_key_twice_is_refused_not_read_one_way_and_run_another(
    config: GatewayConfig, services: Services, path: str, body: bytes
) -> None:
    processor = processor_for(with_agents(config), services)
    answers = await run_stream(processor, [request_headers(path, headers=TEAM2),
                                           request_body(body)])  # fmt: skip
    refusal = immediate(answers)
    assert refusal is not None, "the request went on to the server"
    status, error = refusal
    assert status == 400 and error["error"]["code"] == -32600
    assert "twice" in error["error"]["message"]


async def test_equal_keys_deep_in_a_tools_arguments_are_the_tools_business(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_agents(config), services)
    body = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
            b'"arguments":{"text":"caf\\u00e9","text":"tea","name":"x","name":"y"}}}')  # fmt: skip
    answers = await run_stream(processor, [request_headers("/mcp", headers=TEAM2),
                                           request_body(body)])  # fmt: skip
    assert immediate(answers) is None


async def test_a_body_too_deep_to_check_for_keys_twice_is_a_400_not_a_crash(
    config: GatewayConfig, services: Services
) -> None:
    # orjson reads 1,000 levels; the second parse that looks for keys twice cannot.
    processor = processor_for(with_agents(config), services)
    deep = b"[" * 1000 + b'"\\u0041"' + b"]" * 1000
    body = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
            b'"arguments":{"x":' + deep + b"}}}")  # fmt: skip
    answers = await run_stream(processor, [request_headers("/mcp", headers=TEAM2),
                                           request_body(body)])  # fmt: skip
    refusal = immediate(answers)
    assert refusal is not None and refusal[0] == 400
    assert refusal[1]["error"]["code"] == -32600
