"""Quota reservations and settlements on a three-node Valkey Cluster while one node is down.

A request's subjects live on different nodes (its API key, user and group below
live on three). When one node is stopped (its port refuses connections), frozen
(SIGSTOP: it accepts connections and answers nothing), or cuts a connection after
running a reservation, the requests with a subject there fail (open or closed, as
their rules say) and nothing stays reserved for them anywhere; requests whose
subjects all live on the other nodes go on being admitted; settlements reach
the nodes that answer and are replayed from the spool on the one that comes back.

The nodes run with ``cluster-require-full-coverage no`` (the other nodes keep
serving their slots however long one node is down) and persist their data (a
stopped node comes back with its counters).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import QuotaStore, Reservation
from extproc.store.connection import StoreClient, connect
from extproc.store.spool import Spool
from tests.integration.valkey_cluster import (
    HOST,
    STORE_TIMEOUT_S,
    ReplyCutter,
    ValkeyCluster,
    as_the_gateway_waits,
)

pytestmark = pytest.mark.timeout(90)

PREFIX = "nd:"
# Her API key, user and group live on nodes 1, 0 and 2 (tests/integration/test_redis_cluster.py).
ALICE = Identity(method="api_key", api_key_id="k1", user_id="alice", group_id="sales")
# His live on nodes 0, 1 and 0: none on Alice's group's node.
DAVE = Identity(method="api_key", api_key_id="dave", user_id="ivan", group_id="eng")
# How long a reservation the test expects to be granted may take: the gateway's 500 ms,
# met on a quiet machine, was missed under the whole suite's load (a live node's answer
# came late and the test read it as refused). Reservations meant to fail still meet the
# gateway's wait.
ANSWER_WAIT_S = 5.0
RULES = (
    LimitRule(name="key-tokens", subject="api_key", tokens_per_hour=100_000),
    LimitRule(name="user-tokens", subject="user", tokens_per_hour=100_000),
    LimitRule(name="group-tokens", subject="group", tokens_per_hour=100_000),
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    valkeys = ValkeyCluster(
        tmp_path_factory.mktemp("cluster-node-down"),
        options=("--cluster-require-full-coverage", "no", "--appendonly", "yes"),
    )
    valkeys.start()
    yield valkeys
    valkeys.stop()


@pytest.fixture
async def client(cluster: ValkeyCluster) -> AsyncIterator[StoreClient]:
    opened = connect(cluster.url, ANSWER_WAIT_S)
    await opened.flushdb()
    yield opened
    await opened.aclose()


@pytest.fixture
async def store(client: StoreClient, tmp_path: Path) -> AsyncIterator[QuotaStore]:
    quota_store = QuotaStore(client, PREFIX, Spool(tmp_path, "quota"))
    await quota_store.start()
    yield quota_store
    await quota_store.close()


def limits(store: QuotaStore, identity: Identity = ALICE) -> list[Limit]:
    return RuleSet(QuotasConfig(rules=RULES)).limits_for(identity, {}, "gpt-4o", store.now())


async def counters(client: StoreClient, found: list[Limit]) -> list[int]:
    return [int(await client.get(limit.key(PREFIX)) or 0) for limit in found]


def node_of(cluster: ValkeyCluster, client: StoreClient, limit: Limit) -> int:
    return cluster.owner_of(client.keyslot(limit.key(PREFIX)))


@contextlib.contextmanager
def stopped(cluster: ValkeyCluster, index: int) -> Iterator[None]:
    cluster.stop_node(index)
    try:
        yield
    finally:
        cluster.start_node(index)


async def test_the_subjects_live_where_the_scenarios_need_them(
    store: QuotaStore, client: StoreClient, cluster: ValkeyCluster
) -> None:
    assert [node_of(cluster, client, limit) for limit in limits(store)] == [1, 0, 2]
    assert [node_of(cluster, client, limit) for limit in limits(store, DAVE)] == [0, 1, 0]


async def test_requests_failing_on_a_stopped_node_leave_nothing_reserved_on_the_others(
    store: QuotaStore, client: StoreClient, cluster: ValkeyCluster
) -> None:
    found = limits(store)
    assert isinstance(await store.reserve(found, 100), Reservation)

    with stopped(cluster, 2):
        failed = [await as_the_gateway_waits(store.reserve(found, 100)) for _ in range(3)]
        await store.close()  # every round trip landed, every give-back written

        assert all(isinstance(result, Exception) for result in failed), failed
        assert await counters(client, found[:2]) == [100, 100]
    assert await counters(client, found) == [100, 100, 100]


async def test_requests_on_the_other_nodes_are_admitted_while_a_node_is_stopped(
    store: QuotaStore, client: StoreClient, cluster: ValkeyCluster
) -> None:
    alice, dave = limits(store), limits(store, DAVE)

    with stopped(cluster, 2):
        # Sent together, three times over: each round trip carries all three.
        rounds = [
            await asyncio.gather(
                as_the_gateway_waits(store.reserve(alice, 100)),
                as_the_gateway_waits(store.reserve(dave, 100), ANSWER_WAIT_S),
                as_the_gateway_waits(store.reserve(dave, 100), ANSWER_WAIT_S),
            )
            for _ in range(3)
        ]
        await store.close()

        for results in rounds:
            assert isinstance(results[0], Exception)
            assert [type(result) for result in results[1:]] == [Reservation, Reservation]
        assert await counters(client, dave[:2]) == [600, 600]
        assert await counters(client, alice[:2]) == [0, 0]


async def test_settlements_reach_the_nodes_that_answer_and_the_stopped_one_from_the_spool(
    store: QuotaStore, client: StoreClient, cluster: ValkeyCluster, tmp_path: Path
) -> None:
    found = limits(store)
    reservation = await store.reserve(found, 100)
    assert isinstance(reservation, Reservation)

    with stopped(cluster, 2):
        store.settle(reservation, 30)  # the answer used 30 tokens
        await store.flush()

        assert await counters(client, found[:2]) == [30, 30]
        assert Spool(tmp_path, "quota").pending() == 1

    assert await store.replay_spool() == 1
    assert await store.replay_spool() == 0
    assert await counters(client, found) == [30, 30, 30]
    assert Spool(tmp_path, "quota").pending() == 0


async def test_a_part_refused_on_one_node_waits_for_the_part_of_a_stopped_node(
    store: QuotaStore, client: StoreClient, cluster: ValkeyCluster, tmp_path: Path
) -> None:
    """One settlement batch, three parts on three nodes: her key's lands, her user's
    meets a key of another type on node 0 (refused for good, written nowhere), her
    group's finds node 2 stopped. The replay waits for node 2 rather than set the
    batch aside with the group's part in it, then lands that part once; each part that
    landed counts once, by its id on its own node."""
    found = limits(store)
    reservation = await store.reserve(found, 100)
    assert isinstance(reservation, Reservation)
    user_counter = found[1].key(PREFIX)
    await client.delete(user_counter)
    await client.hset(user_counter, "x", "1")
    try:
        with stopped(cluster, 2):
            store.settle(reservation, 30)
            await store.flush()
            assert await counters(client, found[:1]) == [30]
            assert await store.replay_spool() == 0
            assert Spool(tmp_path, "quota").pending() == 1

        assert await store.replay_spool() == 1
        assert await counters(client, [found[0], found[2]]) == [30, 30]
        assert Spool(tmp_path, "quota").pending() == 0
        assert len((tmp_path / "quota.rejected.jsonl").read_bytes().splitlines()) == 1
    finally:
        await client.delete(user_counter)


async def test_a_frozen_node_that_wakes_up_reserves_nothing_for_requests_that_gave_up(
    store: QuotaStore, client: StoreClient, cluster: ValkeyCluster, tmp_path: Path
) -> None:
    found = limits(store)
    assert isinstance(await store.reserve(found, 100), Reservation)

    cluster.pause_node(2)
    try:
        failed = await as_the_gateway_waits(store.reserve(found, 100))
        await store.close()
    finally:
        cluster.resume_node(2)
    # What the frozen node could not be told is in the spool, replayed as it answers again.
    await store.replay_spool()

    assert isinstance(failed, Exception)
    assert await counters(client, found) == [100, 100, 100]
    assert Spool(tmp_path, "quota").pending() == 0


async def test_a_reservation_whose_answer_was_cut_off_is_given_back(
    cluster: ValkeyCluster, tmp_path: Path
) -> None:
    cutter = ReplyCutter(cluster.nodes[2].port)
    relay_port = await cutter.start()

    def via_relay(address: tuple[str, int]) -> tuple[str, int]:
        host, port = address
        return (host, relay_port) if port == cluster.nodes[2].port else address

    client = RedisCluster(
        host=HOST,
        port=cluster.nodes[0].port,
        socket_timeout=STORE_TIMEOUT_S,
        socket_connect_timeout=STORE_TIMEOUT_S,
        address_remap=via_relay,
    )
    await client.flushdb()
    store = QuotaStore(client, PREFIX, Spool(tmp_path, "quota"))
    await store.start()
    try:
        found = limits(store)
        assert isinstance(await store.reserve(found, 100), Reservation)

        cutter.armed = True
        failed = await as_the_gateway_waits(store.reserve(found, 100))
        await store.close()

        assert isinstance(failed, Exception) and cutter.cut == 1
        assert await counters(client, found) == [100, 100, 100]
    finally:
        await store.close()
        await client.aclose()
        await cutter.close()


async def test_a_node_restarted_while_another_is_stopped_serves_its_subjects(
    store: QuotaStore, client: StoreClient, cluster: ValkeyCluster
) -> None:
    # Her API key lives on node 2, her user and group on node 0: none on node 1.
    carol = Identity(method="api_key", api_key_id="k2", user_id="alice", group_id="eng")
    found = limits(store, carol)
    assert [node_of(cluster, client, limit) for limit in found] == [2, 0, 0]

    with stopped(cluster, 1):
        cluster.stop_node(2)
        cluster.start_node(2)  # without the scripts it had

        granted = await as_the_gateway_waits(store.reserve(found, 100), ANSWER_WAIT_S)

    assert isinstance(granted, Reservation) and granted.reserved == [100, 100, 100], repr(granted)
    assert await counters(client, found) == [100, 100, 100]
