"""Gaps in MCP tool access control: requests that could slip past the per-tool check, and
tool lists the gateway could not read on their way to the client.

Bob (key team2, group marketing) may not use ``deploy_*`` (engineering only). Whatever
shape his request takes, a ``deploy_*`` call must never reach the server, and no answer
to a tool list may show him a ``deploy_*`` tool.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.agents.answers import AnswerReader, ToolListFilter
from extproc.agents.call import AgentCall
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
from tests.unit.test_agents import MCP, TEAM2, with_agents

DEPLOY = {"name": "deploy_prod", "arguments": {}}
LISTED = {
    "jsonrpc": "2.0",
    "id": 5,
    "result": {"tools": [{"name": "echo", "inputSchema": {}}, {"name": "deploy_prod",
                                                               "inputSchema": {}}]},
}  # fmt: skip
LIST_REQUEST = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}


async def post(
    config: GatewayConfig,
    services: Services,
    body: Any,
    *answer: ext.ProcessingRequest,
    method: str = "POST",
) -> list[ext.ProcessingResponse]:
    processor = processor_for(with_agents(config), services)
    messages = [request_headers("/mcp", headers=TEAM2, method=method)]
    if method == "POST":
        messages.append(request_body(orjson.dumps(body)))
    return await run_stream(processor, [*messages, *answer])


def refused(answers: list[ext.ProcessingResponse]) -> tuple[int, Any]:
    """The gateway's own answer (status, JSON body); fails if the request went upstream."""
    found = [a for a in answers if a.WhichOneof("response") == "immediate_response"]
    assert found, "the request went on to the MCP server"
    immediate = found[0].immediate_response
    return immediate.status.code, orjson.loads(immediate.body)


def client_sees(answers: list[ext.ProcessingResponse], upstream: bytes) -> bytes:
    """What the client receives of a one-chunk upstream answer."""
    for answer in answers:
        kind = answer.WhichOneof("response")
        if kind == "immediate_response":
            return bytes(answer.immediate_response.body)
        if kind == "response_body":
            mutation = answer.response_body.response.body_mutation
            return bytes(mutation.body) if mutation.WhichOneof("mutation") == "body" else upstream
    return upstream  # no body phase: Envoy delivered the answer as it came


# --- item 1: tools/call that skips the check ---------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"jsonrpc": "2.0", "method": "tools/call", "params": DEPLOY},
                     id="notification"),
        pytest.param([{"jsonrpc": "2.0", "method": "tools/call", "params": DEPLOY}],
                     id="notification-in-batch"),
        pytest.param([{"jsonrpc": "2.0", "id": 1, "method": "ping"},
                      {"jsonrpc": "2.0", "method": "tools/call", "params": DEPLOY}],
                     id="notification-beside-a-request"),
    ],
)  # fmt: skip
async def test_a_tool_call_sent_as_a_notification_is_refused_before_the_server(
    config: GatewayConfig, services: Services, body: Any
) -> None:
    status, error = refused(await post(config, services, body))
    assert status == 400
    first = error[0] if isinstance(error, list) else error
    assert first["error"]["code"] == -32600
    assert "id" in first["error"]["message"]
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["agent"]["status"] == "invalid" and line["outcome"] == "rejected"


async def test_a_tool_call_with_a_null_id_is_still_checked(
    config: GatewayConfig, services: Services
) -> None:
    # A null id is a request to JSON-RPC (MCP forbids it, servers refuse it): checked as one.
    body = {"jsonrpc": "2.0", "id": None, "method": "tools/call", "params": DEPLOY}
    status, error = refused(await post(config, services, body))
    assert status == 200 and error["id"] is None and error["error"]["code"] == -32003


@pytest.mark.parametrize("method", ["Tools/Call", "TOOLS/CALL", " tools/call", "tools/call\n",
                                    "tools/call\u200b", "\uff54ools/call"])  # fmt: skip
async def test_a_lookalike_of_tools_call_is_refused_not_forwarded_unchecked(
    config: GatewayConfig, services: Services, method: str
) -> None:
    # A server that matches methods loosely would run it; the gateway would not check it.
    body = {"jsonrpc": "2.0", "id": 9, "method": method, "params": DEPLOY}
    status, error = refused(await post(config, services, body))
    assert status == 400 and error["id"] == 9 and error["error"]["code"] == -32600
    assert "tools/call" in error["error"]["message"]


async def test_a_lookalike_of_tools_list_is_refused_not_answered_unfiltered(
    config: GatewayConfig, services: Services
) -> None:
    body = {"jsonrpc": "2.0", "id": 5, "method": "Tools/List"}
    status, error = refused(await post(config, services, body))
    assert status == 400 and error["error"]["code"] == -32600


async def test_a_tool_list_request_sent_as_a_notification_is_refused(
    config: GatewayConfig, services: Services
) -> None:
    # A lenient server could answer it anyway; no watch would filter that answer.
    status, error = refused(await post(config, services, {"jsonrpc": "2.0",
                                                          "method": "tools/list"}))  # fmt: skip
    assert status == 400 and error["error"]["code"] == -32600


@pytest.mark.parametrize(
    "params",
    [{"name": ["deploy_prod"]}, {"name": 7}, {"name": None}, {"name": {"x": "deploy_prod"}},
     ["deploy_prod"], "deploy_prod", {"arguments": {}}, {"name": ""}],
)  # fmt: skip
async def test_a_tool_call_whose_name_is_not_a_string_is_refused(
    config: GatewayConfig, services: Services, params: Any
) -> None:
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}
    status, error = refused(await post(config, services, body))
    assert status == 400 and error["error"]["code"] == -32602


async def test_a_batch_with_a_tool_call_is_refused_whole(
    config: GatewayConfig, services: Services
) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": DEPLOY},
    ]
    status, errors = refused(await post(config, services, batch))
    assert status == 400 and [e["id"] for e in errors] == [1, 2]
    assert {e["error"]["code"] for e in errors} == {-32600}


# --- item 2: tool lists in answers the gateway did not read -------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "APPLICATION/JSON; charset=UTF-8",
     "text/plain", "text/plain; charset=utf-8", "", "application/octet-stream",
     "application/json-rpc"],
)  # fmt: skip
async def test_a_tool_list_in_any_content_type_reaches_the_client_filtered_or_not_at_all(
    config: GatewayConfig, services: Services, content_type: str
) -> None:
    upstream = orjson.dumps(LISTED)
    answers = await post(
        config,
        services,
        LIST_REQUEST,
        response_headers(200, {"content-type": content_type}),
        response_body(upstream, True),
    )
    seen = client_sees(answers, upstream)
    assert b"deploy_prod" not in seen
    assert b"echo" in seen  # readable JSON: filtered, not refused


@pytest.mark.parametrize("content_type", ["TEXT/EVENT-STREAM", "Text/Event-Stream; charset=utf-8"])
async def test_an_sse_tool_list_with_an_uppercase_content_type_is_filtered(
    config: GatewayConfig, services: Services, content_type: str
) -> None:
    upstream = b"event: message\ndata: " + orjson.dumps(LISTED) + b"\n\n"
    answers = await post(
        config,
        services,
        LIST_REQUEST,
        response_headers(200, {"content-type": content_type}),
        response_body(upstream, True),
    )
    seen = client_sees(answers, upstream)
    assert b"deploy_prod" not in seen and b"echo" in seen


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
async def test_a_tool_list_in_an_encoding_the_gateway_cannot_decode_is_a_jsonrpc_error(
    config: GatewayConfig, services: Services, content_type: str
) -> None:
    # A server that compresses in br although the gateway asked for no encoding: the
    # gateway cannot filter the list, so the client gets an error it can read (no br
    # header). gzip and deflate are decoded and filtered (test_agent_compressed_answers).
    plain = orjson.dumps(LISTED)
    if content_type == "text/event-stream":
        plain = b"data: " + plain + b"\n\n"
    answers = await post(
        config,
        services,
        LIST_REQUEST,
        response_headers(200, {"content-type": content_type, "content-encoding": "br"}),
        response_body(b"\x0b\x80" + plain, True),
    )
    status, error = refused(answers)
    assert status == 200
    assert error["id"] == 5 and error["error"]["code"] == -32603


async def test_a_resumed_server_stream_with_an_uppercase_sse_type_is_filtered(
    config: GatewayConfig, services: Services
) -> None:
    upstream = b"id: 3\ndata: " + orjson.dumps(LISTED) + b"\n\n"
    answers = await post(
        config,
        services,
        None,
        response_headers(200, {"content-type": "Text/Event-Stream"}),
        response_body(upstream, False),
        method="GET",
    )
    seen = client_sees(answers, upstream)
    assert b"deploy_prod" not in seen and b"echo" in seen


@pytest.mark.parametrize(
    "extra",
    [{"content-type": "text/plain"}, {"content-type": "text/event-stream",
                                      "content-encoding": "br"}],
)  # fmt: skip
async def test_a_server_stream_the_gateway_cannot_read_is_refused(
    config: GatewayConfig, services: Services, extra: dict[str, str]
) -> None:
    upstream = b"id: 3\ndata: " + orjson.dumps(LISTED) + b"\n\n"
    if "content-encoding" in extra:
        upstream = b"\x0b\x80" + upstream  # stands for br's bytes
    answers = await post(
        config,
        services,
        None,
        response_headers(200, extra),
        response_body(upstream, False),
        method="GET",
    )
    status, error = refused(answers)
    assert status == 502 and error["error"]["code"] == -32603


@pytest.mark.parametrize("cursor", ["page-2", "", None])
async def test_every_page_of_a_tool_list_is_filtered(
    config: GatewayConfig, services: Services, cursor: str | None
) -> None:
    body = {**LIST_REQUEST, "params": {"cursor": cursor}}
    page = {**LISTED, "result": {**LISTED["result"], "nextCursor": "page-3"}}  # type: ignore[dict-item]
    upstream = orjson.dumps(page)
    answers = await post(
        config, services, body, response_headers(200), response_body(upstream, True)
    )
    seen = client_sees(answers, upstream)
    assert b"deploy_prod" not in seen and b"page-3" in seen


# --- item 3: A2A messages the limits would not count ---------------------------------------

A2A_MESSAGE = {"message": {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "hi"}]}}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"jsonrpc": "2.0", "method": "SendMessage", "params": A2A_MESSAGE},
                     id="notification"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": "sendMessage", "params": A2A_MESSAGE},
                     id="lookalike"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": "Message/Send", "params": A2A_MESSAGE},
                     id="lookalike-0.3"),
    ],
)  # fmt: skip
async def test_an_a2a_message_that_limits_would_not_count_is_refused(
    config: GatewayConfig, services: Services, body: Any
) -> None:
    # Limits count SendMessage requests by their exact method; a lenient agent would run
    # a notification or a lookalike uncounted, past the caller's limit.
    processor = processor_for(with_agents(config), services)
    answers = await run_stream(
        processor,
        [request_headers("/a2a/helper/", headers=TEAM2), request_body(orjson.dumps(body))],
    )
    status, error = refused(answers)
    assert status == 400 and error["error"]["code"] == -32600


async def test_an_unreadable_tool_list_is_logged_as_the_gateways_refusal(
    config: GatewayConfig, services: Services
) -> None:
    answers = await post(
        config,
        services,
        LIST_REQUEST,
        response_headers(200, {"content-encoding": "br"}),
        response_body(b"\x8b\x00compressed", True),
    )
    refused(answers)
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["outcome"] == "rejected" and line["error_type"] == "upstream_error"
    assert line["agent"]["status"] == "upstream_error" and line["agent"]["rpc_error_code"] == -32603


async def test_a_bodiless_answer_to_a_server_stream_is_passed_on(
    config: GatewayConfig, services: Services
) -> None:
    answers = await post(
        config, services, None, response_headers(204, {"content-type": ""}, True), method="GET"
    )
    assert all(a.WhichOneof("response") != "immediate_response" for a in answers)


async def test_a_tool_call_answer_the_gateway_only_observes_passes_as_it_came(
    config: GatewayConfig, services: Services
) -> None:
    # Compressed, it is decoded and read (test_agent_compressed_answers).
    body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "echo"}}
    upstream = b"\x1f\x8b opaque"
    answers = await post(
        config,
        services,
        body,
        response_headers(200, {"content-type": "text/plain"}),
        response_body(upstream, True),
    )
    assert client_sees(answers, upstream) == upstream


def test_the_last_events_of_a_server_stream_reach_the_client_filtered() -> None:
    # The stream's end came with its last chunk: those events were read and filtered,
    # and the client gets them (they were dropped before).
    call = AgentCall(MCP.protocol, MCP)
    lists = ToolListFilter(None, call, lambda name: not name.startswith("deploy"))
    reader = AnswerReader([], sse=True, any_answer=lists)
    result = {"jsonrpc": "2.0", "id": 8, "result": {"content": []}}
    body = b"id: 1\ndata: " + orjson.dumps(result) + b"\n\nid: 2\ndata: " + orjson.dumps(LISTED)
    out = reader.feed(body + b"\n\n", True) or b""
    assert orjson.dumps(result) in out
    assert b"echo" in out and b"deploy_prod" not in out


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_a_body_on_a_get_or_delete_comes_to_the_gateway_and_is_refused(
    config: GatewayConfig, services: Services, method: str
) -> None:
    processor = processor_for(with_agents(config), services)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": DEPLOY}
    answers = await run_stream(
        processor,
        [request_headers("/mcp", headers=TEAM2, method=method), request_body(orjson.dumps(call))],
    )
    # Envoy is told to send the body (if any) rather than pass it upstream unread.
    mode = answers[0].mode_override
    assert mode.request_body_mode == mode.BUFFERED
    status, error = refused(answers)
    assert status == 400 and error["error"]["code"] == -32600
