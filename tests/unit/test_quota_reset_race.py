"""An operator's reset while requests admitted before it are still running, on a real Valkey.

Their settlements and give-backs land after the reset: what they reserved went with
the reset, so their corrections must not come off the usage counted since (nor be
merged with the corrections of requests admitted after it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity
from extproc.management.quotas import QuotaAdmin
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import QuotaStore, Reservation, generation_field
from extproc.store.connection import StoreClient, connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.spool import Spool

PREFIX = "t:"
BEA = Identity(method="api_key", api_key_id="k9", user_id="bea", group_id="ops")
HOURLY = LimitRule(name="hourly", subject="user", tokens_per_hour=100_000)


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[StoreClient]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def store(client: StoreClient, tmp_path: Path) -> AsyncIterator[QuotaStore]:
    quota_store = QuotaStore(client, PREFIX, spool=Spool(tmp_path, "quota"))
    await quota_store.start()
    yield quota_store
    await quota_store.close()


def hourly(store: QuotaStore) -> list[Limit]:
    return RuleSet(QuotasConfig(rules=(HOURLY,))).limits_for(BEA, {}, "gpt-4o", store.now())


async def admitted(store: QuotaStore, tokens: int) -> Reservation:
    reservation = await store.reserve(hourly(store), tokens)
    assert isinstance(reservation, Reservation)
    return reservation


async def reset(store: QuotaStore, client: StoreClient) -> None:
    await QuotaAdmin(client, PREFIX, store).reset(hourly(store))


async def used(store: QuotaStore, client: StoreClient) -> int:
    return int(await client.get(hourly(store)[0].key(PREFIX)) or 0)


async def test_requests_before_and_after_a_reset_settled_in_one_batch(
    store: QuotaStore, client: StoreClient
) -> None:
    """Merged into one change per counter, the earlier request's give-back of 990
    erased the later one's 100 tokens."""
    before = await admitted(store, 1000)
    await reset(store, client)
    after = await admitted(store, 1000)

    store.settle(before, 10)
    store.settle(after, 100)
    await store.flush()

    assert await used(store, client) == 100


async def test_a_lost_reservation_given_back_after_a_reset_leaves_later_usage(
    store: QuotaStore, client: StoreClient
) -> None:
    """A reservation whose answer never came is given back by its id with the next
    batch: after a reset, that came off the usage of the requests admitted since."""
    call = store._reserve_call(hourly(store), 1000, "lost-before-reset")
    [answer] = await store._run_reserve([call])
    assert int(answer[0]) == 1  # it ran: 1000 reserved, its answer lost on the way
    await reset(store, client)
    await admitted(store, 40)

    store._queue_undos([call])
    await store.flush()

    assert await used(store, client) == 40


async def test_a_give_back_without_a_reset_still_gives_back(
    store: QuotaStore, client: StoreClient
) -> None:
    call = store._reserve_call(hourly(store), 1000, "lost")
    await store._run_reserve([call])
    await admitted(store, 40)

    store._queue_undos([call])
    await store.flush()

    assert await used(store, client) == 40


class StoreDown(QuotaStore):
    """A store whose settlements fail while ``down``: they are spooled."""

    down = False

    async def _settle_raw(self, *args: object, **kwargs: object) -> None:
        if self.down:
            raise ConnectionError("store down")
        await super()._settle_raw(*args, **kwargs)  # type: ignore[arg-type]


async def test_a_settlement_spooled_before_a_reset_is_replayed_without_erasing_later_usage(
    client: StoreClient, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, "quota")
    store = StoreDown(client, PREFIX, spool=spool)
    await store.start()
    try:
        before = await admitted(store, 1000)
        store.down = True
        store.settle(before, 10)
        await store.flush()  # spooled
        store.down = False
        await reset(store, client)
        await admitted(store, 40)

        assert await store.replay_spool() == 1
        assert await used(store, client) == 40
    finally:
        await store.close()


async def test_a_settlement_spooled_by_the_previous_version_still_replays(
    store: QuotaStore, client: StoreClient, tmp_path: Path
) -> None:
    """Its records name no generation (four values per change, two per give-back):
    they apply as they did."""
    reservation = await admitted(store, 1000)
    limit = reservation.limits[0]
    ttl = limit.window.ttl_seconds(store.now())
    lost = store._reserve_call(hourly(store), 500, "lost-old-version")
    await store._run_reserve([lost])
    record = {
        "id": "old-batch",
        "changes": [[limit.subject_tag, limit.key(PREFIX), 10 - 1000, ttl]],
        "undo": [[lost.keys[0], lost.keys[1::2]]],
    }
    spool_file = tmp_path / "old"
    spool_file.mkdir()
    old_spool = Spool(spool_file, "quota")
    old_spool.append(record)
    replaying = QuotaStore(client, PREFIX, spool=old_spool)

    assert await replaying.replay_spool() == 1
    assert await used(store, client) == 10


async def test_a_reset_meeting_a_generation_that_is_no_integer_resets_nothing(
    store: QuotaStore, client: StoreClient
) -> None:
    """Redis keeps what a script wrote before an error: a reset meeting, on its second
    limit, a generation another tool (or a hand) left as no integer had deleted the
    counters before it, the second one with its generation unchanged."""
    rules = (
        LimitRule(name="daily", subject="user", tokens_per_day=100_000),
        LimitRule(name="hourly", subject="user", tokens_per_hour=100_000),
    )
    found = RuleSet(QuotasConfig(rules=rules)).limits_for(BEA, {}, "gpt-4o", store.now())
    assert isinstance(await store.reserve(found, 500), Reservation)
    overrides = found[1].overrides_key(PREFIX)
    await client.hset(overrides, generation_field(found[1]), "many")

    with pytest.raises(ResponseError):
        await QuotaAdmin(client, PREFIX, store).reset(found)

    assert [int(await client.get(limit.key(PREFIX))) for limit in found] == [500, 500]
    assert await client.hget(overrides, generation_field(found[0])) is None
