"""An operator's reset on a three-node Valkey Cluster while a request admitted before
it is still running: its settlement, landing after the reset, leaves the usage counted
since alone on the node the reset touched, and settles as usual on the others."""

from __future__ import annotations

import pytest

from extproc.config.quota_model import LimitRule
from extproc.management.quotas import QuotaAdmin
from extproc.quota.store import QuotaStore, Reservation
from extproc.store.connection import StoreClient
from tests.integration.test_redis_cluster import (  # noqa: F401 (fixtures)
    PREFIX,
    client,
    limits,
    store,
)

pytestmark = pytest.mark.timeout(60)
RULES = (
    LimitRule(name="user-tokens", subject="user", tokens_per_hour=100_000),
    LimitRule(name="group-tokens", subject="group", tokens_per_hour=100_000),
)


async def test_a_reset_of_one_subject_drops_only_its_earlier_requests_corrections(
    store: QuotaStore,  # noqa: F811 (the fixtures imported above)
    client: StoreClient,  # noqa: F811
) -> None:
    found = limits(store, *RULES)
    user = [limit for limit in found if limit.subject_kind == "user"]
    group = next(limit for limit in found if limit.subject_kind == "group")
    before = await store.reserve(found, 1000)
    assert isinstance(before, Reservation)

    await QuotaAdmin(client, PREFIX, store).reset(user)
    after = await store.reserve(found, 1000)
    assert isinstance(after, Reservation)
    store.settle(before, 10)
    store.settle(after, 100)
    await store.flush()

    assert int(await client.get(user[0].key(PREFIX))) == 100
    assert int(await client.get(group.key(PREFIX))) == 110
