"""Quota reservations on a single Valkey server whose answers never come back.

A reservation can reach the server and run there while its answer is lost: the
connection is cut as the answer comes back, or the server freezes (SIGSTOP) and
the client's read times out. The request fails (open or closed, as its rules
say), so nothing may stay reserved for it: a client must not be refused later
for usage that never happened. A reservation that never left (the server
refuses connections) has nothing to give back, and leaves nothing in the spool.

The server is the gateway's embedded default (persisted, AOF), started for this
module; cut answers go through a TCP relay on loopback
(``valkey_cluster.ReplyCutter``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import Denial, QuotaStore, Reservation
from extproc.store.connection import StoreClient, connect
from extproc.store.embedded import EmbeddedValkey, free_port
from extproc.store.spool import Spool
from tests.integration.valkey_cluster import (
    HOST,
    STORE_TIMEOUT_S,
    ReplyCutter,
    as_the_gateway_waits,
)

pytestmark = pytest.mark.timeout(60)

PREFIX = "la:"
ALICE = Identity(method="api_key", api_key_id="k1", user_id="alice", group_id="sales")
RULES = (
    LimitRule(name="key-requests", subject="api_key", requests_per_hour=2),
    LimitRule(name="user-tokens", subject="user", tokens_per_hour=100_000),
    LimitRule(name="group-tokens", subject="group", tokens_per_hour=100_000),
)


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("lost-answer"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def direct(valkey: EmbeddedValkey) -> AsyncIterator[StoreClient]:
    """A client of the server itself, to read its counters."""
    opened = connect(valkey.url, 2.0)
    await opened.flushdb()
    yield opened
    await opened.aclose()


@pytest.fixture
async def cutter(valkey: EmbeddedValkey) -> AsyncIterator[ReplyCutter]:
    relay = ReplyCutter(int(valkey.url.rsplit(":", 1)[1].split("/")[0]))
    yield relay
    await relay.close()


async def opened_store(client: StoreClient, spool_dir: Path) -> QuotaStore:
    store = QuotaStore(client, PREFIX, Spool(spool_dir, "quota"))
    await store.start()
    return store


def limits(store: QuotaStore) -> list[Limit]:
    return RuleSet(QuotasConfig(rules=RULES)).limits_for(ALICE, {}, "gpt-4o", store.now())


async def counters(client: StoreClient, found: list[Limit]) -> list[int]:
    return [int(await client.get(limit.key(PREFIX)) or 0) for limit in found]


async def next_request_is_admitted(direct: StoreClient, spool_dir: Path) -> bool:
    """Whether Alice's next request passes her 2-requests limit (one was admitted)."""
    store = await opened_store(direct, spool_dir)
    try:
        return isinstance(await store.reserve(limits(store), 100), Reservation)
    finally:
        await store.close()


async def test_a_reservation_whose_answer_was_cut_off_is_given_back(
    direct: StoreClient, cutter: ReplyCutter, tmp_path: Path
) -> None:
    client = connect(f"redis://{HOST}:{await cutter.start()}/0", STORE_TIMEOUT_S)
    store = await opened_store(client, tmp_path)
    try:
        found = limits(store)
        assert isinstance(await store.reserve(found, 100), Reservation)

        cutter.armed = True  # the server runs the next reservation; its answer is cut
        failed = await as_the_gateway_waits(store.reserve(found, 100))
        await store.close()  # every give-back written

        assert isinstance(failed, Exception) and cutter.cut == 1
        assert await counters(direct, found) == [1, 100, 100]
    finally:
        await store.close()
        await client.aclose()
    assert await next_request_is_admitted(direct, tmp_path)


async def test_a_frozen_server_that_wakes_up_keeps_nothing_for_a_request_that_gave_up(
    direct: StoreClient, valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    client = connect(valkey.url, STORE_TIMEOUT_S)
    store = await opened_store(client, tmp_path)
    pid = int((await direct.info("server"))["process_id"])
    try:
        found = limits(store)
        assert isinstance(await store.reserve(found, 100), Reservation)

        os.kill(pid, signal.SIGSTOP)  # it takes connections and answers nothing
        try:
            failed = await as_the_gateway_waits(store.reserve(found, 100))
            await store.close()  # the give-back cannot land either: spooled
        finally:
            os.kill(pid, signal.SIGCONT)
        # The server runs what it was sent while frozen; the give-back follows.
        await store.replay_spool()

        assert isinstance(failed, Exception)
        assert await counters(direct, found) == [1, 100, 100]
        assert Spool(tmp_path, "quota").pending() == 0
    finally:
        os.kill(pid, signal.SIGCONT)
        await store.close()
        await client.aclose()
    assert await next_request_is_admitted(direct, tmp_path)


async def test_reservations_refused_a_connection_leave_nothing_to_replay(
    tmp_path: Path,
) -> None:
    client = connect(f"redis://{HOST}:{free_port()}/0", STORE_TIMEOUT_S)  # nothing listens there
    store = await opened_store(client, tmp_path)
    try:
        found = limits(store)
        failed = [await as_the_gateway_waits(store.reserve(found, 100)) for _ in range(3)]
        await store.close()

        assert all(isinstance(result, Exception) for result in failed), failed
        # Never sent, so nothing to give back: an outage does not fill the spool.
        assert Spool(tmp_path, "quota").pending() == 0
    finally:
        await store.close()
        await client.aclose()


async def test_a_client_set_to_retry_still_counts_exactly_what_was_admitted(
    direct: StoreClient, cutter: ReplyCutter, tmp_path: Path
) -> None:
    # The gateway's own client never retries (extproc/store/connection.py); one that
    # does (redis-py's default outside from_url) must not reserve twice either.
    client = redis.Redis(
        host=HOST,
        port=await cutter.start(),
        socket_timeout=STORE_TIMEOUT_S,
        retry=Retry(NoBackoff(), 3),
    )
    store = await opened_store(client, tmp_path)
    try:
        found = limits(store)
        first = await store.reserve(found, 100)
        cutter.armed = True
        second = await as_the_gateway_waits(store.reserve(found, 100))
        await store.close()

        admitted = [r for r in (first, second) if isinstance(r, Reservation)]
        assert cutter.cut == 1 and not isinstance(second, Denial)
        assert await counters(direct, found) == [len(admitted), *[100 * len(admitted)] * 2]
    finally:
        await store.close()
        await client.aclose()


async def test_a_server_that_lost_its_scripts_reserves_once_and_gives_nothing_back(
    direct: StoreClient, valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    client = connect(valkey.url, STORE_TIMEOUT_S)
    store = await opened_store(client, tmp_path)
    try:
        found = limits(store)
        await direct.script_flush()  # as after a restart: NOSCRIPT, nothing ran
        granted = await store.reserve(found, 100)
        await store.close()

        assert isinstance(granted, Reservation) and granted.reserved == [1, 100, 100]
        assert await counters(direct, found) == [1, 100, 100]
    finally:
        await store.close()
        await client.aclose()
