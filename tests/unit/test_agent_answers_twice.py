"""A broken server that answers one request twice: every copy reaches the client rewritten.

Bob (key team2, group marketing) may not see ``deploy_*`` on the MCP server ``tools``;
``helper`` is an A2A agent whose internal URL (``https://helper.example.com``) a client
must never be pointed at. A server that sends a second answer under the same id (a
retry gone wrong, a replay) used to get its second copy through as it came: the
unfiltered tool list, the card with the agent's own URL.
"""

from __future__ import annotations

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import client_body, response_body, response_headers
from tests.unit.test_agent_route_edges import (
    SSE,
    a2a_post,
    errors_in,
    event,
    log_line,
    sse_answer,
)
from tests.unit.test_mcp_gaps import LIST_REQUEST, LISTED, post

JSON = {"content-type": "application/json"}
_LISTED = orjson.dumps(LISTED)


def _answer(chunks: list[bytes]) -> list[ext.ProcessingRequest]:
    """The upstream's answer body in ``chunks``, the last one ending it."""
    return [response_body(c, end_of_stream=i == len(chunks) - 1) for i, c in enumerate(chunks)]


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([event(_LISTED) + event(_LISTED), b""], id="one-chunk"),
        pytest.param([event(_LISTED), event(_LISTED), b""], id="second-in-a-later-chunk"),
        pytest.param([event(_LISTED), event(_LISTED)[:20], event(_LISTED)[20:], b""],
                     id="second-split-across-chunks"),
    ],
)  # fmt: skip
async def test_a_tool_list_sent_twice_over_sse_reaches_the_client_filtered_both_times(
    config: GatewayConfig, services: Services, chunks: list[bytes]
) -> None:
    seen = await sse_answer(config, services, chunks)
    assert seen.count(b'"echo"') == 2, seen
    assert b"deploy_prod" not in seen, seen


async def test_a_json_batch_answering_one_list_twice_is_filtered_both_times(
    config: GatewayConfig, services: Services
) -> None:
    body = orjson.dumps([LISTED, LISTED])
    chunks = [body[:30], body[30:]]
    answers = await post(config, services, LIST_REQUEST, response_headers(200, JSON),
                         *_answer(chunks))  # fmt: skip
    seen = client_body(chunks, answers)
    assert b"deploy_prod" not in seen, seen
    assert [m["result"]["tools"] for m in orjson.loads(seen)] == [
        [{"name": "echo", "inputSchema": {}}]
    ] * 2


async def test_a_list_under_an_unknown_id_after_the_real_one_is_filtered_too(
    config: GatewayConfig, services: Services
) -> None:
    # The gateway reads ids as numbers, a server may not: "5" is not 5 to the gateway.
    stray = {**LISTED, "id": "5"}
    seen = await sse_answer(config, services, [event(_LISTED), event(orjson.dumps(stray)), b""])
    assert b"deploy_prod" not in seen, seen
    assert log_line(services)["agent"]["tools_hidden"] == 2


async def test_an_extended_card_sent_twice_points_at_the_gateway_both_times(
    config: GatewayConfig, services: Services
) -> None:
    request = orjson.dumps({"jsonrpc": "2.0", "id": 3, "method": "GetExtendedAgentCard"})
    card = {"jsonrpc": "2.0", "id": 3, "result": {"name": "helper", "supportedInterfaces": [
        {"url": "https://helper.example.com/", "protocolBinding": "JSONRPC"}]}}  # fmt: skip
    chunks = [event(orjson.dumps(card)), event(orjson.dumps(card)), b""]
    answers = await a2a_post(config, services, request, response_headers(200, SSE),
                             *_answer(chunks))  # fmt: skip
    seen = client_body(chunks, answers)
    assert seen.count(b"/a2a/helper/") == 2, seen
    assert b"helper.example.com" not in seen, seen


async def test_a_second_copy_the_gateway_cannot_parse_becomes_an_error_without_an_id(
    config: GatewayConfig, services: Services
) -> None:
    # A UTF-8 BOM before the JSON: orjson refuses it, Python's json.loads(bytes) does not.
    unparseable = b"\xef\xbb\xbf" + _LISTED
    seen = await sse_answer(config, services, [event(_LISTED), event(unparseable), b""])
    assert b"deploy_prod" not in seen, seen
    [error] = errors_in(seen)
    assert error["id"] is None and error["error"]["code"] == -32603
