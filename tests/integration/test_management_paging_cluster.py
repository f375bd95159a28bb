"""Paged listings on a Redis Cluster: each primary has SCAN cursors of its own, so a page
token names the primary it stopped on; the pages walk every primary in turn.

Through the real gRPC management API on a real three-primary Valkey Cluster: keys and
quota subjects spread over the primaries list in pages, each exactly once, the same set
as one unpaged call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc import aio as grpc_aio

from extproc.auth.stored_keys import StoredKeys
from extproc.management.v1 import management_pb2 as pb
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.store.connection import connect
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from tests.integration.valkey_cluster import ValkeyCluster
from tests.unit.management_server import serving_management
from tests.unit.test_management_paging import PREFIX, Api, gateway_config, listed, stored_keys


@pytest.fixture
async def api(cluster: ValkeyCluster) -> AsyncIterator[Api]:
    runtime = Runtime(gateway_config(), Services(GatewayMetrics(), AccessLog(stdout=False)))
    store: Any = cluster  # serving_management reads its url alone
    async with serving_management(store, lambda: runtime, PREFIX) as served:
        client = connect(cluster.url, 2.0)
        quota_store = QuotaStore(client, PREFIX)
        await quota_store.start()
        channel = grpc_aio.insecure_channel(served.address)
        try:
            yield Api(served.address, client, runtime, StoredKeys(client, PREFIX), quota_store,
                      channel)  # fmt: skip
        finally:
            await channel.close()
            await quota_store.close()
            await client.aclose()


async def test_keys_on_every_primary_list_once_in_pages(api: Api) -> None:
    await stored_keys(api, 120)

    pages = await api.key_pages(pb.ListKeysRequest(source="store", page_size=25))
    whole = await api.list_keys(pb.ListKeysRequest(source="store"))

    found = listed(pages)
    assert len(found) == len(set(found)) == 120
    assert set(found) == set(listed([whole]))
    assert all(len(page.keys) <= 25 for page in pages)


async def test_subjects_on_every_primary_list_once_in_pages(api: Api) -> None:
    for index in range(90):
        await api.send(f"key-{index:03}")

    pages = await api.quota_pages(pb.ListQuotasRequest(subject_kind="api_key", page_size=20))

    found = [state.subject for page in pages for state in page.states]
    assert sorted(found) == [f"key-{index:03}" for index in range(90)]
    assert all(len(page.states) <= 20 for page in pages)
