"""A reset generation rewritten by hand while requests run is read one way by the settle
and give-back scripts too, as by the reserve and reset scripts and ``extproc quota get``.

A running request's settlement and a lost reservation's give-back apply only while the
limit's generation is the one the reservation saw. They compared it with Lua's
``tonumber``, which the reserve script had stopped using: ``01`` (or `` 1``, ``1.0``)
counted as generation 1 there, so the settlement landed on a subject whose every new
request the reserve script refused as unreadable, and ``1.5`` (or `` 2``) counted as
another generation, so it was dropped without a word: the request stayed charged its
whole estimate, and held it. Now each script reads such a generation as the same
unreadable key and writes nothing: the batch is set aside (``quota.rejected.jsonl``,
``aigw_spool_rejected_records_total``), and lands once a person mends the key and
applies it. Against a real Valkey.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from redis.exceptions import ResponseError

from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.management.quotas import QuotaAdmin, UnreadableStateError
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import QuotaStore, Reservation, generation_field
from extproc.store.connection import StoreClient
from extproc.store.spool import Spool
from tests.unit.test_store_scripts_all_or_nothing import ALICE, P, client, rejected, store

__all__ = ["client", "store"]  # the store's scripts' tests' flushed Valkey and spooled store
RULE = LimitRule(name="day", subject="user", tokens_per_day=10**6)
# What a person may write over generation 1 with HSET: Lua's tonumber reads each as a
# number (1, or another), HINCRBY and the reserve script as none.
SPELLINGS = ["01", " 1", "1.0", "1e0", "0x1", "+1", "1.5", " 2", "2 "]


async def _generation_one(store: QuotaStore, client: StoreClient) -> Limit:
    """Alice's daily token limit, reset once by an operator (generation 1)."""
    [limit] = RuleSet(QuotasConfig(rules=(RULE,))).limits_for(ALICE, {}, "gpt-4o", store.now())
    await client.hset(limit.overrides_key(P), generation_field(limit), "1")
    return limit


async def _write(client: StoreClient, limit: Limit, spelling: str) -> None:
    await client.hset(limit.overrides_key(P), generation_field(limit), spelling)


async def _used(client: StoreClient, limit: Limit) -> tuple[int, int]:
    """The counter and its held amount."""
    counter = await client.get(limit.key(P))
    held = await client.get(f"{limit.key(P)}:held")
    return int(counter or 0), int(held or 0)


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_a_settlement_meeting_a_hand_written_generation_waits_for_it_to_be_mended(
    store: QuotaStore, client: StoreClient, tmp_path: Path, spelling: str
) -> None:
    limit = await _generation_one(store, client)
    reservation = await store.reserve([limit], 500)
    assert isinstance(reservation, Reservation)
    assert reservation.generations == [1]
    await _write(client, limit, spelling)

    # The answer used 10 tokens. The reserve script reads the generation as no integer
    # (the subject's next request meets a store failure), and so does the settlement.
    with pytest.raises(ResponseError, match="BADOVERRIDE"):
        await store.reserve([limit], 500)
    store.settle(reservation, 10)
    await store.flush()
    assert await store.replay_spool() == 1
    assert len(rejected(tmp_path)) == 1
    # Nothing written: still the whole estimate, held (before, "01" settled it and
    # "1.5" dropped the settlement, each without a word).
    assert await _used(client, limit) == (500, 500)

    # A person mends the generation and applies the line set aside: it lands, once.
    await _write(client, limit, "1")
    Spool(tmp_path, "quota").append(orjson.loads(rejected(tmp_path)[0]))
    assert await store.replay_spool() == 1
    assert await _used(client, limit) == (10, 0)


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_a_give_back_meeting_a_hand_written_generation_gives_back_nothing_yet(
    store: QuotaStore, client: StoreClient, spelling: str
) -> None:
    limit = await _generation_one(store, client)
    # A reservation the gateway sent and never heard back from: given back by its id.
    call = store._reserve_call([limit], 500, "lost-call")
    [answer] = await store._run([("reserve", call.keys, call.args)])
    assert int(answer[0]) == 1
    await _write(client, limit, spelling)

    with pytest.raises(ResponseError, match="BADOVERRIDE"):
        await store._settle_raw([], [call.undo], "give-back")
    assert await _used(client, limit) == (500, 500)

    # Mended: given back whole, and once (the marker says so).
    await _write(client, limit, "1")
    await store._settle_raw([], [call.undo], "give-back")
    await store._settle_raw([], [call.undo], "give-back again")
    assert await _used(client, limit) == (0, 0)


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_every_reader_of_a_generation_reads_a_hand_written_one_alike(
    store: QuotaStore, client: StoreClient, spelling: str
) -> None:
    limit = await _generation_one(store, client)
    await _write(client, limit, spelling)
    admin = QuotaAdmin(client, P, store)
    with pytest.raises(UnreadableStateError, match="resets' holds no integer"):
        await admin.read([limit])
    with pytest.raises(ResponseError, match="BADOVERRIDE"):
        await admin.reset([limit])
    with pytest.raises(ResponseError, match="BADOVERRIDE"):
        await store.reserve([limit], 500)
