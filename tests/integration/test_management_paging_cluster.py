"""Paged listings on a Redis Cluster: each primary has SCAN cursors of its own, so a page
token names the primary it stopped on; the pages walk every primary in turn.

Through the real gRPC management API on a real three-primary Valkey Cluster: keys and
quota subjects spread over the primaries list in pages, each exactly once, the same set
as one unpaged call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from extproc.management.v1 import management_pb2 as pb
from tests.integration.valkey_cluster import ValkeyCluster
from tests.unit.test_management_paging import Api, listed, serving_api, stored_keys


@pytest.fixture
async def api(cluster: ValkeyCluster) -> AsyncIterator[Api]:
    async with serving_api(cluster) as served:
        yield served


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
