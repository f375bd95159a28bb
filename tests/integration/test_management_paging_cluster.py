"""Paged listings on a Redis Cluster: each primary has SCAN cursors of its own, so a page
token names the primary it stopped on; the pages walk every primary in turn.

Through the real gRPC management API on a real three-primary Valkey Cluster: keys and
quota subjects spread over the primaries list in pages, each exactly once, the same set
as one unpaged call; a primary that is one no longer when the next page is asked for (a
failover since) answers ABORTED, to the API's clients and the CLI, rather than a page
read from a replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import orjson
import pytest

from extproc.management.v1 import management_pb2 as pb
from tests.integration.valkey_cluster import ValkeyCluster
from tests.unit.test_management_paging import (
    Api,
    listed,
    serving_api,
    stored_keys,
    token_text,
)


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


async def test_a_primary_failed_over_between_pages_aborts_the_listing(
    api: Api, cluster: ValkeyCluster
) -> None:
    # Runs last in the module: it leaves the cluster with a replica (of the same
    # primaries as before, failed back to).
    await stored_keys(api, 60)
    request = pb.ListKeysRequest(source="store", page_size=5)
    first = await api.list_keys(request)
    named = orjson.loads(token_text(first.next_page_token))["n"]
    primary = next(
        index for index, node in enumerate(cluster.nodes) if named.endswith(f":{node.port}")
    )
    replica = cluster.add_replica(primary)
    cluster.fail_over(replica)

    request.page_token = first.next_page_token
    code, details = await api.refusal(api.list_keys(request))

    assert code == grpc.StatusCode.ABORTED
    assert f"primary {named} the page before was read from is no longer one" in details
    assert "list again from the first page" in details
    # Listed again, the pages walk the primaries the Cluster has now.
    pages = await api.key_pages(pb.ListKeysRequest(source="store", page_size=5))
    assert sorted(key for _, key in listed(pages)) == [f"key-{index:03}" for index in range(60)]

    # Failed back: the CLI's listing meets the replica its gateway still takes for a
    # primary, and says what to do, with no traceback.
    cluster.fail_over(primary)
    code, out, err = await api.cli("keys", "list", "--source", "store", "--page-size", "5")

    assert code == 2
    assert err.startswith("error: the store's Cluster primary ")
    assert "list again from the first page (ABORTED)" in err
    assert "Traceback" not in err + out
