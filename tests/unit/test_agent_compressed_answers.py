"""Agent answers a server compressed although the gateway asked for no encoding.

Bob (key team2, group marketing) may not see ``deploy_*`` on the MCP server ``tools``. The
gateway drops the client's ``accept-encoding`` so that it can read answers, but a server
(or its middleware) may compress anyway. Before, a compressed answer was not read: a tool
list the body asked for became a JSON-RPC error, and the answer to any other POST (a tool
call's, a ping's) passed as it came, a stray tool list in it (the answer to Bob's pending
``tools/list``, sent down this stream) reaching him whole, ``deploy_prod`` included. The
server stream was refused (502), and A2A answers were passed on unread: cards kept the
agent's internal URLs, extended cards failed, tasks were logged ``forwarded``.

Now gzip and deflate (zlib's format or raw) are decoded as they stream, read and
filtered like any answer, and reach the client uncompressed, ``content-encoding`` and
``content-length`` removed. An encoding the gateway cannot decode (br, zstd) fails closed
on a server whose tools rules hide: each request of the body gets -32603. A chunk never
decodes past the largest answer the gateway holds: a decompression bomb ends the answer.
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import (
    client_body,
    processor_for,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_agent_route_edges import HELPER, a2a_post, event, log_line
from tests.unit.test_agent_tool_call_strays import CALL, RESULT, STRAY, messages
from tests.unit.test_agents import with_agents
from tests.unit.test_mcp_gaps import A2A_MESSAGE, LIST_REQUEST, LISTED, post

SSE_TYPE = "text/event-stream"
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
PONG = {"jsonrpc": "2.0", "id": 1, "result": {}}


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data)


def zlib_deflated(data: bytes) -> bytes:
    return zlib.compress(data)


def raw_deflated(data: bytes) -> bytes:
    encoder = zlib.compressobj(wbits=-15)
    return encoder.compress(data) + encoder.flush()


def two_members(data: bytes) -> bytes:
    """gzip in two members, as a proxy that compresses each flush writes it."""
    half = len(data) // 2
    return gzip.compress(data[:half]) + gzip.compress(data[half:])


# The encoding a server names, and how it compresses.
ENCODINGS = [
    pytest.param("gzip", gzipped, id="gzip"),
    pytest.param("x-gzip", gzipped, id="x-gzip"),
    pytest.param("GZIP", two_members, id="gzip-two-members"),
    pytest.param("deflate", zlib_deflated, id="deflate-zlib"),
    pytest.param("deflate", raw_deflated, id="deflate-raw"),
]


def split(data: bytes, size: int = 7) -> list[bytes]:
    """The compressed body in small chunks, as it may stream."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


async def answered(
    config: GatewayConfig,
    services: Services,
    body: Any,
    headers: dict[str, str],
    chunks: list[bytes],
    *,
    method: str = "POST",
) -> tuple[bytes, ext.ProcessingResponse]:
    """What Bob's client receives of the answer sent in ``chunks``, and the gateway's
    answer to its headers."""
    bodies = [response_body(c, end_of_stream=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    replies = await post(
        config, services, body, response_headers(200, headers), *bodies, method=method
    )
    [head] = [r for r in replies if r.WhichOneof("response") == "response_headers"]
    return client_body(chunks, replies), head


def removed(head: ext.ProcessingResponse) -> set[str]:
    return set(head.response_headers.response.header_mutation.remove_headers)


def sse(*documents: Any) -> bytes:
    return b"".join(event(orjson.dumps(document)) for document in documents)


# --- tool lists and stray lists, decoded and filtered ---------------------------------------


@pytest.mark.parametrize(("encoding", "compress"), ENCODINGS)
@pytest.mark.parametrize("sse_answer", [False, True], ids=["json", "sse"])
async def test_a_compressed_tool_list_reaches_the_client_filtered_and_uncompressed(
    config: GatewayConfig, services: Services, encoding: str, compress: Any, sse_answer: bool
) -> None:
    plain = sse(LISTED) if sse_answer else orjson.dumps(LISTED)
    headers = {"content-type": SSE_TYPE if sse_answer else "application/json",
               "content-encoding": encoding, "content-length": "99"}  # fmt: skip
    seen, head = await answered(config, services, LIST_REQUEST, headers, split(compress(plain)))
    assert {"content-encoding", "content-length"} <= removed(head)
    [listed] = messages(seen, sse_answer)
    assert [tool["name"] for tool in listed["result"]["tools"]] == ["echo"]
    agent = log_line(services)["agent"]
    assert (agent["status"], agent["tools_listed"], agent["tools_hidden"]) == ("ok", 1, 1)


@pytest.mark.parametrize("sse_answer", [False, True], ids=["json", "sse"])
async def test_a_compressed_batch_answer_has_its_list_filtered_and_its_pong_kept(
    config: GatewayConfig, services: Services, sse_answer: bool
) -> None:
    both = [LISTED, PONG]
    plain = sse(both) if sse_answer else orjson.dumps(both)
    headers = {"content-type": SSE_TYPE if sse_answer else "application/json",
               "content-encoding": "gzip"}  # fmt: skip
    seen, _ = await answered(config, services, [LIST_REQUEST, PING], headers, split(gzipped(plain)))
    assert b"deploy_prod" not in seen
    read = messages(seen, sse_answer)
    assert PONG in read and [t["name"] for t in read[0]["result"]["tools"]] == ["echo"]


@pytest.mark.parametrize(
    ("body", "own"),
    [pytest.param(CALL, RESULT, id="tool-call"), pytest.param(PING, PONG, id="ping")],
)
@pytest.mark.parametrize("sse_answer", [False, True], ids=["json", "sse"])
async def test_a_stray_list_in_a_compressed_answer_to_another_post_is_filtered(
    config: GatewayConfig, services: Services, body: Any, own: Any, sse_answer: bool
) -> None:
    # The leak: Bob's pending tools/list 9 answered down his tool call's (or ping's)
    # gzip stream went through unread, deploy_prod and all.
    plain = sse(own, STRAY) if sse_answer else orjson.dumps([own, STRAY])
    headers = {"content-type": SSE_TYPE if sse_answer else "application/json",
               "content-encoding": "gzip"}  # fmt: skip
    seen, head = await answered(config, services, body, headers, split(gzipped(plain), 11))
    assert b"deploy_prod" not in seen, seen
    assert "content-encoding" in removed(head)
    read = messages(seen, sse_answer)
    assert own in read
    assert {"jsonrpc": "2.0", "id": 9, "result": {"tools": [STRAY["result"]["tools"][0]]}} in read
    assert log_line(services)["agent"]["tools_hidden"] == 1


async def test_a_compressed_tool_calls_outcome_is_read_not_logged_as_forwarded(
    config: GatewayConfig, services: Services
) -> None:
    failed = {**RESULT, "result": {"content": [], "isError": True}}
    headers = {"content-type": "application/json", "content-encoding": "deflate"}
    seen, _ = await answered(config, services, CALL, headers, [zlib_deflated(orjson.dumps(failed))])
    assert orjson.loads(seen) == failed
    assert log_line(services)["agent"]["status"] == "tool_error"


# --- what cannot be decoded ------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, br", "compress"])
@pytest.mark.parametrize(
    ("body", "ids"),
    [
        pytest.param(CALL, 1, id="tool-call"),
        pytest.param(LIST_REQUEST, 5, id="tools-list"),
        pytest.param([LIST_REQUEST, PING], [5, 1], id="batch"),
    ],
)
async def test_an_encoding_the_gateway_cannot_decode_fails_closed_on_a_filtered_server(
    config: GatewayConfig, services: Services, encoding: str, body: Any, ids: Any
) -> None:
    headers = {"content-type": "application/json", "content-encoding": encoding}
    opaque = b"\x0b\x80" + orjson.dumps([RESULT, STRAY])  # stands for br's bytes
    replies = await post(
        config, services, body, response_headers(200, headers), response_body(opaque, True)
    )
    [immediate] = [r.immediate_response for r in replies if r.HasField("immediate_response")]
    assert immediate.status.code == 200
    error = orjson.loads(immediate.body)
    errors = error if isinstance(error, list) else [error]
    assert [e["id"] for e in errors] == (ids if isinstance(ids, list) else [ids])
    assert {e["error"]["code"] for e in errors} == {-32603}
    line = log_line(services)
    assert line["agent"]["status"] == "upstream_error" and line["outcome"] == "rejected"


async def test_a_decompression_bomb_ends_the_answer_without_exhausting_memory(
    config: GatewayConfig, services: Services
) -> None:
    # 256 MiB of spaces in a quarter of a MiB of gzip: decoded whole, it would take the
    # gateway's memory. A chunk decodes to at most the 16 MiB an answer may hold; past it
    # the answer ends, and the list it should have been fails closed.
    encoder = zlib.compressobj(wbits=31)
    parts = [encoder.compress(b" " * (1 << 20)) for _ in range(256)]
    bomb = b"".join(parts) + encoder.flush()
    assert len(bomb) < 1 << 20
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    tracemalloc.start()
    try:
        seen, _ = await answered(config, services, LIST_REQUEST, headers, [bomb, b""])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 96 << 20, peak
    error = orjson.loads(seen)
    assert error["id"] == 5 and error["error"]["code"] == -32603


async def test_a_stream_that_breaks_before_its_list_fails_closed_and_sends_nothing_after(
    config: GatewayConfig, services: Services
) -> None:
    good = zlib.compressobj(wbits=31)
    head = good.compress(b": priming\n\n") + good.flush(zlib.Z_SYNC_FLUSH)
    chunks = [head, b"\x00garbage not deflate" * 4, gzipped(sse(LISTED))]
    headers = {"content-type": SSE_TYPE, "content-encoding": "gzip"}
    seen, _ = await answered(config, services, LIST_REQUEST, headers, chunks)
    assert b"deploy_prod" not in seen and b"echo" not in seen
    assert seen.startswith(b": priming\n\n")
    [error] = messages(seen, True)
    assert error["id"] == 5 and error["error"]["code"] == -32603


# --- the server stream ------------------------------------------------------------------------


async def test_a_compressed_server_stream_is_filtered_not_refused(
    config: GatewayConfig, services: Services
) -> None:
    replayed = {**LISTED, "id": 99}
    headers = {"content-type": SSE_TYPE, "content-encoding": "gzip"}
    encoder = zlib.compressobj(wbits=31)
    # A stream: each event flushed as it is written, the stream still open.
    chunks = [encoder.compress(sse(replayed)) + encoder.flush(zlib.Z_SYNC_FLUSH)]
    replies = await post(
        config, services, None, response_headers(200, headers),
        response_body(chunks[0], False), method="GET",
    )  # fmt: skip
    seen = client_body(chunks, replies)
    [listed] = messages(seen, True)
    assert [tool["name"] for tool in listed["result"]["tools"]] == ["echo"]


async def test_a_server_stream_in_br_is_still_refused(
    config: GatewayConfig, services: Services
) -> None:
    headers = {"content-type": SSE_TYPE, "content-encoding": "br"}
    replies = await post(
        config, services, None, response_headers(200, headers),
        response_body(b"\x0b\x80opaque", False), method="GET",
    )  # fmt: skip
    [immediate] = [r.immediate_response for r in replies if r.HasField("immediate_response")]
    assert immediate.status.code == 502
    assert orjson.loads(immediate.body)["error"]["code"] == -32603


# --- A2A ----------------------------------------------------------------------------------------


async def test_a_compressed_agent_card_points_at_the_gateway(
    config: GatewayConfig, services: Services
) -> None:
    card = orjson.dumps({"name": "helper", "url": "https://helper.example.com/"})
    processor = processor_for(with_agents(config), services)
    chunks = split(gzipped(card), 9)
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    replies = await run_stream(
        processor,
        [
            request_headers(HELPER + ".well-known/agent-card.json", method="GET"),
            response_headers(200, headers),
            *(response_body(c, i == len(chunks) - 1) for i, c in enumerate(chunks)),
        ],
    )
    served = orjson.loads(client_body(chunks, replies))
    assert served["url"] == "http://gateway/a2a/helper/"


async def test_a_compressed_extended_card_is_rewritten_not_refused(
    config: GatewayConfig, services: Services
) -> None:
    request = {"jsonrpc": "2.0", "id": 3, "method": "GetExtendedAgentCard"}
    answer = {"jsonrpc": "2.0", "id": 3, "result": {"name": "helper", "supportedInterfaces": [
        {"url": "https://helper.example.com/", "protocolBinding": "JSONRPC"}]}}  # fmt: skip
    chunks = [gzipped(orjson.dumps(answer))]
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    replies = await a2a_post(
        config, services, orjson.dumps(request), response_headers(200, headers),
        response_body(chunks[0], True),
    )  # fmt: skip
    served = orjson.loads(client_body(chunks, replies))
    assert served["result"]["supportedInterfaces"][0]["url"] == "http://gateway/a2a/helper/"


async def test_a_compressed_message_stream_logs_its_task(
    config: GatewayConfig, services: Services
) -> None:
    request = {"jsonrpc": "2.0", "id": 4, "method": "SendStreamingMessage", "params": A2A_MESSAGE}
    status = {"taskId": "t-1", "contextId": "c-1", "status": {"state": "TASK_STATE_COMPLETED"}}
    plain = sse({"jsonrpc": "2.0", "id": 4, "result": {"statusUpdate": status}})
    chunks = split(gzipped(plain), 13)
    headers = {"content-type": SSE_TYPE, "content-encoding": "gzip"}
    replies = await a2a_post(
        config, services, orjson.dumps(request), response_headers(200, headers),
        *(response_body(c, i == len(chunks) - 1) for i, c in enumerate(chunks)),
    )  # fmt: skip
    assert client_body(chunks, replies) == plain
    agent = log_line(services)["agent"]
    assert (agent["status"], agent["task_id"], agent["task_state"]) == ("ok", "t-1", "completed")
