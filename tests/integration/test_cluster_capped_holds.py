"""On a three-node Valkey Cluster, a request a hard cap caps holds no more of its other
subjects' budgets than the cap lets it use.

Alice's API key, user and group live on three nodes, so each subject's reserve script
runs on its own node and sees only its own budgets. Her user has a hard-capped day with
1,000 tokens left; a Claude Code request (an estimate of 32,006) is capped to them. The
key's and the group's scripts reserved the whole 32,006 and held it while the request
ran: the group's other members met "held by running requests" 429s for tokens no
running request could use. Now what they hold past the cap is given back as soon as
every subject answered, and the settlement gives back exactly what stays held.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import QuotaStore, Reservation, held_key
from extproc.store.connection import StoreClient, connect
from extproc.store.spool import Spool
from tests.integration.valkey_cluster import STORE_TIMEOUT_S, ValkeyCluster

pytestmark = pytest.mark.timeout(90)

PREFIX = "cap:"
# Her API key, user and group live on nodes 1, 0 and 2 (test_cluster_node_down).
ALICE = Identity(method="api_key", api_key_id="k1", user_id="alice", group_id="sales")
RULES = (
    LimitRule(name="key-hour", subject="api_key", tokens_per_hour=1_000_000),
    LimitRule(name="alice-day", subject="user", tokens_per_day=1_000, hard_cap=True),
    LimitRule(name="team-hour", subject="group", tokens_per_hour=100_000),
)
ESTIMATE = 32_006  # Claude Code's max_tokens of 32,000 and a short prompt


@pytest.fixture
async def client(cluster: ValkeyCluster) -> AsyncIterator[StoreClient]:
    opened = connect(cluster.url, STORE_TIMEOUT_S)
    await opened.flushdb()
    yield opened
    await opened.aclose()


@pytest.fixture
async def store(client: StoreClient, tmp_path: Path) -> AsyncIterator[QuotaStore]:
    quota_store = QuotaStore(client, PREFIX, Spool(tmp_path, "quota"))
    await quota_store.start()
    yield quota_store
    await quota_store.close()


def limits(store: QuotaStore) -> list[Limit]:
    return RuleSet(QuotasConfig(rules=RULES)).limits_for(ALICE, {}, "gpt-4o", store.now())


async def stored(client: StoreClient, found: list[Limit]) -> list[tuple[int, int]]:
    """Each limit's counter and what running requests hold of it."""
    keys = [limit.key(PREFIX) for limit in found]
    return [
        (int(await client.get(key) or 0), int(await client.get(held_key(key)) or 0)) for key in keys
    ]


async def test_a_capped_request_holds_on_every_node_only_what_its_cap_lets_it_use(
    store: QuotaStore, client: StoreClient, cluster: ValkeyCluster
) -> None:
    found = limits(store)
    nodes = {cluster.owner_of(client.keyslot(limit.key(PREFIX))) for limit in found}
    assert len(nodes) == 3  # one subject per node: one script each

    reservation = await store.reserve(found, ESTIMATE)
    assert isinstance(reservation, Reservation)
    await store.flush()  # the give-back goes out with the next settlement batch
    # Before: [(32006, 32006), (1000, 1000), (32006, 32006)] until the request ended.
    assert await stored(client, found) == [(1000, 1000)] * 3
    # What the x-ratelimit-* headers and the settlement read agrees with the store.
    assert reservation.reserved == [1000, 1000, 1000]

    store.settle(reservation, 700)
    await store.flush()
    assert await stored(client, found) == [(700, 0)] * 3
