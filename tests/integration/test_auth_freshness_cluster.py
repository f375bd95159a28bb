"""Revocation notices on a three-node Valkey Cluster (``store.url: redis+cluster://``).

Two gateway processes, each with its own cluster client, share the store: a
key revoked through one is forgotten by the other at once, whichever node the
listener subscribed on and whichever node took the notice (a cluster passes
classic pub/sub messages to every node). Several keys, so that their records
fall on different nodes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from extproc.auth.api_keys import ApiKey, key_digest
from extproc.auth.stored_keys import NOT_CACHED, StoredKeys
from extproc.store.connection import connect
from tests.integration.valkey_cluster import ValkeyCluster
from tests.unit.test_auth_freshness_keys import eventually

pytestmark = pytest.mark.timeout(60)

PREFIX = "fresh:"


@pytest.fixture
async def processes(cluster: ValkeyCluster) -> AsyncIterator[tuple[StoredKeys, StoredKeys]]:
    clients = [connect(cluster.url, 2.0) for _ in range(2)]
    await clients[0].flushdb()
    management, other = (StoredKeys(client, PREFIX) for client in clients)
    for keys in (management, other):
        keys.start()
        await asyncio.wait_for(keys.listener.subscribed.wait(), 15.0)
    yield management, other
    for keys, client in zip((management, other), clients, strict=True):
        await keys.close()
        await client.aclose()


async def test_a_key_revoked_through_one_process_is_forgotten_by_the_other(
    processes: tuple[StoredKeys, StoredKeys],
) -> None:
    management, other = processes
    for index in range(6):
        key = ApiKey(
            id=f"bot-{index}", user_id="carol", group_id=None, enabled=True, expires_at=None,
            allowed_models=(), allowed_routes=(), labels={},
        )  # fmt: skip
        secret, _ = await management.create(key)
        digest = key_digest(secret)
        assert await other.lookup(digest) == key

        await management.revoke(key.id)

        await eventually(lambda revoked=digest: other.cached(revoked) is NOT_CACHED)
        assert await other.lookup(digest) is None
