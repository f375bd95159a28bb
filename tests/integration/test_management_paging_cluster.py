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
from extproc.store.embedded import free_port
from tests.integration.valkey_cluster import HOST, ValkeyCluster
from tests.unit.test_management_paging import (
    Api,
    listed,
    serving_api,
    stored_keys,
    token_text,
)

ABORTED = (
    "the store's Cluster primaries are not those the page before was read from"
    " (a failover or a resharding since): list again from the first page"
)


def token_node(token: str) -> str:
    """The Cluster primary (``host:port``) a page token resumes on."""
    node: str = orjson.loads(token_text(token))["n"]
    return node


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


async def test_a_failover_that_reorders_the_primaries_aborts_the_listing(
    api: Api, cluster: ValkeyCluster
) -> None:
    # The primaries are walked in the order of their names. A listing stopped on the
    # second; the third fails over to a replica whose name sorts before the second; a
    # gateway that reads the Cluster's map afresh (another gateway behind the same
    # address, or this one restarted) walks the new order, in which the second is last:
    # the third's keys would never be listed, with no word.
    await stored_keys(api, 60)
    _, second, third = cluster.primaries()
    port = next(
        port
        for port in (free_port() for _ in range(200))
        if f"{HOST}:{port}" < second and port not in [node.port for node in cluster.nodes]
    )
    replica = cluster.add_replica(cluster.index_of(third), port=port)
    request = pb.ListKeysRequest(source="store", page_size=5)
    pages = [await api.list_keys(request)]
    while token_node(pages[-1].next_page_token) != second:
        request.page_token = pages[-1].next_page_token
        pages.append(await api.list_keys(request))
    cluster.fail_over(replica)

    async with serving_api(cluster, empty=False) as another:
        request.page_token = pages[-1].next_page_token
        code, details = await another.refusal(another.list_keys(request))

    assert code == grpc.StatusCode.ABORTED
    assert details == ABORTED
    cluster.fail_over(cluster.index_of(third))


async def test_a_primary_failed_over_between_pages_aborts_the_listing(
    api: Api, cluster: ValkeyCluster
) -> None:
    # Runs last in the module: it leaves the cluster with a replica (of the same
    # primaries as before, failed back to).
    await stored_keys(api, 60)
    request = pb.ListKeysRequest(source="store", page_size=5)
    first = await api.list_keys(request)
    primary = cluster.index_of(token_node(first.next_page_token))
    replica = cluster.add_replica(primary)
    cluster.fail_over(replica)

    request.page_token = first.next_page_token
    code, details = await api.refusal(api.list_keys(request))

    assert code == grpc.StatusCode.ABORTED
    assert details == ABORTED
    # Listed again, the pages walk the primaries the Cluster has now.
    pages = await api.key_pages(pb.ListKeysRequest(source="store", page_size=5))
    assert sorted(key for _, key in listed(pages)) == [f"key-{index:03}" for index in range(60)]

    # Failed back: the CLI's listing meets the replica its gateway still takes for a
    # primary, and says what to do, with no traceback.
    cluster.fail_over(primary)
    code, out, err = await api.cli("keys", "list", "--source", "store", "--page-size", "5")

    assert code == 2
    assert err == f"error: {ABORTED} (ABORTED)\n"
    assert "Traceback" not in err + out
