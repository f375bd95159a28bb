"""Quota settlement flushes that overlap, against a real Valkey: a flush whose answer is
slow while the next one lands, in either order of landing, or cut by its timeout and
replayed. Each settlement must count once (no double charge, nothing lost) and the
store must keep a bounded number of batch markers (``qs:...``).

The store's answers are held back by a wrapper around the redis client's connection
pool: the command reaches Valkey and runs there; only the gateway's read of its answer
waits until the test lets it through. Nothing of the gateway itself is replaced.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity
from extproc.quota import store as quota_store_module
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import QuotaStore, Reservation
from extproc.store.connection import StoreClient, connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.spool import Spool

ALICE = Identity(method="api_key", api_key_id="k1", user_id="alice", group_id="eng")
BOB = Identity(method="api_key", api_key_id="k2", user_id="bob", group_id="eng")
PREFIX = "t:"


class _HeldConnection:
    """A pooled connection whose answers, once read, wait for ``gate``."""

    def __init__(self, connection: Any, gate: asyncio.Event, reached: asyncio.Event) -> None:
        self._connection = connection
        self._gate = gate
        self._reached = reached

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        answer = await self._connection.read_response(*args, **kwargs)
        self._reached.set()
        await self._gate.wait()
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class _HoldingPool:
    """The client's pool; the round trip that takes the next connection after ``hold``
    gets its answers late."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._next: tuple[asyncio.Event, asyncio.Event] | None = None
        self._refuse_next = False

    def hold(self) -> tuple[asyncio.Event, asyncio.Event]:
        """(gate, reached): set the gate to let the answers through; ``reached`` is set
        once the store has answered (the batch ran there)."""
        self._next = (asyncio.Event(), asyncio.Event())
        return self._next

    def refuse(self) -> None:
        """The next round trip finds the store unreachable (nothing is sent)."""
        self._refuse_next = True

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._refuse_next:
            self._refuse_next = False
            raise ConnectionRefusedError("the store is down")
        connection = await self._pool.get_connection(*args, **kwargs)
        if self._next is None:
            return connection
        (gate, reached), self._next = self._next, None
        return _HeldConnection(connection, gate, reached)

    async def release(self, connection: Any) -> None:
        if isinstance(connection, _HeldConnection):
            connection = connection._connection
        await self._pool.release(connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class _HoldingClient:
    """The redis client as the quota store sees it, with a holding pool."""

    def __init__(self, client: StoreClient) -> None:
        self._client = client
        self.connection_pool = _HoldingPool(client.connection_pool)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[StoreClient]:
    store_client = connect(valkey.url, 2.0)
    await store_client.flushdb()
    yield store_client
    await store_client.aclose()


@pytest.fixture
def holding(client: StoreClient) -> _HoldingClient:
    return _HoldingClient(client)


@pytest.fixture
async def store(holding: _HoldingClient, tmp_path: Path) -> AsyncIterator[QuotaStore]:
    quota_store = QuotaStore(holding, PREFIX, spool=Spool(tmp_path, "quota"))
    await quota_store.start()
    yield quota_store
    await quota_store.close()


def budget(store: QuotaStore, identity: Identity = ALICE) -> list[Limit]:
    rule = LimitRule(name="budget", subject="user", tokens_per_hour=1_000_000)
    return RuleSet(QuotasConfig(rules=(rule,))).limits_for(identity, {}, "gpt-4o", store.now())


async def markers(client: StoreClient) -> list[bytes]:
    return sorted([key async for key in client.scan_iter(match=f"{PREFIX}qs:*")])


async def counted(client: StoreClient, found: list[Limit]) -> int:
    return int(await client.get(found[0].key(PREFIX)) or 0)


async def settled(store: QuotaStore, found: list[Limit], tokens: int) -> None:
    """A request reserves 50 tokens and settles at ``tokens`` (queued, not yet flushed)."""
    reservation = await store.reserve(found, 50)
    assert isinstance(reservation, Reservation)
    store.settle(reservation, tokens)


async def next_batch(store: QuotaStore) -> None:
    """The settlements queued so far go out as the next timed batch does (every 20 ms under
    load): on their own, whatever batch is still on its way (``flush`` waits for those)."""
    await store._send_queued()


async def held_flush(store: QuotaStore, holding: _HoldingClient) -> tuple[Any, asyncio.Event]:
    """A batch that runs on the store and whose answer waits for the gate."""
    gate, reached = holding.connection_pool.hold()
    flush = asyncio.create_task(next_batch(store))
    await reached.wait()
    return flush, gate


@pytest.mark.parametrize("slow_lands_last", [True, False], ids=["slow-last", "slow-first"])
async def test_overlapping_flushes_count_once_and_leave_one_marker_per_subject(
    store: QuotaStore, holding: _HoldingClient, client: StoreClient, slow_lands_last: bool
) -> None:
    found = budget(store)
    # A settlement batch goes out, and its answer is slow to come back...
    await settled(store, found, 10)
    slow, slow_gate = await held_flush(store, holding)
    # ...while the next batch of the same subject goes out (and lands) beside it.
    await settled(store, found, 20)
    if slow_lands_last:
        await next_batch(store)
        slow_gate.set()
        await slow
    else:
        fast, fast_gate = await held_flush(store, holding)
        slow_gate.set()
        await slow
        fast_gate.set()
        await fast
    for _ in range(3):
        await settled(store, found, 30)
        await store.flush()

    assert await counted(client, found) == 10 + 20 + 3 * 30
    # Every batch above landed whole on its first try: none can come back, so the
    # subject keeps only its last marker, however the flushes overlapped.
    assert len(await markers(client)) == 1


async def test_markers_stay_bounded_however_often_flushes_overlap(
    store: QuotaStore, holding: _HoldingClient, client: StoreClient
) -> None:
    found = budget(store)
    for _ in range(10):
        # A slow answer while the next batch lands, again and again (a store or an
        # event loop that lags under load).
        await settled(store, found, 1)
        slow, slow_gate = await held_flush(store, holding)
        await settled(store, found, 1)
        await next_batch(store)
        slow_gate.set()
        await slow
    # Each flush goes out before the one before it has its answer.
    await settled(store, found, 1)
    previous, previous_gate = await held_flush(store, holding)
    for _ in range(10):
        await settled(store, found, 1)
        current, current_gate = await held_flush(store, holding)
        previous_gate.set()
        await previous
        previous, previous_gate = current, current_gate
    previous_gate.set()
    await previous
    await settled(store, found, 1)
    await store.flush()

    assert await counted(client, found) == 20 + 11 + 1
    # One marker was left per overlap, for the 7 days markers are kept.
    assert len(await markers(client)) == 1


async def test_a_flush_cut_by_its_timeout_while_others_land_is_replayed_once(
    store: QuotaStore,
    holding: _HoldingClient,
    client: StoreClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = budget(store)
    others = budget(store, BOB)
    usual = quota_store_module.SETTLE_TIMEOUT_S
    monkeypatch.setattr(quota_store_module, "SETTLE_TIMEOUT_S", 0.2)
    # The batch runs on the store, its answer never comes in time: spooled, though
    # its settlements are already counted.
    await settled(store, found, 10)
    await settled(store, others, 7)
    cut, _ = await held_flush(store, holding)
    # That batch's wait is set; the next ones wait as long as ever (at 0.2 s, a batch
    # that merely came late on a busy machine was spooled too).
    monkeypatch.setattr(quota_store_module, "SETTLE_TIMEOUT_S", usual)
    # Meanwhile the subjects' next batches land, and later ones delete their markers.
    await settled(store, found, 20)
    await next_batch(store)
    await cut
    assert store._spool is not None and store._spool.pending() == 1
    for _ in range(3):
        await settled(store, found, 30)
        await settled(store, others, 3)
        await store.flush()

    # The replay finds the cut batch's markers (never deleted: it could come back)...
    assert await store.replay_spool() == 1
    assert await counted(client, found) == 10 + 20 + 3 * 30
    assert await counted(client, others) == 7 + 3 * 3
    # ...and keeps them, since the spool may bring the batch back after a crash; the
    # replay deleted the markers of the batches that landed whole.
    assert len(await markers(client)) == 2


async def test_markers_a_failed_flush_was_to_delete_go_with_the_next_one(
    store: QuotaStore, holding: _HoldingClient, client: StoreClient
) -> None:
    found = budget(store)
    await settled(store, found, 10)
    await store.flush()
    # The store cannot be reached for the next batch: spooled, nothing ran.
    await settled(store, found, 20)
    holding.connection_pool.refuse()
    await store.flush()
    assert store._spool is not None and store._spool.pending() == 1
    await settled(store, found, 30)
    await store.flush()

    # The first batch's marker went with the third batch, not the failed second.
    assert len(await markers(client)) == 1
    assert await store.replay_spool() == 1
    assert await counted(client, found) == 10 + 20 + 30


async def test_a_batch_the_disk_kept_despite_its_error_counts_once(
    store: QuotaStore,
    holding: _HoldingClient,
    client: StoreClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = budget(store)
    real_fsync = os.fsync
    failed: list[int] = []

    def fsync_failing_once(fd: int) -> None:
        if not failed:
            failed.append(fd)
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    # The store cannot be reached, and the disk reports an error for the batch's spool
    # line, which it wrote all the same: the store holds the batch in memory.
    await settled(store, found, 10)
    holding.connection_pool.refuse()
    monkeypatch.setattr(os, "fsync", fsync_failing_once)
    await store.flush()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert store._spool is not None and store._spool.pending() == 1
    assert len(store._held) == 1
    for _ in range(2):
        await settled(store, found, 20)
        await store.flush()

    # The held batch lands, then the spool's copy of it is replayed.
    assert await store.replay_spool() == 1
    await settled(store, found, 30)
    await store.flush()
    assert await counted(client, found) == 10 + 2 * 20 + 30
