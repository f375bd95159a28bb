"""MCP sessions and A2A tasks are the caller's who opened them.

Every caller reaches an agent server with the gateway's one credential, so a session or
task id was all it took: Bob, holding the ``Mcp-Session-Id`` Alice's client got (a
shared log, a screenshot), could send requests in her session, open its server stream or
end it; holding her task's id, read, cancel or continue her task. Now the gateway records
who opened each and answers anyone else as the server answers an id it does not know.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio.connection import AbstractConnection
from valkey.asyncio import Valkey

from extproc.config import GatewayConfig
from extproc.config.quota_model import StoreFailure
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.store.agent_owners import AgentOwners, binding_digest
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
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
from tests.unit.test_a2a_stream_ended_early import SSE
from tests.unit.test_agent_route_edges import event
from tests.unit.test_agents import AGENT_ROUTES, SERVERS, with_agents
from tests.unit.test_alerts_review import alert, firing, promtool_test, scraped_around
from tests.unit.test_envoy_bootstrap import gateway
from tests.unit.test_mcp_gaps import A2A_MESSAGE

ALICE = {"authorization": "Bearer team1-key"}
BOB = {"authorization": "Bearer team2-key"}
SESSION = "5f1c0a9e7b6d4c2a8e3f1b0d9c8a7e6f"
TASK = "3b8e2f7a-alice-task"
INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


@pytest.fixture
async def store_client(valkey: EmbeddedValkey) -> AsyncIterator[Valkey]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def bound(store_client: Valkey) -> Services:
    return Services(GatewayMetrics(), MemoryLog(), agent_owners=AgentOwners(store_client, "test:"))


def servers_with(config: GatewayConfig, **settings: Any) -> GatewayConfig:
    """The agent config of ``with_agents``, each server with ``settings``."""
    agents = with_agents(config)
    servers = [server.model_copy(update=settings) for server in agents.agents.servers]
    return agents.model_copy(
        update={"agents": agents.agents.model_copy(update={"servers": servers})}
    )


def lines(services: Services) -> list[dict[str, Any]]:
    return services.access_log.lines()  # type: ignore[attr-defined, no-any-return]


def refusals(services: Services, server: str, kind: str) -> float:
    counter = services.metrics.agents.binding_refusals
    return float(counter.labels(server, kind)._value.get())


async def mcp(
    config: GatewayConfig,
    services: Services,
    who: dict[str, str],
    body: dict[str, Any] | None = PING,
    method: str = "POST",
    session: str | None = SESSION,
    *answer: Any,
) -> list[Any]:
    processor = processor_for(config, services)
    sent = {**who, "mcp-session-id": session} if session else who
    messages = [request_headers("/mcp", method=method, headers=sent)]
    if body is not None:
        messages.append(request_body(orjson.dumps(body)))
    return await run_stream(processor, [*messages, *answer])


async def alice_opens_a_session(config: GatewayConfig, services: Services) -> None:
    opened = response_headers(200, {"mcp-session-id": SESSION})
    answer = response_body(orjson.dumps({"jsonrpc": "2.0", "id": 0, "result": {}}))
    replies = await mcp(config, services, ALICE, INITIALIZE, "POST", None, opened, answer)
    assert not any(reply.HasField("immediate_response") for reply in replies)


def refused_as_unknown_session(replies: list[Any]) -> None:
    refused = replies[0].immediate_response
    assert refused.status.code == 404
    error = orjson.loads(refused.body)
    assert error["error"] == {"code": -32600, "message": "Session not found"}


async def test_bob_is_refused_alices_session_as_unknown_and_alice_goes_on(
    config: GatewayConfig, bound: Services, store_client: Valkey
) -> None:
    agents = with_agents(config)
    await alice_opens_a_session(agents, bound)
    for method, body in (("POST", PING), ("GET", None), ("DELETE", None)):
        refused_as_unknown_session(await mcp(agents, bound, BOB, body, method))
    line = lines(bound)[-1]
    assert (line["user_id"], line["http_status_code"], line["outcome"]) == ("bob", 404, "rejected")
    assert (line["agent"]["status"], line["agent"]["kind"]) == ("not_owner", "session_end")
    assert refusals(bound, "tools", "session") == 3
    # Alice's request on her session goes upstream.
    replies = await mcp(agents, bound, ALICE)
    assert not any(reply.HasField("immediate_response") for reply in replies)
    # The store names the session by a digest: whoever lists its keys learns no id.
    keys = [key.decode() for key in await store_client.keys("*")]
    assert keys and not any(SESSION in key for key in keys)


async def test_a_session_the_gateway_never_saw_opened_is_the_first_callers(
    config: GatewayConfig, bound: Services
) -> None:
    # Opened before the upgrade (or its record expired): Bob uses it first, it is his.
    agents = with_agents(config)
    assert not any(r.HasField("immediate_response") for r in await mcp(agents, bound, BOB))
    refused_as_unknown_session(await mcp(agents, bound, ALICE))


async def test_another_process_knows_the_owner_from_the_store(
    config: GatewayConfig, bound: Services, store_client: Valkey
) -> None:
    agents = with_agents(config)
    await alice_opens_a_session(agents, bound)
    replica = Services(
        GatewayMetrics(), MemoryLog(), agent_owners=AgentOwners(store_client, "test:")
    )
    refused_as_unknown_session(await mcp(agents, replica, BOB))


async def test_a_known_binding_needs_no_store(config: GatewayConfig, bound: Services) -> None:
    # A busy session pays no round trip per request: with the store gone, this process
    # still keeps Alice's session to her.
    agents = with_agents(config)
    await alice_opens_a_session(agents, bound)
    assert bound.agent_owners is not None
    bound.agent_owners._client = connect("redis://127.0.0.1:9", 0.2)
    refused_as_unknown_session(await mcp(agents, bound, BOB))
    assert not any(r.HasField("immediate_response") for r in await mcp(agents, bound, ALICE))


async def test_a_server_that_shares_sessions_by_design_binds_none(
    config: GatewayConfig, bound: Services
) -> None:
    shared = servers_with(config, bind_to_caller=False)
    await alice_opens_a_session(shared, bound)
    assert not any(r.HasField("immediate_response") for r in await mcp(shared, bound, BOB))


@pytest.mark.parametrize("policy", [StoreFailure.FAIL_CLOSED, StoreFailure.FAIL_OPEN])
async def test_a_store_that_does_not_answer_follows_on_store_failure(
    config: GatewayConfig, policy: StoreFailure
) -> None:
    agents = with_agents(config)
    agents = agents.model_copy(
        update={"quotas": agents.quotas.model_copy(update={"on_store_failure": policy})}
    )
    down = AgentOwners(connect("redis://127.0.0.1:9", 0.2), "test:")
    services = Services(GatewayMetrics(), MemoryLog(), agent_owners=down)
    replies = await mcp(agents, services, BOB)
    errors = services.metrics.store_errors.labels("agent_owner_lookup")._value.get()
    assert errors == 1
    if policy is StoreFailure.FAIL_OPEN:
        assert not any(reply.HasField("immediate_response") for reply in replies)
        return
    refused = replies[0].immediate_response
    assert refused.status.code == 503
    error = orjson.loads(refused.body)["error"]
    assert error["data"]["code"] == "agent_owner_store_unavailable"
    assert lines(services)[-1]["agent"]["status"] == "unavailable"


# --- A2A tasks -------------------------------------------------------------------------------

HELPER = "/a2a/helper/"


def rpc(method: str, params: dict[str, Any], request_id: Any = 7) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


async def a2a(
    config: GatewayConfig, services: Services, who: dict[str, str], body: bytes, *answer: Any
) -> list[Any]:
    processor = processor_for(config, services)
    messages = [request_headers(HELPER, headers=who), request_body(body)]
    return await run_stream(processor, [*messages, *answer])


async def alice_creates_a_task(config: GatewayConfig, services: Services) -> None:
    task = {"id": TASK, "contextId": "c-1", "status": {"state": "TASK_STATE_SUBMITTED"}}
    answer = event(orjson.dumps({"jsonrpc": "2.0", "id": 7, "result": {"task": task}}))
    replies = await a2a(
        config, services, ALICE, rpc("SendStreamingMessage", A2A_MESSAGE),
        response_headers(200, SSE), response_body(answer, True),
    )  # fmt: skip
    assert not any(reply.HasField("immediate_response") for reply in replies)


def refused_as_unknown_task(replies: list[Any], request_id: Any = 7) -> None:
    refused = replies[1].immediate_response
    assert refused.status.code == 200
    # The agent's own TaskNotFoundError, to the letter: Bob cannot tell it from a task
    # that does not exist.
    error = orjson.loads(refused.body)
    assert error == {"jsonrpc": "2.0", "id": request_id,
                     "error": {"code": -32001, "message": "Task not found"}}  # fmt: skip


CONTINUED = {"message": {**A2A_MESSAGE["message"], "taskId": TASK}}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(rpc("GetTask", {"id": TASK}), id="GetTask"),
        pytest.param(rpc("CancelTask", {"id": TASK}), id="CancelTask"),
        pytest.param(rpc("SubscribeToTask", {"id": TASK}), id="SubscribeToTask"),
        pytest.param(rpc("tasks/get", {"id": TASK}), id="tasks/get"),
        pytest.param(rpc("tasks/resubscribe", {"id": TASK}), id="tasks/resubscribe"),
        pytest.param(
            rpc("CreateTaskPushNotificationConfig", {"taskId": TASK, "url": "http://bob/"}),
            id="CreateTaskPushNotificationConfig",
        ),
        pytest.param(
            rpc("GetTaskPushNotificationConfig", {"task_id": TASK, "id": "cfg"}),
            id="GetTaskPushNotificationConfig-proto-spelling",
        ),
        pytest.param(
            rpc("tasks/pushNotificationConfig/set", {"taskId": TASK, "pushNotificationConfig": {}}),
            id="tasks/pushNotificationConfig/set",
        ),
        pytest.param(rpc("SendMessage", CONTINUED), id="SendMessage-continuing"),
    ],
)
async def test_bob_is_refused_alices_task_as_unknown_and_alice_goes_on(
    config: GatewayConfig, bound: Services, body: bytes
) -> None:
    agents = with_agents(config)
    await alice_creates_a_task(agents, bound)
    refused_as_unknown_task(await a2a(agents, bound, BOB, body))
    line = lines(bound)[-1]
    assert (line["user_id"], line["outcome"], line["agent"]["status"]) == (
        "bob", "rejected", "not_owner",
    )  # fmt: skip
    assert refusals(bound, "helper", "task") == 1
    replies = await a2a(agents, bound, ALICE, body)
    assert not any(reply.HasField("immediate_response") for reply in replies)


async def test_a_task_the_gateway_never_saw_created_is_the_first_callers(
    config: GatewayConfig, bound: Services
) -> None:
    agents = with_agents(config)
    get = rpc("GetTask", {"id": "older-task"})
    assert not any(r.HasField("immediate_response") for r in await a2a(agents, bound, BOB, get))
    refused_as_unknown_task(await a2a(agents, bound, ALICE, get))


async def test_an_agent_that_shares_tasks_by_design_binds_none(
    config: GatewayConfig, bound: Services
) -> None:
    shared = servers_with(config, bind_to_caller=False)
    await alice_creates_a_task(shared, bound)
    get = rpc("GetTask", {"id": TASK})
    assert not any(r.HasField("immediate_response") for r in await a2a(shared, bound, BOB, get))


# --- the alert ------------------------------------------------------------------------------


async def test_bobs_first_try_on_alices_session_raises_the_alert(
    config: GatewayConfig, bound: Services, tmp_path: Path
) -> None:
    # Scraped once a minute from the gateway's own registry; at minute 10, Bob's try.
    agents = with_agents(config)
    await alice_opens_a_session(agents, bound)
    timeline = await scraped_around(bound.metrics.registry, lambda: mcp(agents, bound, BOB))
    summary = (
        "A caller used an MCP session or A2A task (session) of another caller on agent"
        " server tools in the last hour (refused)"
    )
    expected = alert(summary, severity="warning", server="tools", kind="session")
    expected["exp_annotations"]["description"] = (
        "The log lines with agent.status not_owner name the caller who tried, and"
        " agent.session the session's digest. A server whose sessions or tasks are shared"
        " by design takes bind_to_caller: false (docs/agents.md, Sessions and tasks belong"
        " to their caller)."
    )
    name = "AigwAgentSessionOrTaskOfAnotherCaller"
    failed = promtool_test(tmp_path, timeline, [firing(name, 9), firing(name, 12, expected)])
    assert not failed, failed


@pytest.mark.parametrize(
    "body",
    [
        # A server keeping the first of two equal keys would read Alice's task.
        pytest.param(
            b'{"jsonrpc":"2.0","id":7,"method":"GetTask","params":{"id":"%s","id":"bobs"}}'
            % TASK.encode(),
            id="id-twice",
        ),
        # Go's encoding/json matches keys in any case and keeps the last: Alice's task.
        pytest.param(
            b'{"jsonrpc":"2.0","id":7,"method":"GetTask","params":{"id":"bobs","ID":"%s"}}'
            % TASK.encode(),
            id="ID",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":7,"method":"ListTaskPushNotificationConfigs",'
            b'"params":{"taskId":"bobs","TaskID":"%s"}}' % TASK.encode(),
            id="TaskID",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":7,"method":"SendMessage","params":{"message":{"role":'
            b'"ROLE_USER","messageId":"m","parts":[],"taskId":"bobs","TaskID":"%s"}}}'
            % TASK.encode(),
            id="message-TaskID",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":7,"method":"SendMessage","params":{"message":{"role":'
            b'"ROLE_USER","messageId":"m","parts":[]},"Message":{"role":"ROLE_USER",'
            b'"messageId":"m","parts":[],"taskId":"%s"}}}' % TASK.encode(),
            id="Message",
        ),
    ],
)
async def test_a_task_named_twice_or_in_another_case_is_refused_before_any_server(
    config: GatewayConfig, bound: Services, body: bytes
) -> None:
    agents = with_agents(config)
    await alice_creates_a_task(agents, bound)
    refused = (await a2a(agents, bound, BOB, body))[1].immediate_response
    assert refused.status.code == 400
    assert orjson.loads(refused.body)["error"]["code"] == -32600


def test_a_binding_ttl_under_a_minute_is_refused_at_load_by_its_path() -> None:
    listed = SERVERS["servers"]
    servers = [{**listed[0], "binding_ttl_s": 10}, *listed[1:]]
    with pytest.raises(ValueError, match=r"agents\.servers\.0\.binding_ttl_s"):
        gateway(routes=AGENT_ROUTES, agents={**SERVERS, "servers": servers})


# --- one round trip, and the records of ended sessions ----------------------------------------


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many writes the store's connections made: one per round trip (a pipeline is
    one write of all its commands)."""
    writes = [0]
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        writes[0] += 1
        await send(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return writes


def limited(config: GatewayConfig, per_day: int) -> GatewayConfig:
    """``with_agents`` with each key allowed ``per_day`` messages to the A2A agent."""
    agents = with_agents(config)
    rule = {"name": "daily", "subject": "api_key", "servers": ["helper"],
            "requests_per_day": per_day}  # fmt: skip
    limits = agents.agents.model_validate(
        {**agents.agents.model_dump(mode="json"), "limits": [rule]}
    )
    return agents.model_copy(update={"agents": limits})


async def counted_messages(store_client: Valkey, key: str) -> int:
    """What the key's counters of the ``daily`` rule hold."""
    counters = await store_client.keys(f"test:q:*{key}*:daily:r:*")
    return sum([int(await store_client.get(counter) or 0) for counter in counters])


def replica(quota_store: QuotaStore, store_client: Valkey) -> Services:
    """Another process of the gateway on the same store: it has seen no binding."""
    return Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store,
                    agent_owners=AgentOwners(store_client, "test:"))  # fmt: skip


async def test_a_message_continuing_a_task_is_checked_and_counted_in_one_round_trip(
    config: GatewayConfig, store_client: Valkey, quota_store: QuotaStore, round_trips: list[int]
) -> None:
    # Another replica (or this one after its cache let the binding go) gets the message
    # continuing Alice's task: the owner's claim and the limit's reservation go out in one
    # round trip, not one after the other.
    agents = limited(config, per_day=2)
    await alice_creates_a_task(agents, replica(quota_store, store_client))
    continued = rpc("SendMessage", CONTINUED)

    before = round_trips[0]
    replies = await a2a(agents, replica(quota_store, store_client), ALICE, continued)
    assert not any(reply.HasField("immediate_response") for reply in replies)
    assert round_trips[0] - before == 1
    assert await counted_messages(store_client, "team1") == 2

    replica_b = replica(quota_store, store_client)
    before = round_trips[0]
    refused_as_unknown_task(await a2a(agents, replica_b, BOB, continued))
    assert round_trips[0] - before == 1
    # Refused as another caller's: counted in no limit, not even for a moment.
    assert await counted_messages(store_client, "team2") == 0
    assert lines(replica_b)[-1]["agent"]["status"] == "not_owner"
    # Bob still has both his messages of the day.
    fresh = rpc("SendMessage", A2A_MESSAGE)
    for _ in range(2):
        replies = await a2a(agents, replica_b, BOB, fresh)
        assert not any(reply.HasField("immediate_response") for reply in replies)
    over = (await a2a(agents, replica_b, BOB, fresh))[1].immediate_response
    assert orjson.loads(over.body)["error"]["code"] == -32029


async def test_a_session_its_server_ended_leaves_no_record_in_the_store(
    config: GatewayConfig, bound: Services, store_client: Valkey
) -> None:
    agents = with_agents(config)
    await alice_opens_a_session(agents, bound)
    assert await store_client.keys("test:agent_owner:*")
    # The server refuses the DELETE (it does not let clients end sessions): the session
    # lives on, and so does its record.
    refused = response_headers(405, {})
    await mcp(agents, bound, ALICE, None, "DELETE", SESSION, refused)
    assert await store_client.keys("test:agent_owner:*")
    # The server ends it: the record goes with it, here and in the store.
    ended = response_headers(200, {})
    replies = await mcp(agents, bound, ALICE, None, "DELETE", SESSION, ended)
    assert not any(reply.HasField("immediate_response") for reply in replies)
    assert await store_client.keys("test:agent_owner:*") == []
    assert bound.agent_owners is not None
    assert bound.agent_owners.known(binding_digest("tools", "session", SESSION)) is None


async def test_a_record_the_store_could_not_delete_is_counted_and_the_answer_goes_on(
    config: GatewayConfig, bound: Services
) -> None:
    agents = with_agents(config)
    await alice_opens_a_session(agents, bound)
    assert bound.agent_owners is not None
    bound.agent_owners._client = connect("redis://127.0.0.1:9", 0.2)
    ended = response_headers(204, {})
    replies = await mcp(agents, bound, ALICE, None, "DELETE", SESSION, ended)
    assert not any(reply.HasField("immediate_response") for reply in replies)
    assert bound.metrics.store_errors.labels("agent_owner_forget")._value.get() == 1
    assert lines(bound)[-1]["http_status_code"] == 204


@pytest.mark.parametrize("policy", [StoreFailure.FAIL_CLOSED, StoreFailure.FAIL_OPEN])
async def test_an_owner_lookup_that_fails_beside_a_reservation_follows_on_store_failure(
    config: GatewayConfig, store_client: Valkey, quota_store: QuotaStore, policy: StoreFailure
) -> None:
    # The record's node fails the claim (on a cluster, a node down; here, a key of another
    # type) while the counters' node reserved: the owners' policy decides, and a message
    # it refuses gives back what was reserved for it.
    agents = limited(config, per_day=5)
    agents = agents.model_copy(
        update={"quotas": agents.quotas.model_copy(update={"on_store_failure": policy})}
    )
    digest = binding_digest("helper", "task", TASK)
    await store_client.hset(f"test:agent_owner:{digest}", "not", "a record")
    services = replica(quota_store, store_client)
    replies = await a2a(agents, services, BOB, rpc("SendMessage", CONTINUED))
    await quota_store.flush()  # a give-back goes out with the next settlement batch
    assert services.metrics.store_errors.labels("agent_owner_lookup")._value.get() == 1
    if policy is StoreFailure.FAIL_OPEN:
        assert not any(reply.HasField("immediate_response") for reply in replies)
        assert await counted_messages(store_client, "team2") == 1
        return
    refused = replies[1].immediate_response
    assert refused.status.code == 503
    assert orjson.loads(refused.body)["error"]["data"]["code"] == "agent_owner_store_unavailable"
    assert await counted_messages(store_client, "team2") == 0
