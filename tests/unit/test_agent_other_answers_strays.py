"""A tool list in the answer to any MCP POST reaches the client filtered.

Bob (key team2, group marketing) may not see ``deploy_*`` on the MCP server ``tools``.
An MCP client matches answers to its requests by id, whatever stream carries them. The
gateway read only the answers to ``tools/list`` and ``tools/call`` bodies, so a server
that sent the answer to Bob's pending ``tools/list`` (id 9) down the stream of his
``ping``, ``resources/read``, ``prompts/get`` or ``initialize`` (or of a notification,
or a batch of them) gave him the whole list, ``deploy_prod`` included. Now every answer
on a route whose tools rules hide is read for such lists; one that cannot name
``tools`` is not parsed at all, and passes byte for byte.

And a JSON document orjson refuses: read as a lax client would (a BOM, a lone surrogate
escape), it is filtered like any other, and a tool's result orjson refuses reaches the
client; one no parser reads that names ``tools`` is refused with -32603 for its request.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import client_body, response_body, response_headers
from tests.unit.test_agent_route_edges import SSE, event, log_line
from tests.unit.test_agent_tool_call_strays import CALL, JSON, STRAY, TOOLS, messages
from tests.unit.test_mcp_gaps import post

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
PONG = {"jsonrpc": "2.0", "id": 1, "result": {}}
FILTERED = {"jsonrpc": "2.0", "id": 9, "result": {"tools": TOOLS[:1]}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
BODIES = {
    "ping": PING,
    "resources/read": {"jsonrpc": "2.0", "id": 1, "method": "resources/read",
                       "params": {"uri": "file:///readme"}},
    "prompts/get": {"jsonrpc": "2.0", "id": 1, "method": "prompts/get",
                    "params": {"name": "greet"}},
    "initialize": {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                   "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                              "clientInfo": {"name": "bob", "version": "1"}}},
    "batch": [PING, {"jsonrpc": "2.0", "id": 2, "method": "resources/list"}, INITIALIZED],
}  # fmt: skip


async def answered(
    body: Any, headers: dict[str, str], chunks: list[bytes], config: GatewayConfig,
    services: Services,
) -> bytes:  # fmt: skip
    """What Bob's client receives of the answer to ``body``, sent in ``chunks``."""
    bodies = [response_body(c, end_of_stream=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    replies: list[ext.ProcessingResponse] = await post(
        config, services, body, response_headers(200, headers), *bodies
    )
    return client_body(chunks, replies)


def shapes(result: dict[str, Any]) -> list[Any]:
    """The answer to request 1 with Bob's pending list 9 in it: SSE and JSON, split."""
    both = orjson.dumps([result, STRAY])
    return [
        pytest.param(SSE, [event(orjson.dumps(result)), event(orjson.dumps(STRAY)), b""],
                     id="sse-after"),
        pytest.param(SSE, [event(orjson.dumps(STRAY)), event(orjson.dumps(result)), b""],
                     id="sse-before"),
        pytest.param(SSE, [event(both)[:30], event(both)[30:]], id="sse-batch-split"),
        pytest.param(JSON, [both[:20], both[20:]], id="json-batch-split"),
    ]  # fmt: skip


@pytest.mark.parametrize("method", list(BODIES))
@pytest.mark.parametrize(("headers", "chunks"), shapes(PONG))
async def test_a_stray_list_in_the_answer_to_any_post_is_filtered(
    config: GatewayConfig, services: Services, method: str, headers: dict[str, str],
    chunks: list[bytes],
) -> None:  # fmt: skip
    seen = await answered(BODIES[method], headers, chunks, config, services)
    assert b"deploy_prod" not in seen, seen
    read = messages(seen, headers is SSE)
    assert FILTERED in read and PONG in read
    assert log_line(services)["agent"]["tools_hidden"] == 1


async def test_a_notifications_answer_is_read_too(
    config: GatewayConfig, services: Services
) -> None:
    # No request awaits an answer, but a server may still stream one to another request.
    seen = await answered(INITIALIZED, SSE, [event(orjson.dumps(STRAY)), b""], config, services)
    assert messages(seen, True) == [FILTERED]


@pytest.mark.parametrize(
    ("headers", "chunks"),
    [
        pytest.param(SSE, [b": priming\r\n\r\n", event(orjson.dumps(PONG), "e1")[:9],
                           event(orjson.dumps(PONG), "e1")[9:], b""], id="sse"),
        pytest.param(JSON, [orjson.dumps(PONG)], id="json"),
        # Not JSON at all, but it cannot hold a tool list: not parsed, not refused.
        pytest.param(JSON, [b'{"jsonrpc":"2.0","id":1,"result":{'], id="json-truncated"),
        pytest.param(SSE, [event(b'{"jsonrpc":"2.0","id":1,"result":'), b""],
                     id="sse-truncated"),
    ],
)  # fmt: skip
async def test_an_answer_without_a_list_reaches_the_client_as_it_came(
    config: GatewayConfig, services: Services, headers: dict[str, str], chunks: list[bytes]
) -> None:
    assert await answered(PING, headers, chunks, config, services) == b"".join(chunks)
    line = log_line(services)
    assert line["agent"]["status"] == "forwarded" and line["outcome"] != "error"


# --- answers orjson refuses -------------------------------------------------------------

# A tool's text cut inside an emoji: JSON.stringify writes the lone surrogate as an
# escape, which orjson refuses and every client reads.
CUT_EMOJI = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok \\ud83d"}]}}'


@pytest.mark.parametrize(
    ("headers", "chunks"),
    [
        pytest.param(JSON, [b"[" + CUT_EMOJI + b"," + orjson.dumps(STRAY) + b"]"],
                     id="json-cut-emoji"),
        pytest.param(JSON, [b"\xef\xbb\xbf" + orjson.dumps([PONG, STRAY])], id="json-bom"),
        pytest.param(JSON, [orjson.dumps([PONG, STRAY]).decode().encode("utf-16")],
                     id="json-utf16"),
        pytest.param(SSE, [event(b"\xef\xbb\xbf" + orjson.dumps(STRAY)), b""], id="sse-bom"),
        pytest.param(SSE, [event(b"[" + CUT_EMOJI + b"," + orjson.dumps(STRAY) + b"]"), b""],
                     id="sse-cut-emoji"),
    ],
)  # fmt: skip
async def test_a_list_orjson_refuses_is_read_as_a_lax_client_reads_it_and_filtered(
    config: GatewayConfig, services: Services, headers: dict[str, str], chunks: list[bytes]
) -> None:
    seen = await answered(CALL, headers, chunks, config, services)
    assert b"deploy_prod" not in seen and "deploy_prod" not in seen.decode("utf-16", "ignore")
    assert b"echo" in seen, seen
    assert log_line(services)["agent"]["tools_hidden"] == 1


@pytest.mark.parametrize("headers", [JSON, SSE], ids=["json", "sse"])
async def test_a_tool_result_orjson_refuses_reaches_the_client_as_it_came(
    config: GatewayConfig, services: Services, headers: dict[str, str]
) -> None:
    # Before, the SSE event became an error without an id: the call's result was lost.
    chunks = [CUT_EMOJI] if headers is JSON else [event(CUT_EMOJI), b""]
    assert await answered(CALL, headers, chunks, config, services) == b"".join(chunks)
    assert log_line(services)["agent"]["status"] == "ok"


async def test_a_json_answer_no_parser_reads_that_names_tools_is_a_jsonrpc_error(
    config: GatewayConfig, services: Services
) -> None:
    # A trailing comma: a JSON5 or lenient parser (Jackson, System.Text.Json with the
    # option) would read the list behind it. Before, it passed unchanged.
    unreadable = orjson.dumps([PONG, STRAY])[:-1] + b",]"
    seen = await answered(CALL, JSON, [unreadable], config, services)
    error = orjson.loads(seen)
    assert error["id"] == 1 and error["error"]["code"] == -32603
    line = log_line(services)
    assert line["agent"]["status"] == "upstream_error"
    assert line["agent"]["rpc_error_code"] == -32603


async def test_a_batchs_unreadable_answer_is_an_error_for_each_of_its_requests(
    config: GatewayConfig, services: Services
) -> None:
    unreadable = b'[{"jsonrpc":"2.0","id":1,"result":{"tools":[]},}]'
    seen = await answered(BODIES["batch"], JSON, [unreadable], config, services)
    assert [(e["id"], e["error"]["code"]) for e in orjson.loads(seen)] == [
        (1, -32603),
        (2, -32603),
    ]
