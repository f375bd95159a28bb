"""The store's scripts write all of a call or none of it, and a replay counts it once.

Redis keeps what a script wrote before an error. A real Valkey here, with keys under
the gateway's prefix that another tool (or a hand) left with another type or a value
that is no counter: each script meets them before its first write, so a settlement,
a give-back or a reservation either lands whole or leaves every counter as it was;
the spool sets a refused batch aside whole, and a batch replayed once the key is
mended lands exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from redis.exceptions import ResponseError

from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import QuotaStore, Reservation
from extproc.store.connection import StoreClient, connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.spool import Spool

P = "ao:"
ALICE = Identity(method="api_key", api_key_id="k1", user_id="alice", group_id="eng")
# Five token counters of one subject (Alice, the user) in one settle call, then two of
# her group in another.
RULES = (
    LimitRule(name="a", subject="user", tokens_per_minute=10**6, tokens_per_hour=10**6,
              tokens_per_day=10**6),
    LimitRule(name="b", subject="user", tokens_per_minute=10**6, tokens_per_hour=10**6),
    LimitRule(name="g", subject="group", tokens_per_minute=10**6, tokens_per_hour=10**6),
)  # fmt: skip
# What another tool left under the gateway's prefix, in place of a counter.
NOT_COUNTERS = {
    "a hash": ("hset", "x", "1"),
    "a decimal": ("set", "1.5"),
    "a word": ("set", "many"),
    "past 64 bits": ("set", str(2**63 - 10)),
}


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[StoreClient]:
    opened = connect(valkey.url, 2.0)
    await opened.flushdb()
    yield opened
    await opened.aclose()


@pytest.fixture
async def store(client: StoreClient, tmp_path: Path) -> AsyncIterator[QuotaStore]:
    quota_store = QuotaStore(client, P, Spool(tmp_path, "quota"))
    await quota_store.start()
    yield quota_store
    await quota_store.close()


def limits(store: QuotaStore, *rules: LimitRule) -> list[Limit]:
    return RuleSet(QuotasConfig(rules=rules or RULES)).limits_for(ALICE, {}, "gpt-4o", store.now())


async def counters(client: StoreClient, found: list[Limit]) -> list[int | None]:
    values = [await client.get(limit.key(P)) for limit in found]
    return [None if value is None else int(value) for value in values]


async def put_in_place(client: StoreClient, key: str, kind: str) -> None:
    command, *args = NOT_COUNTERS[kind]
    await client.delete(key)
    await getattr(client, command)(key, *args)


def rejected(tmp_path: Path) -> list[bytes]:
    path = tmp_path / "quota.rejected.jsonl"
    return path.read_bytes().splitlines() if path.exists() else []


@pytest.mark.parametrize("kind", list(NOT_COUNTERS))
async def test_a_settlement_meeting_a_foreign_key_changes_none_of_its_subjects_counters(
    store: QuotaStore, client: StoreClient, tmp_path: Path, kind: str
) -> None:
    found = limits(store)
    user = [limit for limit in found if limit.subject_kind == "user"]
    group = [limit for limit in found if limit.subject_kind == "group"]
    assert (len(user), len(group)) == (5, 2)
    others = [limit for index, limit in enumerate(user) if index != 2]
    reservation = await store.reserve(found, 100)
    assert isinstance(reservation, Reservation)
    # The third of Alice's five counters is not a counter any more.
    await put_in_place(client, user[2].key(P), kind)

    # The answer used 1,000 tokens: 100 were reserved (a capped estimate).
    store.settle(reservation, 1000)
    await store.flush()

    # Her call wrote nothing (before: the first two counters settled, the last two kept
    # the whole reservation); her group's call, beside it in the batch, landed.
    assert await counters(client, others) == [100] * 4
    assert await counters(client, group) == [1000, 1000]
    # The store refuses the batch whatever the replay: set aside whole (before: the
    # replay found her marker and dropped the batch as landed, logging nothing).
    assert await store.replay_spool() == 1
    assert len(rejected(tmp_path)) == 1
    assert await counters(client, others) == [100] * 4
    assert await counters(client, group) == [1000, 1000]

    # A person mends the key and applies the line: every part counts once, the group's
    # (which had landed) not twice.
    await client.delete(user[2].key(P))
    await client.set(user[2].key(P), 100)
    Spool(tmp_path, "quota").append(orjson.loads(rejected(tmp_path)[0]))
    assert await store.replay_spool() == 1
    assert await store.replay_spool() == 0
    assert await counters(client, found) == [1000] * 7


async def test_a_settlement_replayed_after_its_key_was_mended_lands_once(
    store: QuotaStore, client: StoreClient, tmp_path: Path
) -> None:
    found = limits(store)
    mended = found[2].key(P)
    reservation = await store.reserve(found, 100)
    assert isinstance(reservation, Reservation)
    await put_in_place(client, mended, "a word")
    store.settle(reservation, 10)
    await store.flush()
    spooled = Spool(tmp_path, "quota").path.read_bytes()

    await client.set(mended, 100)
    assert await store.replay_spool() == 1
    assert await counters(client, found) == [10] * 7
    # Found again (a crash before the replay dropped it): counted once all the same.
    Spool(tmp_path, "quota").path.write_bytes(spooled)
    assert await store.replay_spool() == 1
    assert await counters(client, found) == [10] * 7
    assert rejected(tmp_path) == []


async def test_a_give_back_meeting_a_foreign_key_gives_back_nothing_until_it_is_mended(
    store: QuotaStore, client: StoreClient
) -> None:
    found = [limit for limit in limits(store) if limit.subject_kind == "user"]
    # A reservation the gateway sent and never heard back from: given back by its id.
    call = store._reserve_call(found, 100, "lost-call")
    [answer] = await store._run([("reserve", call.keys, call.args)])
    assert int(answer[0]) == 1
    await put_in_place(client, found[3].key(P), "a hash")

    with pytest.raises(ResponseError):
        await store._settle_raw([], [call.undo], "give-back")

    # Before: the marker said "given back" and the first three counters were, the
    # last one stayed reserved, and the give-back sent again gave back nothing more.
    values = await counters(client, [*found[:3], found[4]])
    assert values == [100] * 4
    await client.delete(found[3].key(P))
    await client.set(found[3].key(P), 100)
    await store._settle_raw([], [call.undo], "give-back")
    await store._settle_raw([], [call.undo], "give-back again")
    assert await counters(client, found) == [0] * 5


@pytest.mark.parametrize("kind", ["a decimal", "past 64 bits"])
async def test_a_reservation_meeting_a_foreign_counter_reserves_nothing(
    store: QuotaStore, client: StoreClient, kind: str
) -> None:
    """A shadow rule's counter holding what INCRBY cannot add to: met after the first
    counters were reserved, it left them reserved, with no marker to give them back by."""
    found = limits(
        store,
        LimitRule(name="enforced", subject="user", tokens_per_day=10**6),
        LimitRule(name="shadow", subject="user", tokens_per_hour=10**6, mode="shadow"),
    )
    assert [limit.enforce for limit in found] == [True, False]
    await put_in_place(client, found[1].key(P), kind)

    with pytest.raises(ResponseError):
        await store.reserve(found, 100)

    assert await counters(client, found[:1]) == [None]


async def test_an_override_that_is_no_integer_reserves_nothing(
    store: QuotaStore, client: StoreClient
) -> None:
    found = limits(
        store,
        LimitRule(name="first", subject="user", tokens_per_day=10**6),
        LimitRule(name="second", subject="user", tokens_per_hour=10**6),
    )
    # Set by hand: the management API writes whole numbers only.
    await client.hset(found[1].overrides_key(P), found[1].override_field, "150.5")

    with pytest.raises(ResponseError):
        await store.reserve(found, 100)

    assert await counters(client, found) == [None, None]


@pytest.fixture
async def full_store(tmp_path: Path) -> AsyncIterator[tuple[StoreClient, QuotaStore]]:
    """A Valkey of its own, to fill up to its maxmemory (noeviction, as a store of
    counters must run)."""
    server = EmbeddedValkey(tmp_path / "valkey")
    server.start()
    opened = connect(server.url, 2.0)
    quota_store = QuotaStore(opened, P, Spool(tmp_path, "quota"))
    await quota_store.start()
    try:
        yield opened, quota_store
    finally:
        await quota_store.close()
        await opened.aclose()
        server.stop()


async def test_a_refused_part_does_not_set_aside_a_part_the_store_could_not_write_yet(
    full_store: tuple[StoreClient, QuotaStore], tmp_path: Path
) -> None:
    """One batch, two subjects: Alice's counter is of another type (refused for good),
    her group's call meets a store out of memory (OOM: nothing written, to try again).
    The replay waits for the store rather than set the batch aside with the group's part
    in it, never applied; once there is memory again, that part lands, once."""
    client, store = full_store
    found = limits(store)
    user = [limit for limit in found if limit.subject_kind == "user"]
    group = [limit for limit in found if limit.subject_kind == "group"]
    reservation = await store.reserve(found, 100)
    assert isinstance(reservation, Reservation)
    await put_in_place(client, user[2].key(P), "a hash")
    await client.config_set("maxmemory-policy", "noeviction")
    # Measured before the filler: after it, the figure may still count the 2 MB command's
    # own buffer, which the server frees, and a limit under that figure let writes in.
    before = int((await client.info("memory"))["used_memory"])
    await client.set("filler", "x" * 2_000_000)
    await client.config_set("maxmemory", before + 1_000_000)

    store.settle(reservation, 10)
    await store.flush()
    # The group's call was refused whole by OOM (its marker is its first write).
    assert await counters(client, group) == [100, 100]
    assert await store.replay_spool() == 0
    assert Spool(tmp_path, "quota").pending() == 1

    await client.delete("filler")
    await client.config_set("maxmemory", 0)
    assert await store.replay_spool() == 1
    assert await counters(client, group) == [10, 10]
    assert len(rejected(tmp_path)) == 1
    others = [limit for index, limit in enumerate(user) if index != 2]
    assert await counters(client, others) == [100] * 4
