"""An A2A agent's answer is its request's, whatever id it carries.

A2A takes no batches: a POST holds one request, and the A2A SDK reads the answer's
``result`` or ``error`` without looking at its id. An agent that answers under another
id (its own spelling of the client's, null on an error, none at all) works for the
client. The gateway matched answers by id: such a stream, settled, still ended with the
gateway's "ended before it was complete" error, which the SDK raised after the task had
completed; the message was logged ``upstream_error`` (or ``forwarded``, the agent's own
error unseen) and an extended card failed closed with -32603. Now each answer is the
request's: the stream reaches the client as it came, the task and the agent's error are
logged and counted, the card is rewritten.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from a2a.utils.errors import InternalError

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import client_body, response_body, response_headers
from tests.unit.test_a2a_stream_ended_early import SSE, a2a_counts, sdk_reads
from tests.unit.test_agent_route_edges import a2a_post, event, log_line
from tests.unit.test_mcp_gaps import A2A_MESSAGE

STREAM_REQUEST = {"jsonrpc": "2.0", "id": "req-4", "method": "SendStreamingMessage",
                  "params": A2A_MESSAGE}  # fmt: skip


def answer(result: dict[str, Any], **envelope: Any) -> bytes:
    return event(orjson.dumps({"jsonrpc": "2.0", **envelope, "result": result}))


def stream(**envelope: Any) -> list[bytes]:
    task = {"id": "t-1", "contextId": "c-1", "status": {"state": "TASK_STATE_SUBMITTED"}}
    done = {"taskId": "t-1", "contextId": "c-1", "status": {"state": "TASK_STATE_COMPLETED"}}
    return [answer({"task": task}, **envelope), answer({"statusUpdate": done}, **envelope)]


@pytest.mark.parametrize(
    "envelope",
    [
        pytest.param({"id": 4}, id="a-number-for-the-clients-string"),
        pytest.param({"id": "another"}, id="another-string"),
        pytest.param({"id": None}, id="null"),
        pytest.param({}, id="no-id-at-all"),
    ],
)
async def test_a_stream_answered_under_another_id_reaches_the_client_as_it_came(
    config: GatewayConfig, services: Services, envelope: dict[str, Any]
) -> None:
    chunks = stream(**envelope)
    bodies = [response_body(chunks[0], False), response_body(chunks[1], True)]
    replies = await a2a_post(
        config, services, orjson.dumps(STREAM_REQUEST), response_headers(200, SSE), *bodies
    )
    received = client_body(chunks, replies)
    assert received == b"".join(chunks)  # no error of the gateway's after the task
    read = await sdk_reads(received)
    assert len(read) == 2  # the SDK read the task and its completion, and raised nothing
    line = log_line(services)
    assert (line["outcome"], line["error_code"]) == ("completed", None)
    agent = line["agent"]
    assert (agent["status"], agent["task_id"], agent["task_state"]) == ("ok", "t-1", "completed")
    assert a2a_counts(services) == {"ok": 1.0}


async def test_an_agents_error_under_a_null_id_is_logged_as_its_error(
    config: GatewayConfig, services: Services
) -> None:
    crashed = {"code": -32603, "message": "agent crashed"}
    failed = event(orjson.dumps({"jsonrpc": "2.0", "id": None, "error": crashed}))
    replies = await a2a_post(
        config, services, orjson.dumps(STREAM_REQUEST), response_headers(200, SSE),
        response_body(failed, True),
    )  # fmt: skip
    received = client_body([failed], replies)
    assert received == failed  # the agent's error alone, not the gateway's after it
    with pytest.raises(InternalError, match="agent crashed"):
        await sdk_reads(received)
    agent = log_line(services)["agent"]
    assert (agent["status"], agent["rpc_error_code"]) == ("rpc_error", -32603)
    assert a2a_counts(services) == {"rpc_error": 1.0}


async def test_a_message_answered_under_another_id_is_logged_with_its_task(
    config: GatewayConfig, services: Services
) -> None:
    request = {"jsonrpc": "2.0", "id": "req-4", "method": "SendMessage", "params": A2A_MESSAGE}
    task = {"id": "t-9", "contextId": "c-9", "status": {"state": "TASK_STATE_COMPLETED"}}
    body = orjson.dumps({"jsonrpc": "2.0", "id": 4, "result": {"task": task}})
    await a2a_post(
        config, services, orjson.dumps(request),
        response_headers(200, {"content-type": "application/json"}), response_body(body, True),
    )  # fmt: skip
    agent = log_line(services)["agent"]
    assert (agent["status"], agent["task_id"], agent["task_state"]) == ("ok", "t-9", "completed")


async def test_an_extended_card_answered_under_another_id_is_rewritten_not_refused(
    config: GatewayConfig, services: Services
) -> None:
    request = {"jsonrpc": "2.0", "id": "req-4", "method": "GetExtendedAgentCard"}
    card = {"name": "helper", "supportedInterfaces": [
        {"url": "https://helper.example.com/", "protocolBinding": "JSONRPC"}]}  # fmt: skip
    body = orjson.dumps({"jsonrpc": "2.0", "id": 4, "result": card})
    replies = await a2a_post(
        config, services, orjson.dumps(request),
        response_headers(200, {"content-type": "application/json"}), response_body(body, True),
    )  # fmt: skip
    sent = orjson.loads(client_body([body], replies))
    assert "error" not in sent
    assert sent["result"]["supportedInterfaces"][0]["url"] == "http://gateway/a2a/helper/"
    assert log_line(services)["agent"]["status"] == "ok"
