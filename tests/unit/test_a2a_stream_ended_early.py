"""An A2A stream its agent ends before its task settled reaches the client as an error.

An A2A stream (``message/stream``, ``SendStreamingMessage``, ``tasks/resubscribe``,
``SubscribeToTask``) ends once its task reaches a final or interrupted state, or with a
message. One that ended before (the agent's connection closed mid-task, a proxy ending a
cut body cleanly, inside an event or between two) passed as it came: the A2A SDK ended
its iteration without an error, the task's last state (``working``) for where it
stopped, and the request was logged ``completed`` with ``agent.status: ok``, counted
``ok`` in ``aigw_a2a_messages_total``. Now the broken last event is dropped, the stream
ends with the gateway's JSON-RPC error for the request (-32603, "the agent's stream ended
before it was complete"), which the SDK raises, and the log line says ``upstream_error``,
``invalid_upstream_response``, the task's last state kept. A client that leaves before
the task settled is logged ``aborted`` (it was ``ok``), as its line's outcome says.

Each test plays the agent's stream through the processor; what the client receives is
handed to the official A2A SDK's JSON-RPC transport.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from a2a.client.transports.jsonrpc import JsonRpcTransport
from a2a.types.a2a_pb2 import AgentCard, Message, Part, Role, SendMessageRequest
from a2a.utils.errors import InternalError

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import client_body, response_body, response_headers
from tests.unit.test_agent_route_edges import a2a_post, event, log_line
from tests.unit.test_mcp_gaps import A2A_MESSAGE

ENDED_EARLY = "the agent's stream ended before it was complete"
SSE = {"content-type": "text/event-stream"}
STREAMS = ["SendStreamingMessage", "message/stream", "SubscribeToTask", "tasks/resubscribe"]


def answer(result: dict[str, Any]) -> bytes:
    return event(orjson.dumps({"jsonrpc": "2.0", "id": 4, "result": result}))


def status(state: str) -> bytes:
    update = {"taskId": "t-1", "contextId": "c-1", "status": {"state": state}}
    return answer({"statusUpdate": update})


SUBMITTED = answer({"task": {"id": "t-1", "contextId": "c-1",
                             "status": {"state": "TASK_STATE_SUBMITTED"}}})  # fmt: skip
WORKING = status("TASK_STATE_WORKING")
COMPLETED = status("TASK_STATE_COMPLETED")


async def streamed(
    config: GatewayConfig, services: Services, method: str, chunks: list[bytes], *,
    ended: bool = True,
) -> bytes:  # fmt: skip
    """What the client receives of the agent's stream in ``chunks``; ``ended``: the last
    chunk ends it (else the client left after it)."""
    params = A2A_MESSAGE if "essage" in method else {"id": "t-1"}
    request = {"jsonrpc": "2.0", "id": 4, "method": method, "params": params}
    bodies = [
        response_body(chunk, end_of_stream=ended and index == len(chunks) - 1)
        for index, chunk in enumerate(chunks)
    ]
    replies = await a2a_post(
        config, services, orjson.dumps(request), response_headers(200, SSE), *bodies
    )
    return client_body(chunks, replies)


async def sdk_reads(received: bytes) -> list[Any]:
    """The events the A2A SDK's JSON-RPC transport yields of ``received`` (it raises an
    error event as the error it maps)."""

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, content=received)

    async with httpx.AsyncClient(transport=httpx.MockTransport(reply)) as client:
        transport = JsonRpcTransport(client, AgentCard(), "http://gw/a2a/helper/")
        message = Message(role=Role.ROLE_USER, message_id="m1", parts=[Part(text="hi")])
        request = SendMessageRequest(message=message)
        return [found async for found in transport.send_message_streaming(request)]


def a2a_counts(services: Services) -> dict[str, float]:
    """aigw_a2a_messages_total by status."""
    return {
        sample.labels["status"]: sample.value
        for family in services.metrics.registry.collect()
        if family.name == "aigw_a2a_messages"
        for sample in family.samples
        if sample.name == "aigw_a2a_messages_total"
    }


CUT = [
    pytest.param([SUBMITTED, WORKING], id="between-events"),
    pytest.param([SUBMITTED, WORKING[:40]], id="inside-an-event"),
    pytest.param([SUBMITTED + WORKING[:40], WORKING[40:60]], id="inside-an-event-split"),
    pytest.param([b""], id="no-event-at-all"),
]


@pytest.mark.parametrize("method", STREAMS)
@pytest.mark.parametrize("chunks", CUT)
async def test_a_stream_cut_before_its_task_settled_ends_with_the_gateways_error(
    config: GatewayConfig, services: Services, method: str, chunks: list[bytes]
) -> None:
    received = await streamed(config, services, method, chunks)
    whole = [e for e in (SUBMITTED, WORKING) if e in b"".join(chunks)]
    error = {"jsonrpc": "2.0", "id": 4, "error": {
        "code": -32603, "message": ENDED_EARLY,
        "data": {"type": "upstream_error", "code": "invalid_upstream_response"}}}  # fmt: skip
    # The whole events as they came, never the cut one, then the gateway's error.
    assert received == b"".join(whole) + b"data: " + orjson.dumps(error) + b"\n\n"
    with pytest.raises(InternalError, match="ended before it was complete"):
        await sdk_reads(received)
    line = log_line(services)
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert (line["error_code"], line["error_message"]) == ("invalid_upstream_response", ENDED_EARLY)
    agent = line["agent"]
    assert (agent["status"], agent["rpc_error_code"]) == ("upstream_error", -32603)
    if whole:
        # Where it stopped: the last state its whole events named.
        assert agent["task_id"] == "t-1"
        assert agent["task_state"] == ("working" if WORKING in whole else "submitted")


@pytest.mark.parametrize("method", STREAMS)
@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([SUBMITTED, WORKING, COMPLETED], id="completed"),
        pytest.param([SUBMITTED + WORKING[:30], WORKING[30:] + COMPLETED[:50], COMPLETED[50:]],
                     id="completed-split"),
        pytest.param([SUBMITTED, status("TASK_STATE_INPUT_REQUIRED")], id="input-required"),
        pytest.param([answer({"message": {"messageId": "r1", "role": "ROLE_AGENT",
                                          "parts": [{"text": "hi"}]}})], id="a-message"),
        # Its data whole, only the blank line missing: no cut, read and sent with one.
        pytest.param([SUBMITTED, COMPLETED.rstrip(b"\r\n")], id="last-blank-line-missing"),
    ],
)  # fmt: skip
async def test_a_stream_that_settles_reaches_the_client_as_it_came(
    config: GatewayConfig, services: Services, method: str, chunks: list[bytes]
) -> None:
    received = await streamed(config, services, method, chunks)
    came = b"".join(chunks)
    assert received in (came, came + b"\n\n")
    assert len(await sdk_reads(received)) == came.count(b"data: ")
    line = log_line(services)
    assert line["outcome"] == "completed" and line["agent"]["status"] == "ok"


@pytest.mark.parametrize("method", ["SendStreamingMessage", "message/stream"])
async def test_a_cut_message_stream_is_counted_as_an_upstream_error_not_ok(
    config: GatewayConfig, services: Services, method: str
) -> None:
    await streamed(config, services, method, [SUBMITTED, WORKING])
    assert a2a_counts(services) == {"upstream_error": 1.0}


@pytest.mark.parametrize("method", ["SendStreamingMessage", "message/stream"])
async def test_a_client_that_leaves_before_the_task_settled_is_logged_aborted(
    config: GatewayConfig, services: Services, method: str
) -> None:
    await streamed(config, services, method, [SUBMITTED, WORKING], ended=False)
    line = log_line(services)
    assert line["outcome"] == "aborted" and line["agent"]["status"] == "aborted"
    assert line["agent"]["task_state"] == "working"
    assert a2a_counts(services) == {"aborted": 1.0}


async def test_a_client_that_leaves_after_the_task_settled_is_logged_ok(
    config: GatewayConfig, services: Services
) -> None:
    # The answer was whole: a client hanging up now lost nothing.
    await streamed(config, services, "SendStreamingMessage", [SUBMITTED, COMPLETED], ended=False)
    line = log_line(services)
    assert line["agent"]["status"] == "ok" and line["outcome"] == "completed"


async def test_a_message_send_answered_with_a_working_task_is_no_cut(
    config: GatewayConfig, services: Services
) -> None:
    # A non-streaming send may return a task still working (the client polls it).
    request = {"jsonrpc": "2.0", "id": 4, "method": "SendMessage", "params": A2A_MESSAGE}
    task = {"jsonrpc": "2.0", "id": 4, "result": {"task": {
        "id": "t-1", "contextId": "c-1", "status": {"state": "TASK_STATE_WORKING"}}}}  # fmt: skip
    body = orjson.dumps(task)
    replies = await a2a_post(
        config, services, orjson.dumps(request),
        response_headers(200, {"content-type": "application/json"}), response_body(body, True),
    )  # fmt: skip
    assert client_body([body], replies) == body
    line = log_line(services)
    assert line["outcome"] == "completed" and line["agent"]["task_state"] == "working"
