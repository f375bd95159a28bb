"""Quota counters in a real Valkey: atomic admission under concurrency, capped reservations,
settlement, run-time overrides, and rollback when another subject refuses."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity
from extproc.quota import store as quota_store_module
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import Denial, QuotaStore, Reservation
from extproc.store.connection import StoreClient, connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.scripts import script_source
from extproc.store.spool import Spool

ALICE = Identity(method="api_key", api_key_id="k1", user_id="alice", group_id="eng")


@pytest.fixture
async def store(valkey: EmbeddedValkey) -> AsyncIterator[QuotaStore]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota_store = QuotaStore(client, "t:")
    await quota_store.start()
    yield quota_store
    await quota_store.close()
    await client.aclose()


def limits(store: QuotaStore, *rules: LimitRule, identity: Identity = ALICE) -> list[Limit]:
    rule_set = RuleSet(QuotasConfig(rules=rules))
    return rule_set.limits_for(identity, {}, "gpt-4o", store.now())


async def test_concurrent_requests_never_pass_a_request_limit_together(store: QuotaStore) -> None:
    found = limits(store, LimitRule(name="ten", subject="api_key", requests_per_hour=10))
    results = await asyncio.gather(*(store.reserve(found, 1) for _ in range(50)))
    admitted = [r for r in results if isinstance(r, Reservation)]
    assert len(admitted) == 10
    assert sorted(r.used[0] for r in admitted) == list(range(1, 11))


async def test_a_token_reservation_holds_the_whole_estimate(store: QuotaStore) -> None:
    # Admitted while something remains; the request crossing the budget holds all of its
    # estimate, so an earlier request settling under its own frees no room it will use.
    found = limits(store, LimitRule(name="hundred", subject="user", tokens_per_hour=100))
    first = await store.reserve(found, 70)
    second = await store.reserve(found, 70)
    await store.settle_now([(found[0], -10)])  # the first request used 60
    third = await store.reserve(found, 70)
    assert isinstance(first, Reservation) and first.reserved == [70]
    assert isinstance(second, Reservation) and second.reserved == [70]
    assert second.used == [140]
    assert isinstance(third, Denial) and third.used == 130


async def test_under_a_hard_cap_a_token_reservation_is_capped_at_what_remains(
    store: QuotaStore,
) -> None:
    # The answer is capped at what the budget had left: that is all the request can use.
    rule = LimitRule(name="hundred", subject="user", tokens_per_hour=100, hard_cap=True)
    found = limits(store, rule)
    first = await store.reserve(found, 70)
    second = await store.reserve(found, 70)
    third = await store.reserve(found, 70)
    assert isinstance(first, Reservation) and first.reserved == [70]
    assert isinstance(second, Reservation) and second.reserved == [30]
    assert isinstance(third, Denial) and third.used == 100


async def test_settlement_replaces_the_estimate_with_real_usage(store: QuotaStore) -> None:
    found = limits(store, LimitRule(name="hundred", subject="user", tokens_per_hour=100))
    reservation = await store.reserve(found, 80)
    assert isinstance(reservation, Reservation)
    await store.settle_now([(found[0], 12 - 80)])
    after = await store.reserve(found, 1)
    assert isinstance(after, Reservation) and after.used == [13]


async def test_an_override_changes_the_limit_in_force(store: QuotaStore) -> None:
    found = limits(store, LimitRule(name="few", subject="group", requests_per_hour=1))
    assert isinstance(await store.reserve(found, 1), Reservation)
    assert isinstance(await store.reserve(found, 1), Denial)
    await store._client.hset(found[0].overrides_key("t:"), found[0].override_field, 3)
    granted = await store.reserve(found, 1)
    assert isinstance(granted, Reservation) and granted.effective == [3]


async def test_a_refusal_on_one_subject_gives_back_what_others_reserved(store: QuotaStore) -> None:
    rules = (
        LimitRule(name="user-tokens", subject="user", tokens_per_hour=1000),
        LimitRule(name="group-requests", subject="group", requests_per_hour=1),
    )
    found = limits(store, *rules)
    assert isinstance(await store.reserve(found, 100), Reservation)
    refused = await store.reserve(found, 100)
    assert isinstance(refused, Denial) and refused.limit.rule == "group-requests"
    user_key = next(limit for limit in found if limit.rule == "user-tokens").key("t:")
    assert int(await store._client.get(user_key)) == 100


async def test_counters_share_the_subjects_hash_tag_and_expire(store: QuotaStore) -> None:
    found = limits(store, LimitRule(name="r", subject="api_key", requests_per_minute=5,
                                    tokens_per_day=50))  # fmt: skip
    assert len({limit.key("t:").split("}")[0] for limit in found}) == 1
    assert isinstance(await store.reserve(found, 5), Reservation)
    for limit in found:
        assert 0 < await store._client.ttl(limit.key("t:")) <= 86400 + 3600


def test_rules_pick_subjects_selectors_and_models(tmp_path: Path) -> None:
    rules = RuleSet(
        QuotasConfig(
            rules=(
                LimitRule(
                    name="listed", subject="user", match=("alice", "bob"), requests_per_day=9
                ),
                LimitRule(name="other-group", subject="group", match="sales", requests_per_day=9),
                LimitRule(
                    name="minis", subject="api_key", models=("gpt-4o-mini*",), requests_per_day=9
                ),
                LimitRule(
                    name="hdr", subject="header:X-User-Type", match="limited", requests_per_day=9
                ),
            )
        )
    )
    found = rules.limits_for(ALICE, {"x-user-type": "limited"}, "gpt-4o", 1_800_000_000.0)
    assert sorted(limit.rule for limit in found) == ["hdr", "listed"]
    minis = rules.limits_for(ALICE, {}, "gpt-4o-mini-2024", 1_800_000_000.0)
    assert sorted(limit.rule for limit in minis) == ["listed", "minis"]


async def test_concurrent_reservations_share_round_trips_and_each_gets_its_own_answer(
    store: QuotaStore,
) -> None:
    found = limits(store, LimitRule(name="budget", subject="user", tokens_per_hour=10_000))
    before = store.reservations.round_trips
    costs = list(range(1, 41))
    results = await asyncio.gather(*(store.reserve(found, cost) for cost in costs))
    assert all(isinstance(r, Reservation) for r in results)
    # Each caller's reservation is its own estimate, whichever batch carried it.
    assert [r.reserved[0] for r in results if isinstance(r, Reservation)] == costs
    assert max(r.used[0] for r in results if isinstance(r, Reservation)) == sum(costs)
    assert store.reservations.round_trips - before < len(costs)


@asynccontextmanager
async def writes_held(valkey: EmbeddedValkey) -> AsyncIterator[StoreClient]:
    """The server holds every write it is sent (CLIENT PAUSE WRITE) until the block ends,
    as a store too busy to answer does; reads still answer, on the client yielded. The
    test, not the machine's speed, says when the store answers again."""
    other = connect(valkey.url, 5.0)
    await other.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        yield other
    finally:
        await other.execute_command("CLIENT", "UNPAUSE")
        await other.aclose()


async def until_the_server_holds_a_write(other: StoreClient) -> None:
    """Wait until a write has reached the paused server (it holds the client sending it)."""
    for _ in range(2_000):
        if int((await other.info("clients"))["blocked_clients"]):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the write never reached the server")


async def test_a_reservation_whose_request_gave_up_in_flight_is_given_back(
    store: QuotaStore, valkey: EmbeddedValkey
) -> None:
    found = limits(
        store,
        LimitRule(name="budget", subject="user", tokens_per_hour=10_000),
        LimitRule(name="calls", subject="user", requests_per_hour=100),
    )
    async with writes_held(valkey) as other:
        reserving = asyncio.create_task(store.reserve(found, 700))
        await until_the_server_holds_a_write(other)
        # The request gives up (its timeout, its client gone) while the store holds its
        # reservation; the store makes the reservation all the same once it answers.
        reserving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reserving
    # The next request's reservation goes out after the abandoned one has landed.
    after = await store.reserve(found, 1)
    assert isinstance(after, Reservation)
    await store.flush()
    counters = [int(await store._client.get(limit.key("t:"))) for limit in found]
    assert counters == [1, 1]  # only the request that waited for its answer


async def test_flush_returns_once_a_batch_already_on_its_way_has_landed(
    store: QuotaStore, valkey: EmbeddedValkey
) -> None:
    found = limits(store, LimitRule(name="budget", subject="user", tokens_per_hour=10_000))
    reservation = await store.reserve(found, 700)
    assert isinstance(reservation, Reservation)
    async with writes_held(valkey) as other:
        # The settlement goes out with the timed batch, which the busy store holds.
        store.settle(reservation, 40)
        await until_the_server_holds_a_write(other)
        flushed = asyncio.create_task(store.flush())
        assert int(await other.get(found[0].key("t:"))) == 700  # not landed yet
        # Before, flush() found nothing queued and returned at once: a give-back in
        # that batch (a request that gave up) was read as never made.
        assert not flushed.done()
    await flushed
    assert int(await store._client.get(found[0].key("t:"))) == 40


async def test_a_settlement_in_flight_when_the_store_closes_is_written(
    valkey: EmbeddedValkey,
) -> None:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    store = QuotaStore(client, "t:")
    await store.start()
    found = limits(store, LimitRule(name="budget", subject="user", tokens_per_hour=10_000))
    reservation = await store.reserve(found, 700)
    assert isinstance(reservation, Reservation)
    async with writes_held(valkey) as other:
        # The store is busy when the settlement goes out, and the gateway stops.
        store.settle(reservation, 40)
        await until_the_server_holds_a_write(other)
        closing = asyncio.create_task(store.close())
        assert int(await other.get(found[0].key("t:"))) == 700  # not landed yet
    await closing
    await client.aclose()  # as the gateway does right after closing the store
    other = connect(valkey.url, 5.0)
    try:
        assert int(await other.get(found[0].key("t:"))) == 40
    finally:
        await other.aclose()


async def settlement_markers(store: QuotaStore) -> list[bytes]:
    return [key async for key in store._client.scan_iter(match="t:qs:*")]


async def test_settling_often_leaves_one_batch_marker_per_subject_not_one_per_batch(
    store: QuotaStore,
) -> None:
    found = limits(store, LimitRule(name="hundred", subject="user", tokens_per_hour=10_000))
    for _ in range(30):
        reservation = await store.reserve(found, 50)
        assert isinstance(reservation, Reservation)
        store.settle(reservation, 20)
        await store.flush()

    after = await store.reserve(found, 1)
    assert isinstance(after, Reservation) and after.used == [30 * 20 + 1]
    # Under load a flush goes out every 20 ms: one marker each, kept 7 days, was
    # millions of keys a week per process and subject.
    assert len(await settlement_markers(store)) == 1


class AnswerLostOnce(QuotaStore):
    """A store whose first settlement lands but whose answer never comes back."""

    lost = False

    async def _run(self, calls: Any, errors_as_results: bool = False) -> list[Any]:
        results = await super()._run(calls, errors_as_results)
        if not self.lost and calls and calls[0][0] == "settle":
            self.lost = True
            raise TimeoutError
        return results


async def test_a_settlement_whose_answer_was_lost_counts_once_among_later_ones(
    valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    spool = Spool(tmp_path, "quota")
    flaky = AnswerLostOnce(client, "t:", spool=spool)
    await flaky.start()

    async def settle_one() -> None:
        reservation = await flaky.reserve(found, 50)
        assert isinstance(reservation, Reservation)
        flaky.settle(reservation, 20)
        await flaky.flush()

    try:
        found = limits(flaky, LimitRule(name="many", subject="user", tokens_per_hour=10_000))
        for _ in range(4):  # the first settlement lands unanswered and is spooled
            await settle_one()
        spooled = spool.path.read_bytes()
        assert await flaky.replay_spool() == 1
        # A crash after the replay, before it dropped the record: found again, still once.
        await settle_one()
        spool.path.write_bytes(spooled)
        assert await flaky.replay_spool() == 1
        await settle_one()
        after = await flaky.reserve(found, 1)
        assert isinstance(after, Reservation) and after.used == [6 * 20 + 1]
    finally:
        await flaky.close()
        await client.aclose()


class SettlementFailsOnce(QuotaStore):
    """A store whose first settlement never leaves (the connection refused)."""

    failed = False

    async def _run(self, calls: Any, errors_as_results: bool = False) -> list[Any]:
        if not self.failed and calls and calls[0][0] == "settle":
            self.failed = True
            raise ConnectionError("the store is down")
        return await super()._run(calls, errors_as_results)


async def test_a_settlement_spooled_just_before_a_stop_is_replayed_by_the_stop(
    valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    spool = Spool(tmp_path, "quota")
    flaky = SettlementFailsOnce(client, "t:", spool=spool)
    await flaky.start()
    found = limits(flaky, LimitRule(name="hundred", subject="user", tokens_per_hour=10_000))
    reservation = await flaky.reserve(found, 50)
    assert isinstance(reservation, Reservation)
    flaky.settle(reservation, 20)
    await flaky.flush()  # the store blinked: the correction (-30) is spooled
    assert spool.pending() == 1
    # The store is back; the gateway stops before its next replay (every 2 s). Its
    # spool may never see another start (a pod's emptyDir goes with the pod).
    await flaky.close()
    assert spool.pending() == 0
    after = QuotaStore(client, "t:")
    try:
        used = await after.reserve(found, 1)
        assert isinstance(used, Reservation) and used.used == [20 + 1]
    finally:
        await after.close()
        await client.aclose()


class StoreGoesQuiet:
    """A TCP relay in front of the store that passes everything until the first
    reservation, passes it on, and then goes quiet both ways: the store runs the
    reservation, its answer never comes back, and nothing sent after it arrives (a store
    too slow to answer, as a rolling deploy meets it)."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._reserve_sha = (
            hashlib.sha1(script_source("quota_reserve").encode(), usedforsecurity=False)
            .hexdigest()
            .encode()
        )
        self._server: asyncio.Server | None = None
        self._ends: list[asyncio.StreamWriter] = []
        self._relays: set[asyncio.Task[None]] = set()
        self.quiet = False
        # The store answered (the reservation ran), and the answer went nowhere.
        self.answer_dropped = asyncio.Event()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def close(self) -> None:
        for end in self._ends:
            end.close()
        await asyncio.gather(*self._relays, return_exceptions=True)
        if self._server is not None:
            self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        store_reader, store_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._ends += [writer, store_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, asks: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if self.quiet:
                        # Read and dropped: neither the store nor the client sees it.
                        if not asks:
                            self.answer_dropped.set()
                        continue
                    dst.write(data)
                    await dst.drain()
                    self.quiet = asks and self._reserve_sha in data
            dst.close()

        await asyncio.gather(pipe(reader, store_writer, True), pipe(store_reader, writer, False))


async def test_a_reservation_cut_short_by_shutdown_is_given_back_by_the_next_start(
    valkey: EmbeddedValkey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gateway stops while its reservation is in flight on a store too slow to
    # answer: shutdown gives up on it after its grace, and the store cannot take a
    # give-back either. The store ran the reservation; before, its quota stayed held
    # until its window ended, over-charging the subject on every replica.
    monkeypatch.setattr(quota_store_module, "RESERVE_CLOSE_GRACE_S", 0.05)
    monkeypatch.setattr(quota_store_module, "SETTLE_TIMEOUT_S", 0.05)
    direct = connect(valkey.url, 5.0)
    await direct.flushdb()
    relay = StoreGoesQuiet(int(valkey.url.rsplit(":", 1)[1].split("/")[0]))
    # A socket timeout past the grace: the round trip is still waiting when it ends.
    client = connect(await relay.start(), 60.0)
    stopping = QuotaStore(client, "t:", spool=Spool(tmp_path, "quota"))
    await stopping.start()
    found = limits(
        stopping,
        LimitRule(name="budget", subject="user", tokens_per_hour=10_000),
        LimitRule(name="calls", subject="user", requests_per_hour=100),
    )
    reserving = asyncio.create_task(stopping.reserve(found, 700))
    try:
        await relay.answer_dropped.wait()
        await stopping.close()
        with pytest.raises(ConnectionError):
            await reserving
    finally:
        await relay.close()
        await client.aclose()
    starting = QuotaStore(direct, "t:", spool=Spool(tmp_path, "quota"))
    try:
        # The give-back never reached the store: it waits in the spool.
        assert int(await direct.get(found[0].key("t:"))) == 700
        await starting.replay_spool()  # as the next start's upkeep does
        after = await starting.reserve(found, 1)
        # As if the request that never got its answer had never been sent.
        assert isinstance(after, Reservation) and after.used == [1, 1]
    finally:
        await starting.close()
        await direct.aclose()
