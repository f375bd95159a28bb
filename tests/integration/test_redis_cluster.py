"""The quota and usage stores on a three-node Valkey Cluster (``store.url: redis+cluster://``).

The same guarantees as on one Valkey must hold when a request's subjects live
on different nodes: admission stays atomic per subject, token reservations are
capped and settled, overrides apply, a refusal on one node gives back what
other nodes reserved, usage rollups of hours spread over nodes add up, and the
management listing scans every primary. Subject names below were picked so that
their hash tags fall on different nodes; the first test checks that they still do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from extproc.auth.api_keys import ApiKey, key_digest
from extproc.auth.stored_keys import KeyIdRetiredError, StoredKeys
from extproc.config.quota_model import (
    CostQuota,
    LimitRule,
    QuotaPeriod,
    QuotasConfig,
    TokenQuota,
)
from extproc.context import Identity
from extproc.management.quotas import QuotaAdmin
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import Denial, QuotaStore, RecordClaim, Reservation
from extproc.store.connection import StoreClient, connect
from extproc.store.usage import UsageEntry, UsageStore, totals_of
from tests.integration.valkey_cluster import ValkeyCluster

pytestmark = pytest.mark.timeout(60)

PREFIX = "t:"
# One subject of each kind per node (slots 0-5460, 5461-10921, 10922-16383).
API_KEYS = ("dave", "k1", "k2")
USERS = ("alice", "ivan", "victor")
GROUPS = ("eng", "ops", "sales")
# Her API key, user and group live on three different nodes.
ALICE = Identity(method="api_key", api_key_id="k1", user_id="alice", group_id="sales")

# redis-py (8.1) refuses ClusterPipeline.evalsha (redis/redis-py#2914, unblocked upstream
# by #4206). QuotaStore._run sends one subject's script as a lone EVALSHA, which works,
# but queues two or more subjects with pipe.evalsha: on a cluster such a reserve() or
# settle_now() raises before anything is sent.


@pytest.fixture
async def client(cluster: ValkeyCluster) -> AsyncIterator[StoreClient]:
    opened = connect(cluster.url, 2.0)
    await opened.flushdb()  # every primary
    yield opened
    await opened.aclose()


@pytest.fixture
async def store(client: StoreClient) -> AsyncIterator[QuotaStore]:
    quota_store = QuotaStore(client, PREFIX)
    await quota_store.start()
    yield quota_store
    await quota_store.close()


def limits(store: QuotaStore, *rules: LimitRule, identity: Identity = ALICE) -> list[Limit]:
    return RuleSet(QuotasConfig(rules=rules)).limits_for(identity, {}, "gpt-4o", store.now())


# Hourly rules named after their subject and what they count ("key-tokens",
# "group-requests"): a denial names the rule that refused.
def _rule_name(subject: str, counts: str) -> str:
    return f"{'key' if subject == 'api_key' else subject}-{counts}"


def tokens_per_hour(subject: str, limit: int) -> LimitRule:
    return LimitRule(name=_rule_name(subject, "tokens"), subject=subject, tokens_per_hour=limit)


def requests_per_hour(subject: str, limit: int) -> LimitRule:
    return LimitRule(name=_rule_name(subject, "requests"), subject=subject, requests_per_hour=limit)


async def token_counters(client: StoreClient, found: list[Limit]) -> list[int]:
    """What the token limits among ``found`` hold, each read from its own node."""
    return [int(await client.get(limit.key(PREFIX))) for limit in found if limit.kind == "t"]


async def node_of(client: StoreClient, cluster: ValkeyCluster, key: str) -> int:
    """The index of the node serving ``key``, as the server and the client both see it."""
    slot = int(await client.cluster_keyslot(key))
    assert slot == client.keyslot(key)
    owner = cluster.owner_of(slot)
    assert client.get_node_from_key(key).port == cluster.nodes[owner].port
    return owner


async def test_the_chosen_subjects_live_on_different_nodes(
    client: StoreClient, cluster: ValkeyCluster
) -> None:
    for kind, names in (("api_key", API_KEYS), ("user", USERS), ("group", GROUPS)):
        nodes = [await node_of(client, cluster, f"{PREFIX}q:{{{kind}:{name}}}:x") for name in names]
        assert nodes == [0, 1, 2], kind
    alice = [ALICE.api_key_id, ALICE.user_id, ALICE.group_id]
    keys = [
        f"{PREFIX}q:{{{kind}:{name}}}"
        for kind, name in zip(("api_key", "user", "group"), alice, strict=True)
    ]
    assert {await node_of(client, cluster, key) for key in keys} == {0, 1, 2}


async def test_concurrent_requests_on_every_node_never_pass_a_request_limit_together(
    store: QuotaStore,
) -> None:
    rule = LimitRule(name="ten", subject="api_key", requests_per_hour=10)
    per_key = [
        limits(store, rule, identity=Identity(method="api_key", api_key_id=key)) for key in API_KEYS
    ]
    attempts = [
        (key, found) for key, found in zip(API_KEYS, per_key, strict=True) for _ in range(50)
    ]

    results = await asyncio.gather(*(store.reserve(found, 1) for _, found in attempts))

    for key in API_KEYS:
        admitted = [
            result
            for (owner, _), result in zip(attempts, results, strict=True)
            if owner == key and isinstance(result, Reservation)
        ]
        assert sorted(r.used[0] for r in admitted) == list(range(1, 11)), key


async def test_concurrent_refusals_on_one_node_leave_nothing_reserved_on_the_others(
    store: QuotaStore, client: StoreClient
) -> None:
    found = limits(
        store,
        requests_per_hour("api_key", 10),
        tokens_per_hour("user", 100_000),
        tokens_per_hour("group", 100_000),
    )

    results = await asyncio.gather(*(store.reserve(found, 7) for _ in range(50)))
    await store.flush()  # the give-backs go out with the next settlement batch

    assert sum(isinstance(result, Reservation) for result in results) == 10
    assert await token_counters(client, found) == [70, 70]


async def test_the_request_crossing_a_token_budget_holds_its_whole_estimate_on_each_node(
    store: QuotaStore,
) -> None:
    # Held whole: capped at what remained, an earlier request settling under its own
    # estimate made room that was not there (docs/quotas.md).
    found = limits(store, tokens_per_hour("user", 100), tokens_per_hour("group", 1000))
    first = await store.reserve(found, 70)
    second = await store.reserve(found, 70)
    third = await store.reserve(found, 70)
    assert isinstance(first, Reservation) and first.reserved == [70, 70]
    assert isinstance(second, Reservation) and second.reserved == [70, 70]
    assert isinstance(third, Denial) and third.limit.rule == "user-tokens" and third.used == 140


async def test_a_hard_capped_token_reservation_is_capped_at_what_remains_on_each_node(
    store: QuotaStore,
) -> None:
    # Under a hard cap the answer is lowered to fit what remains: all it can use, on the
    # capped subject's node and, once every node admitted it, on the others too.
    capped = tokens_per_hour("user", 100).model_copy(update={"hard_cap": True})
    found = limits(store, capped, tokens_per_hour("group", 1000))
    first = await store.reserve(found, 70)
    second = await store.reserve(found, 70)
    third = await store.reserve(found, 70)
    assert isinstance(first, Reservation) and first.reserved == [70, 70]
    assert isinstance(second, Reservation) and second.reserved == [30, 30]
    assert isinstance(third, Denial) and third.limit.rule == "user-tokens" and third.used == 100


async def test_a_hard_cap_too_short_for_the_prompt_leaves_nothing_counted_on_any_node(
    store: QuotaStore, client: StoreClient
) -> None:
    # The user's capped hour refuses in its own node's script (60 left, the request needs
    # 80 of it); the key's and the group's scripts, on the other nodes, had counted the
    # request, and get it back: the key's one request of the hour is there for the next.
    capped = tokens_per_hour("user", 100).model_copy(update={"hard_cap": True})
    found = limits(store, requests_per_hour("api_key", 1), capped, tokens_per_hour("group", 1000))
    [user_hour] = [limit for limit in found if limit.rule == "user-tokens"]
    await client.set(user_hour.key(PREFIX), 40)

    refused = await store.reserve(found, 500, room=80)
    await store.flush()

    assert isinstance(refused, Denial) and refused.too_short
    counted = {limit.rule: int(await client.get(limit.key(PREFIX)) or 0) for limit in found}
    assert counted == {"key-requests": 0, "user-tokens": 40, "group-tokens": 0}
    assert isinstance(await store.reserve(found, 500, room=60), Reservation)


async def test_a_budget_in_dollars_beside_a_hard_capped_token_budget_on_other_nodes(
    store: QuotaStore, client: StoreClient
) -> None:
    # The group's dollars (on one node) are reserved at the request's cost estimate,
    # never lowered by the user's hard cap (on another node), which caps tokens; once
    # settled, they count the real cost and hold nothing.
    capped = tokens_per_hour("user", 100).model_copy(update={"hard_cap": True})
    budget = LimitRule(name="group-dollars", subject="group", cost_quota=CostQuota(limit_usd=1))
    found = limits(store, capped, budget)
    reservation = await store.reserve(found, 150, 40_000)
    assert isinstance(reservation, Reservation)
    reserved = zip(found, reservation.reserved, strict=True)
    kinds = {limit.kind: amount for limit, amount in reserved}
    assert kinds == {"t": 100, "c": 40_000}

    store.settle(reservation, 60, 12_345)
    await store.flush()

    dollars = next(limit for limit in found if limit.kind == "c")
    assert int(await client.get(dollars.key(PREFIX))) == 12_345
    assert int(await client.get(dollars.key(PREFIX) + ":held") or 0) == 0
    assert await token_counters(client, found) == [60]


async def test_settlement_replaces_the_estimates_with_real_usage_on_each_node(
    store: QuotaStore, client: StoreClient
) -> None:
    found = limits(store, tokens_per_hour("user", 100), tokens_per_hour("api_key", 100))
    reservation = await store.reserve(found, 80)
    assert isinstance(reservation, Reservation)

    await store.settle_now([(limit, 12 - 80) for limit in found])

    assert await token_counters(client, found) == [12, 12]
    after = await store.reserve(found, 1)
    assert isinstance(after, Reservation) and after.used == [13, 13]


async def test_an_override_changes_the_limit_in_force_on_every_node(
    store: QuotaStore, client: StoreClient
) -> None:
    rule = LimitRule(name="few", subject="group", requests_per_hour=1)
    for group in GROUPS:
        found = limits(store, rule, identity=Identity(method="jwt", group_id=group))
        assert isinstance(await store.reserve(found, 1), Reservation)
        assert isinstance(await store.reserve(found, 1), Denial)

        await client.hset(found[0].overrides_key(PREFIX), found[0].override_field, 3)

        granted = await store.reserve(found, 1)
        assert isinstance(granted, Reservation) and granted.effective == [3], group


async def test_a_refusal_on_one_node_gives_back_what_other_nodes_reserved(
    store: QuotaStore, client: StoreClient
) -> None:
    found = limits(
        store,
        tokens_per_hour("api_key", 1000),
        tokens_per_hour("user", 1000),
        requests_per_hour("group", 1),
    )
    assert isinstance(await store.reserve(found, 100), Reservation)

    refused = await store.reserve(found, 100)
    await store.flush()  # the give-back goes out with the next settlement batch

    assert isinstance(refused, Denial) and refused.limit.rule == "group-requests"
    assert await token_counters(client, found) == [100, 100]


async def test_scripts_lost_on_every_node_are_loaded_again(
    store: QuotaStore, client: StoreClient
) -> None:
    # What a failover to a replica that never loaded them looks like.
    found = limits(store, requests_per_hour("api_key", 5), requests_per_hour("user", 5))
    await client.script_flush()

    granted = await store.reserve(found, 1)

    assert isinstance(granted, Reservation) and granted.used == [1, 1]


async def test_scripts_lost_on_one_node_do_not_reserve_twice_on_the_others(
    store: QuotaStore, client: StoreClient, cluster: ValkeyCluster
) -> None:
    # One node restarted (or a replica took over) without the scripts: the calls to
    # the other nodes already ran, and must not run again when the rest is resent.
    found = limits(
        store,
        tokens_per_hour("api_key", 100_000),
        tokens_per_hour("user", 100_000),
        tokens_per_hour("group", 100_000),
    )
    group_node = await node_of(client, cluster, found[2].key(PREFIX))
    with cluster.nodes[group_node].client() as node:
        node.script_flush()

    granted = await store.reserve(found, 300)

    assert isinstance(granted, Reservation) and granted.reserved == [300, 300, 300]
    assert await token_counters(client, found) == [300, 300, 300]


async def test_usage_rollups_of_hours_on_different_nodes_add_up(
    client: StoreClient, cluster: ValkeyCluster
) -> None:
    usage = UsageStore(client, PREFIX, retention_days=3)
    hours = [datetime(2026, 3, 1, hour, 20, tzinfo=UTC).timestamp() for hour in range(9, 15)]
    dims = {"route": "openai-chat", "provider": "mock"}
    for started in hours:
        await usage.record(UsageEntry(started, {**dims, "model": "gpt-4o"}, 10, 5))
    # A writer's batch: several hours in one call.
    await usage.record_totals(
        totals_of(
            [UsageEntry(started, {**dims, "model": "gpt-4o-mini"}, 7, 3) for started in hours]
            + [UsageEntry(hours[0], {**dims, "model": "gpt-4o"}, 100, 50)]
        ),
        "writer-batch-1",
    )
    buckets = [datetime.fromtimestamp(started, UTC).strftime("%Y%m%d%H") for started in hours]
    nodes = {await node_of(client, cluster, f"{PREFIX}usage:{bucket}") for bucket in buckets}
    assert len(nodes) > 1

    rows = await usage.query(
        datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC), ("model",)
    )
    morning = await usage.query(
        datetime(2026, 3, 1, 10, tzinfo=UTC), datetime(2026, 3, 1, 12, tzinfo=UTC), ("model",)
    )

    by_model = {row.dimensions["model"]: row for row in rows}
    assert (by_model["gpt-4o"].requests, by_model["gpt-4o"].prompt_tokens) == (7, 160)
    assert by_model["gpt-4o"].completion_tokens == 80
    # One request of gpt-4o-mini in each hour: all six hours read, from every node.
    assert (by_model["gpt-4o-mini"].requests, by_model["gpt-4o-mini"].total_tokens) == (6, 60)
    assert [(row.dimensions["model"], row.requests) for row in morning] == [
        ("gpt-4o", 2),
        ("gpt-4o-mini", 2),
    ]


async def test_listing_quota_subjects_scans_every_node(
    store: QuotaStore, client: StoreClient, cluster: ValkeyCluster
) -> None:
    rules = RuleSet(
        QuotasConfig(rules=(LimitRule(name="user-requests", subject="user", requests_per_hour=5),))
    )
    # Each user's current counter, as an admitted request leaves it (written directly,
    # so that the listing is checked apart from reserve()).
    counters = [
        rules.limits_for(Identity(method="jwt", user_id=user), {}, "gpt-4o", store.now())[0]
        for user in USERS
    ]
    for counter in counters:
        await client.incr(counter.key(PREFIX))
    assert [await node_of(client, cluster, c.key(PREFIX)) for c in counters] == [0, 1, 2]

    listed = await QuotaAdmin(client, PREFIX, store).subjects(rules, "user")

    assert [subject for subject, _ in listed] == sorted(USERS)


async def test_when_subjects_on_two_nodes_refuse_the_longest_lasting_limit_is_named(
    store: QuotaStore,
) -> None:
    # The user's minute (beside a lifetime quota it has room in) and the group's
    # month, on different nodes, both spent.
    lifetime = TokenQuota(limit=1_000_000, period=QuotaPeriod.LIFETIME)
    found = limits(
        store,
        LimitRule(name="user", subject="user", requests_per_minute=1, token_quota=lifetime),
        LimitRule(name="group-month", subject="group", token_quota=TokenQuota(limit=5)),
    )
    first = await store.reserve(found, 5)
    assert isinstance(first, Reservation)
    # Settled: spent, not held by a request still running (which would be a short wait).
    store.settle(first, 5)
    await store.flush()

    refused = await store.reserve(found, 5)

    # Naming the minute would tell the client to come back in seconds, to be refused again.
    assert isinstance(refused, Denial) and refused.limit.rule == "group-month"


async def test_run_time_api_keys_are_created_and_revoked_by_id_across_nodes(
    client: StoreClient,
) -> None:
    # A key's id and its record live in different slots; the id's keep and free are a
    # script on the id's node alone.
    keys = StoredKeys(client, PREFIX)
    created = []
    for key_id in ("ci-bot", "nightly", "batch"):
        secret, _ = await keys.create(run_time_key(key_id))
        created.append(secret)

    assert [stored.key.id for stored in await keys.list()] == ["batch", "ci-bot", "nightly"]
    # A rotation moves the id (its node) between two records (theirs).
    rotated, _, _ = await keys.rotate("nightly", 3600.0)
    created.append(rotated)
    assert await keys.lookup(key_digest(rotated)) is not None
    assert [stored.key.id for stored in await keys.list()] == ["batch", "ci-bot", "nightly"]
    for key_id in ("ci-bot", "nightly", "batch"):
        assert (await keys.revoke(key_id)).key.id == key_id
    for secret in created:
        assert await keys.lookup(key_digest(secret)) is None
    # Every id is retired (the script on the id's node), not given to a new key.
    for key_id in ("ci-bot", "nightly", "batch"):
        with pytest.raises(KeyIdRetiredError, match=f"API key id '{key_id}' belonged to"):
            await keys.create(run_time_key(key_id))


def run_time_key(key_id: str) -> ApiKey:
    return ApiKey(key_id, "alice", "eng", enabled=True, expires_at=None,
                  allowed_models=(), allowed_routes=())  # fmt: skip


async def test_a_reservation_whose_record_another_holds_leaves_nothing_reserved_on_any_node(
    store: QuotaStore, client: StoreClient
) -> None:
    # An A2A message continuing another caller's task: the record's claim rides in the
    # reservation's round trip (its own node), and the reservations on the subjects'
    # nodes are given back.
    found = limits(
        store,
        tokens_per_hour("api_key", 1000),
        tokens_per_hour("user", 1000),
        requests_per_hour("group", 5),
    )
    record = f"{PREFIX}agent_owner:task"
    mine = RecordClaim(record, "user:alice", 60)
    owners, admitted = await store.reserve_unless_claimed(found, 100, [mine])
    assert owners == ["user:alice"] and isinstance(admitted, Reservation)

    theirs = RecordClaim(record, "user:bob", 60)
    owners, refused = await store.reserve_unless_claimed(found, 100, [theirs])
    await store.flush()  # the give-backs go out with the next settlement batch

    assert owners == ["user:alice"] and refused is None
    assert await token_counters(client, found) == [100, 100]
    requests = next(limit for limit in found if limit.kind == "r")
    assert int(await client.get(requests.key(PREFIX))) == 1
