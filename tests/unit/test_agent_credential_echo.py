"""An agent server's answer never hands the client the credential the gateway sent it.

The MCP server ``tools`` gets ``Authorization: Bearer <TOOLS_KEY>`` from the gateway and
the A2A agent ``helper`` gets ``x-api-key: <HELPER_KEY>``; Bob (key team2) never holds
either. A server that quotes what it was sent (a 403 "invalid key ...", a 400 listing
its headers, a JSON-RPC error or a tool's result echoing ``Authorization``, an SSE event
of either) handed Bob the key: answers the gateway only observes, and error answers,
passed on unread. Now every answer of a server with a gateway credential is searched
for it (as sent, JSON-escaped, percent-encoded) and each one found becomes as many
asterisks, its length kept, across SSE chunks too; the request is logged once and
counted in ``aigw_agent_credential_echoes_total{server}``. A server without a gateway
credential pays nothing: its unread answers stay unread.
"""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

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
from tests.unit.test_agents import TEAM2
from tests.unit.test_alerts_review import alert, firing, promtool_test, scraped_around
from tests.unit.test_envoy_bootstrap import gateway

# A slash, a plus and an equals sign: its JSON-escaped (``\\/``) and percent-encoded
# forms differ from the raw one.
TOOLS_KEY = "sk-tools-4f9a/7Qz+e1X=wq"
HELPER_KEY = "a2a-helper-8c1d2e3f9a0b"
SERVERS = {
    "servers": [
        {"name": "tools", "protocol": "mcp", "url": "http://127.0.0.1:9000/mcp",
         "api_key": TOOLS_KEY},
        {"name": "helper", "protocol": "a2a", "url": "http://127.0.0.1:9001",
         "api_key": HELPER_KEY, "api_key_header": "x-api-key"},
        {"name": "open", "protocol": "mcp", "url": "http://127.0.0.1:9002/mcp"},
    ],
}  # fmt: skip
ROUTES = [
    {"name": "mcp", "path": "/mcp", "api": "mcp", "server": "tools"},
    {"name": "helper", "path_prefix": "/a2a/helper", "api": "a2a", "server": "helper"},
    {"name": "open", "path": "/open", "api": "mcp", "server": "open"},
]
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "whoami", "arguments": {}}}  # fmt: skip
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
MESSAGE = {"jsonrpc": "2.0", "id": "m1", "method": "message/send",
           "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": "hi"}],
                                  "messageId": "x"}}}  # fmt: skip
SSE = "text/event-stream"


def with_servers(config: GatewayConfig) -> GatewayConfig:
    extra = gateway(routes=ROUTES, agents=SERVERS)
    return config.model_copy(
        update={"routes": (*config.routes, *extra.routes), "agents": extra.agents}
    )


async def answered(
    config: GatewayConfig,
    services: Services,
    chunks: list[bytes],
    *,
    path: str = "/mcp",
    body: Any = CALL,
    status: int = 200,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[bytes, ext.ProcessingResponse]:
    """What Bob's client receives of the server's answer sent in ``chunks``, and the
    gateway's answer to its headers. Envoy sends no body to the gateway once the headers'
    answer says NONE: the client then gets the chunks as they came."""
    processor = processor_for(with_servers(config), services)
    messages = [request_headers(path, method=method, headers=TEAM2)]
    if method == "POST":
        messages.append(request_body(orjson.dumps(body)))
    head_message = response_headers(status, headers)
    replies = await run_stream(processor, [*messages, head_message])
    head = replies[-1]
    assert head.WhichOneof("response") == "response_headers", "the gateway answered itself"
    if head.mode_override.response_body_mode == head.mode_override.NONE:
        return b"".join(chunks), head
    processor = processor_for(with_servers(config), services)
    bodies = [response_body(c, end_of_stream=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    replies = await run_stream(processor, [*messages, head_message, *bodies])
    return client_body(chunks, replies), replies[len(messages)]


def echo_of(key: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 7, "result": {"content": [
        {"type": "text", "text": f"you sent Authorization: Bearer {key}"}]}})  # fmt: skip


def starred(body: bytes, key: str) -> bytes:
    return body.replace(key.encode(), b"*" * len(key))


# --- every kind of answer -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        pytest.param(403, b'{"error": "invalid key ' + TOOLS_KEY.encode() + b'"}', id="403-json"),
        pytest.param(400, orjson.dumps({"jsonrpc": "2.0", "id": 7, "error": {
            "code": -32600, "message": f"bad request, headers: authorization=Bearer {TOOLS_KEY}"}}),
            id="400-jsonrpc"),
        pytest.param(200, orjson.dumps({"jsonrpc": "2.0", "id": 7, "error": {
            "code": -32603, "message": f"upstream said no to Bearer {TOOLS_KEY}"}}),
            id="200-jsonrpc-error"),
        pytest.param(200, echo_of(TOOLS_KEY), id="200-result-echo"),
    ],
)  # fmt: skip
async def test_a_json_answer_quoting_the_servers_key_reaches_bob_starred(
    config: GatewayConfig, services: Services, status: int, answer: bytes
) -> None:
    seen, head = await answered(config, services, [answer], status=status)
    assert TOOLS_KEY.encode() not in seen
    # Length kept: the asterisks stand where the key stood, the rest byte for byte.
    assert seen == starred(answer, TOOLS_KEY)
    if status >= 400:
        # Only searched, not read: its length holds, so its content-length stays.
        removed = head.response_headers.response.header_mutation.remove_headers
        assert "content-length" not in removed


async def test_an_initialize_answer_the_gateway_does_not_watch_is_searched_too(
    config: GatewayConfig, services: Services
) -> None:
    answer = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {
        "serverInfo": {"name": "debug", "version": f"auth=Bearer {TOOLS_KEY}"}}})  # fmt: skip
    seen, _ = await answered(config, services, [answer], body=INIT)
    assert seen == starred(answer, TOOLS_KEY)


def lower_hex(encoded: str) -> str:
    """Percent-encoding in lowercase hex (``%2f``), as some encoders write it."""
    return re.sub(r"%[0-9A-F]{2}", lambda escape: escape.group().lower(), encoded)


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(orjson.dumps(TOOLS_KEY)[1:-1].replace(b"/", b"\\/"), id="json-slash"),
        pytest.param(quote(TOOLS_KEY, safe="").encode(), id="percent-encoded"),
        # Python's quote() and yarl (aiohttp) keep "/" in a query: a URL echoed back.
        pytest.param(quote(TOOLS_KEY).encode(), id="percent-encoded-slash-kept"),
        # .NET's HttpUtility.UrlEncode writes lowercase hex.
        pytest.param(lower_hex(quote(TOOLS_KEY, safe="")).encode(), id="percent-lowercase"),
    ],
)
async def test_every_form_a_server_could_quote_the_key_in_is_starred(
    config: GatewayConfig, services: Services, form: bytes
) -> None:
    answer = b'{"jsonrpc":"2.0","id":7,"result":{"echo":"' + form + b'"}}'
    seen, _ = await answered(config, services, [answer])
    assert seen == answer.replace(form, b"*" * len(form))


@pytest.mark.parametrize("cut", [1, 5, len(TOOLS_KEY) - 1])
async def test_a_key_split_over_two_sse_chunks_is_starred(
    config: GatewayConfig, services: Services, cut: int
) -> None:
    event = b"event: message\r\ndata: " + echo_of(TOOLS_KEY) + b"\r\n\r\n"
    at = event.index(TOOLS_KEY.encode()) + cut
    chunks = [event[:at], event[at:]]
    seen, _ = await answered(config, services, chunks, headers={"content-type": SSE})
    assert seen == starred(event, TOOLS_KEY)


async def test_an_a2a_agents_echo_of_its_own_header_key_is_starred(
    config: GatewayConfig, services: Services
) -> None:
    answer = orjson.dumps({"jsonrpc": "2.0", "id": "m1", "result": {
        "kind": "message", "role": "agent", "messageId": "r",
        "parts": [{"kind": "text", "text": f"x-api-key was {HELPER_KEY}"}]}})  # fmt: skip
    seen, _ = await answered(config, services, [answer], path="/a2a/helper/", body=MESSAGE)
    assert seen == starred(answer, HELPER_KEY)


async def test_a_compressed_echo_is_read_decoded_and_starred(
    config: GatewayConfig, services: Services
) -> None:
    answer = echo_of(TOOLS_KEY)
    seen, _ = await answered(
        config, services, [gzip.compress(answer)], status=200,
        headers={"content-encoding": "gzip"},
    )  # fmt: skip
    assert seen == starred(answer, TOOLS_KEY)


# --- the operator's view ----------------------------------------------------------------------


async def test_an_echo_is_logged_once_without_the_key_and_counted(
    config: GatewayConfig, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    event = b"data: " + echo_of(TOOLS_KEY) + b"\n\n"
    chunks = [event, event[:20], event[20:]]
    with caplog.at_level(logging.WARNING):
        seen, _ = await answered(config, services, chunks, headers={"content-type": SSE})
    assert seen == starred(b"".join(chunks), TOOLS_KEY)
    said = [r.getMessage() for r in caplog.records if "credential" in r.getMessage()]
    assert len(said) == 1 and "'tools'" in said[0]
    assert TOOLS_KEY not in caplog.text
    counted = services.metrics.registry.get_sample_value(
        "aigw_agent_credential_echoes_total", {"server": "tools"}
    )
    assert counted == 1.0


async def test_a_server_without_a_gateway_credential_pays_nothing(
    config: GatewayConfig, services: Services
) -> None:
    answer = b'{"error": "nope"}'
    _, head = await answered(config, services, [answer], path="/open", status=403)
    # Envoy delivers the answer: no body message reaches the gateway.
    assert head.mode_override.response_body_mode == head.mode_override.NONE


# --- answers the gateway never read before ----------------------------------------------------


async def test_a_header_quoting_the_key_is_starred_and_a_redirects_query_too(
    config: GatewayConfig, services: Services
) -> None:
    debug = {
        "x-debug-authorization": f"Bearer {TOOLS_KEY}",
        "location": f"http://127.0.0.1:9000/mcp/?token={quote(TOOLS_KEY, safe='')}",
    }
    _, head = await answered(config, services, [b""], status=307, headers=debug)
    mutation = head.response_headers.response.header_mutation
    changed = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    assert changed["x-debug-authorization"] == "Bearer " + "*" * len(TOOLS_KEY)
    # The redirect is pointed at the route, and its query keeps no key either.
    encoded = quote(TOOLS_KEY, safe="")
    assert changed["location"] == "/mcp/?token=" + "*" * len(encoded)


async def test_the_public_agent_card_and_its_errors_are_searched(
    config: GatewayConfig, services: Services
) -> None:
    # Anyone may fetch the card, before credentials: an error quoting the key would
    # hand it to whoever asked.
    answer = b'{"detail": "upstream auth x-api-key=' + HELPER_KEY.encode() + b' not accepted"}'
    seen, _ = await answered(
        config, services, [answer], path="/a2a/helper/.well-known/agent-card.json",
        method="GET", status=404,
    )  # fmt: skip
    assert seen == starred(answer, HELPER_KEY)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_the_mcp_server_stream_and_session_end_are_searched(
    config: GatewayConfig, services: Services, method: str
) -> None:
    event = b"data: " + echo_of(TOOLS_KEY) + b"\n\n"
    chunks = [event[:40], event[40:]]
    seen, _ = await answered(config, services, chunks, method=method, headers={"content-type": SSE})
    assert seen == starred(event, TOOLS_KEY)


async def test_an_answer_it_cannot_decode_to_search_fails_closed(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_servers(config), services)
    answers = await run_stream(processor, [
        request_headers("/mcp", headers=TEAM2), request_body(orjson.dumps(CALL)),
        response_headers(200, {"content-encoding": "br"}),
    ])  # fmt: skip
    failed = answers[-1].immediate_response
    assert failed.status.code == 200
    error = orjson.loads(failed.body)
    assert error["id"] == 7 and error["error"]["code"] == -32603


async def test_a_server_without_a_credential_keeps_its_compressed_answers(
    config: GatewayConfig, services: Services
) -> None:
    # Nothing to search for: a br answer only observed passes as it came, as before.
    _, head = await answered(
        config, services, [b"\x1b\x00"], path="/open", headers={"content-encoding": "br"}
    )
    assert head.WhichOneof("response") == "response_headers"


async def test_a_filtered_tool_list_holding_the_key_is_starred_too(
    config: GatewayConfig, services: Services
) -> None:
    rules = {**SERVERS, "access": [{"name": "deploy", "tools": ["deploy_*"],
                                    "groups": ["engineering"]}]}  # fmt: skip
    extra = gateway(routes=ROUTES, agents=rules)
    governed = config.model_copy(
        update={"routes": (*config.routes, *extra.routes), "agents": extra.agents}
    )
    listed = orjson.dumps({"jsonrpc": "2.0", "id": 3, "result": {"tools": [
        {"name": "echo", "description": f"calls home with {TOOLS_KEY}", "inputSchema": {}},
        {"name": "deploy_prod", "inputSchema": {}}]}})  # fmt: skip
    processor = processor_for(governed, services)
    answers = await run_stream(processor, [
        request_headers("/mcp", headers=TEAM2),
        request_body(b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}'),
        response_headers(200), response_body(listed[:50], False), response_body(listed[50:]),
    ])  # fmt: skip
    seen = client_body([listed[:50], listed[50:]], answers)
    tools = orjson.loads(seen)["result"]["tools"]
    assert [tool["name"] for tool in tools] == ["echo"]
    assert tools[0]["description"] == "calls home with " + "*" * len(TOOLS_KEY)


@pytest.mark.parametrize("form", [quote(TOOLS_KEY), lower_hex(quote(TOOLS_KEY, safe=""))])
async def test_a_url_encoded_key_split_anywhere_over_two_chunks_is_starred(
    config: GatewayConfig, services: Services, form: str
) -> None:
    # Every form shares the key's lead ("sk-tools-4f9a"), which the chunk's tail is
    # scanned for once: a cut inside the lead or past it holds back all that is needed.
    event = b'data: {"jsonrpc":"2.0","id":7,"result":{"url":"/x?t=' + form.encode() + b'"}}\n\n'
    at = event.index(form.encode())
    for cut in range(at, at + len(form) + 1):
        seen, _ = await answered(
            config, services, [event[:cut], event[cut:]], headers={"content-type": SSE}
        )
        assert seen == event.replace(form.encode(), b"*" * len(form)), cut


def test_each_server_with_a_credential_shows_its_echo_count_at_zero_from_the_start(
    config: GatewayConfig, services: Services
) -> None:
    # An alert on increase() sees the first echo only if the series was there before it.
    processor_for(with_servers(config), services)
    registry = services.metrics.registry

    def echoes(server: str) -> float | None:
        return registry.get_sample_value("aigw_agent_credential_echoes_total", {"server": server})

    assert echoes("tools") == 0.0 and echoes("helper") == 0.0
    assert echoes("open") is None  # nothing to search for, nothing to count


async def test_the_first_echo_raises_the_agent_credential_alert(
    config: GatewayConfig, services: Services, tmp_path: Path
) -> None:
    # Scraped once a minute from the gateway's own registry; at minute 10, one echo.
    processor_for(with_servers(config), services)
    timeline = await scraped_around(
        services.metrics.registry, lambda: answered(config, services, [echo_of(TOOLS_KEY)])
    )
    summary = (
        "Agent server tools quoted the gateway's credential for it in its answers in the"
        " last hour (starred out before the client)"
    )
    expected = alert(summary, severity="warning", server="tools")
    expected["exp_annotations"]["description"] = (
        "Fix the server (its error messages, a debug tool or setting that echoes the"
        " request's headers); its own logs may hold the key too. The gateway's log names"
        " each request (docs/agents.md, The server's credential in its answers)."
    )
    failed = promtool_test(
        tmp_path,
        timeline,
        [
            firing("AigwAgentCredentialEchoed", 9),
            firing("AigwAgentCredentialEchoed", 12, expected),
        ],
    )
    assert not failed, failed


async def test_a_task_id_holding_the_key_reaches_neither_bob_nor_the_log_line(
    config: GatewayConfig, services: Services
) -> None:
    # The gateway reads the task for its log line: it reads the searched answer.
    answer = orjson.dumps({"jsonrpc": "2.0", "id": "m1", "result": {
        "kind": "task", "id": f"task-{HELPER_KEY}", "contextId": "c1",
        "status": {"state": "completed"}}})  # fmt: skip
    seen, _ = await answered(config, services, [answer], path="/a2a/helper/", body=MESSAGE)
    assert seen == starred(answer, HELPER_KEY)
    # The last line: ``answered`` plays the headers alone first.
    line = services.access_log.lines()[-1]  # type: ignore[attr-defined]
    assert line["agent"]["task_id"] == "task-" + "*" * len(HELPER_KEY)
    assert HELPER_KEY not in orjson.dumps(line).decode()
