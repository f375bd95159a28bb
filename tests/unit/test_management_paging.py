"""Paged listings of the management API: ``page_size``, ``page_token`` and
``next_page_token`` on ``ListKeys`` and ``ListQuotas`` (Google's AIP-158).

Through the real gRPC API on a real Valkey, and the CLI: a gateway with hundreds of
keys or subjects lists them in pages that together hold each one exactly once (the
same set as one unpaged call), filters apply across the pages, a token is refused with
other filters or when it is none the gateway gave, and the CLI follows the pages
itself, printing what one call printed. Before, a listing was one answer of every key,
which gRPC clients of other languages refuse past 4 MiB.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest
from grpc import aio as grpc_aio

from extproc.auth.api_keys import key_digest
from extproc.auth.stored_keys import StoredKeys
from extproc.config import GatewayConfig, parse_config
from extproc.config.auth_model import ApiKeyConfig
from extproc.context import Identity
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.admin_cli import run_admin_cli
from tests.unit.management_server import serving_management
from tests.unit.test_management import TOKEN
from tests.unit.test_stored_keys import new_key

PREFIX = "paging:"
QUOTAS = """
quotas:
  rules:
    - name: keys-rpm
      subject: api_key
      requests_per_minute: 1000
    - name: keys-daily
      subject: api_key
      token_quota: {limit: 100000, period: calendar_day}
    - name: users-rpm
      subject: user
      requests_per_minute: 1000
"""
STORED = 300
# The config's own keys (config/gateway.yaml): team1 of alice, team2 of bob.
CONFIG_KEYS = {("config", "team1"), ("config", "team2")}
METADATA = (("authorization", f"Bearer {TOKEN}"),)


def gateway_config() -> GatewayConfig:
    return parse_config(
        DEFAULT_CONFIG.read_text() + QUOTAS, "gateway.yaml", {"AIGW_ADMIN_TOKEN": TOKEN}
    )


@dataclass
class Api:
    """The management API as an operator reaches it, and the store behind it."""

    address: str
    client: Any
    runtime: Runtime
    keys: StoredKeys
    quota_store: QuotaStore
    channel: grpc_aio.Channel

    async def list_keys(self, request: pb.ListKeysRequest) -> pb.ListKeysResponse:
        stub = pb_grpc.KeyManagementStub(self.channel)
        answer: pb.ListKeysResponse = await stub.ListKeys(request, metadata=METADATA)
        return answer

    async def list_quotas(self, request: pb.ListQuotasRequest) -> pb.ListQuotasResponse:
        stub = pb_grpc.QuotaManagementStub(self.channel)
        answer: pb.ListQuotasResponse = await stub.ListQuotas(request, metadata=METADATA)
        return answer

    async def key_pages(self, request: pb.ListKeysRequest) -> list[pb.ListKeysResponse]:
        """Every page of a listing, following next_page_token as a client does."""
        pages = [await self.list_keys(request)]
        while pages[-1].next_page_token:
            request.page_token = pages[-1].next_page_token
            pages.append(await self.list_keys(request))
        return pages

    async def quota_pages(self, request: pb.ListQuotasRequest) -> list[pb.ListQuotasResponse]:
        pages = [await self.list_quotas(request)]
        while pages[-1].next_page_token:
            request.page_token = pages[-1].next_page_token
            pages.append(await self.list_quotas(request))
        return pages

    async def refusal(self, call: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc_aio.AioRpcError) as refused:
            await call
        return refused.value.code(), refused.value.details() or ""

    async def send(self, key_id: str, user: str = "") -> None:
        """What the quota stage does for one request of ``key_id`` (of ``user``)."""
        identity = Identity(method="api_key", api_key_id=key_id, user_id=user or None)
        now = self.quota_store.now()
        limits = self.runtime.quota_rules.limits_for(identity, {}, "gpt-4o-mini", now)
        await self.quota_store.reserve(limits, 10)

    async def cli(self, *args: str) -> tuple[int, str, str]:
        return await run_admin_cli(self.address, TOKEN, *args)


@asynccontextmanager
async def serving_api(
    store: Any, config: GatewayConfig | None = None, *, empty: bool = True
) -> AsyncIterator[Api]:
    """The management API on ``store`` (a server or a Cluster: its ``url`` is read) with
    ``config`` (``gateway_config()`` unless given), and the clients a test reaches it and
    the store with; the store emptied first unless not ``empty`` (a second gateway)."""
    config = config or gateway_config()
    runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    async with serving_management(store, lambda: runtime, PREFIX, empty=empty) as served:
        client = connect(store.url, 2.0)
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


@pytest.fixture
async def api(valkey: EmbeddedValkey) -> AsyncIterator[Api]:
    async with serving_api(valkey) as served:
        yield served


async def stored_keys(api: Api, count: int = STORED) -> dict[str, str]:
    """``count`` stored keys, every other one alice's (the others bob's): secrets by id."""
    secrets = {}
    for index in range(count):
        user = "alice" if index % 2 == 0 else "bob"
        secret, _ = await api.keys.create(new_key(f"key-{index:03}", user_id=user))
        secrets[f"key-{index:03}"] = secret
    return secrets


async def other_keys(api: Api, count: int = 5000) -> None:
    """Keys of other programs in the same store, so that a pass over the listing's keys
    takes many SCAN calls (as in a store of usage rollups and counters)."""
    await api.client.mset({f"elsewhere:{index}": "1" for index in range(count)})


def crowded_config(count: int, users: dict[int, str]) -> GatewayConfig:
    """``gateway_config()`` with ``count`` more config keys, ``crowd-00000`` on, each of
    the user ``users`` names by its number, else of ``crowd``. Built as objects, as the
    loader builds them: 10,000 keys parsed from YAML take seconds."""
    config = gateway_config()
    crowd = [
        ApiKeyConfig(
            id=f"crowd-{index:05}",
            key_sha256=hashlib.sha256(f"crowd-secret-{index}".encode()).hexdigest(),
            user_id=users.get(index, "crowd"),
        )
        for index in range(count)
    ]
    auth = config.auth.model_copy(update={"api_keys": (*config.auth.api_keys, *crowd)})
    return config.model_copy(update={"auth": auth})


def listed(pages: list[pb.ListKeysResponse]) -> list[tuple[str, str]]:
    return [(key.source, key.id) for page in pages for key in page.keys]


def token_text(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode(errors="replace")


# API keys.


async def test_hundreds_of_keys_in_pages_of_50_list_each_key_once(api: Api) -> None:
    await stored_keys(api)
    await other_keys(api)

    pages = await api.key_pages(pb.ListKeysRequest(page_size=50))
    whole = await api.list_keys(pb.ListKeysRequest())

    found = listed(pages)
    assert len(found) == len(set(found)) == STORED + len(CONFIG_KEYS)
    assert set(found) == set(listed([whole]))
    assert all(len(page.keys) <= 50 for page in pages)
    assert len(pages) >= (STORED + len(CONFIG_KEYS)) // 50
    # A listing that never asks for pages is answered whole, as before paging.
    assert whole.next_page_token == ""
    assert pages[-1].next_page_token == ""


async def test_keys_kept_while_paging_are_listed_once_whatever_changes_meanwhile(
    api: Api,
) -> None:
    await stored_keys(api, 200)
    request = pb.ListKeysRequest(source="store", page_size=30)
    first = await api.list_keys(request)
    listed_first = {key.id for key in first.keys}
    unlisted = sorted({f"key-{index:03}" for index in range(200)} - listed_first)
    revoked = unlisted[:20]
    for key_id in revoked:
        await api.keys.revoke(key_id)
    for index in range(50):
        await api.keys.create(new_key(f"late-{index:02}"))

    request.page_token = first.next_page_token
    rest = await api.key_pages(request)

    found = [key.id for page in [first, *rest] for key in page.keys]
    assert len(found) == len(set(found))
    kept = {f"key-{index:03}" for index in range(200)} - set(revoked)
    assert kept <= set(found)
    assert not set(found) & set(revoked)


async def test_keys_kept_are_listed_when_other_programs_keys_go_between_pages(
    api: Api,
) -> None:
    # The first page stops inside one SCAN batch of a large store. Other programs'
    # keys deleted meanwhile move where SCAN's COUNT ends the batch from the same
    # cursor: the names past the old batch's end were never given, whatever their
    # marks, and must not be skipped as if they had been.
    await stored_keys(api, STORED)
    await other_keys(api)
    request = pb.ListKeysRequest(source="store", page_size=40)
    first = await api.list_keys(request)
    assert first.next_page_token
    await api.client.delete(*[f"elsewhere:{index}" for index in range(5000)])

    request.page_token = first.next_page_token
    rest = await api.key_pages(request)

    found = {key.id for page in [first, *rest] for key in page.keys}
    assert found == {f"key-{index:03}" for index in range(STORED)}


async def test_a_page_may_hold_fewer_keys_than_asked_while_more_follow(api: Api) -> None:
    # Few keys pass the filter among a store of many other keys: a page answers after a
    # bounded part of the pass, with what it found, and a token for the rest.
    await stored_keys(api, 40)
    await other_keys(api, 30_000)

    pages = await api.key_pages(pb.ListKeysRequest(user_id="bob", page_size=50))

    assert any(len(page.keys) < 50 and page.next_page_token for page in pages)
    found = listed(pages)
    assert sorted(found) == sorted(
        [("config", "team2")] + [("store", f"key-{index:03}") for index in range(1, 40, 2)]
    )


async def test_a_page_looks_at_ten_thousand_config_keys_and_answers_what_it_found(
    valkey: EmbeddedValkey,
) -> None:
    # A config of 10,050 keys, few of them carol's, some on either side of where the
    # first page stops looking: that page answers the few it found, with a token, rather
    # than holding the event loop for a pass over every key.
    carols = [0, 1234, 5000, 9998, 9999, 10_000, 10_049]
    config = crowded_config(10_050, {index: "carol" for index in carols})
    async with serving_api(valkey, config) as api:
        await api.keys.create(new_key("stored-carol", user_id="carol"))
        request = pb.ListKeysRequest(user_id="carol", page_size=50)

        pages = await api.key_pages(request)
        whole = await api.list_keys(pb.ListKeysRequest(user_id="carol"))

    assert [len(page.keys) for page in pages[:2]] == [5, 3]
    assert pages[0].next_page_token
    found = listed(pages)
    assert len(found) == len(set(found))
    assert found == listed([whole])
    assert found == [("config", f"crowd-{index:05}") for index in carols] + [
        ("store", "stored-carol")
    ]


async def test_a_page_size_above_the_most_counts_as_the_most(api: Api) -> None:
    await stored_keys(api, 20)

    answer = await api.list_keys(pb.ListKeysRequest(page_size=1_000_000))

    assert len(answer.keys) == 20 + len(CONFIG_KEYS)
    assert answer.next_page_token == ""


async def test_filters_apply_across_the_pages(api: Api) -> None:
    await stored_keys(api, 60)

    pages = await api.key_pages(pb.ListKeysRequest(user_id="alice", page_size=7))

    found = listed(pages)
    alices = {("store", f"key-{index:03}") for index in range(0, 60, 2)} | {("config", "team1")}
    assert len(found) == len(set(found))
    assert set(found) == alices
    assert all(len(page.keys) <= 7 for page in pages)


async def test_config_keys_page_too(api: Api) -> None:
    pages = await api.key_pages(pb.ListKeysRequest(source="config", page_size=1))

    assert [listed([page]) for page in pages] == [[("config", "team1")], [("config", "team2")]]


async def test_a_rotated_key_is_listed_once_with_its_old_secrets_end(api: Api) -> None:
    await stored_keys(api, 12)
    for index in range(0, 12, 3):
        await api.keys.rotate(f"key-{index:03}", 3600)

    pages = await api.key_pages(pb.ListKeysRequest(source="store", page_size=1))

    found = [key for page in pages for key in page.keys]
    assert sorted(key.id for key in found) == [f"key-{index:03}" for index in range(12)]
    rotating = sorted(key.id for key in found if key.previous_expires_at)
    assert rotating == [f"key-{index:03}" for index in range(0, 12, 3)]


async def test_an_unreadable_record_is_named_once_on_the_page_that_meets_it(api: Api) -> None:
    await stored_keys(api, 30)
    await api.client.sadd(f"{PREFIX}key:{{{'ab' * 32}}}", "x")

    pages = await api.key_pages(pb.ListKeysRequest(page_size=4))

    named = [record.key for page in pages for record in page.unreadable_keys]
    assert named == [f"{PREFIX}key:{{{'ab' * 6}...}}"]
    assert len(listed(pages)) == 30 + len(CONFIG_KEYS)


async def test_a_token_given_with_other_filters_is_refused(api: Api) -> None:
    await stored_keys(api, 20)
    first = await api.list_keys(pb.ListKeysRequest(user_id="alice", page_size=5))

    code, details = await api.refusal(
        api.list_keys(
            pb.ListKeysRequest(user_id="bob", page_size=5, page_token=first.next_page_token)
        )
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in details


@pytest.mark.parametrize("token", ["not-a-token", "e30", base64.b64encode(b"[1, 2]").decode()])
async def test_a_token_the_gateway_never_gave_is_refused(api: Api, token: str) -> None:
    code, details = await api.refusal(
        api.list_keys(pb.ListKeysRequest(page_size=5, page_token=token))
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token is not one this gateway gave out" in details


async def test_a_negative_page_size_is_refused(api: Api) -> None:
    code, details = await api.refusal(api.list_keys(pb.ListKeysRequest(page_size=-1)))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in details


async def test_tokens_never_carry_a_secret_or_its_digest(api: Api) -> None:
    secrets = await stored_keys(api, 40)

    pages = await api.key_pages(pb.ListKeysRequest(source="store", page_size=3))

    tokens = " ".join(token_text(page.next_page_token) for page in pages)
    for secret in secrets.values():
        digest = key_digest(secret).hex()
        assert secret not in tokens
        assert digest[:12] not in tokens
        assert hashlib.sha256(secret.encode()).hexdigest()[:12] not in tokens


# Quota subjects.


async def test_hundreds_of_subjects_in_pages_of_50_list_each_once(api: Api) -> None:
    for index in range(STORED):
        await api.send(f"key-{index:03}")
    await other_keys(api)

    pages = await api.quota_pages(pb.ListQuotasRequest(subject_kind="api_key", page_size=50))
    whole = await api.list_quotas(pb.ListQuotasRequest(subject_kind="api_key"))

    found = [state.subject for page in pages for state in page.states]
    assert len(found) == len(set(found)) == STORED
    assert set(found) == {state.subject for state in whole.states}
    assert all(len(page.states) <= 50 for page in pages)
    assert len(pages) > 1
    assert whole.next_page_token == ""
    # Each subject with its whole state, as one call gives it.
    by_subject = {state.subject: state for state in whole.states}
    assert all(state == by_subject[state.subject] for page in pages for state in page.states)


async def test_a_quota_token_of_another_kind_is_refused(api: Api) -> None:
    for index in range(10):
        await api.send(f"key-{index:03}", user=f"user-{index}")
    first = await api.list_quotas(pb.ListQuotasRequest(subject_kind="api_key", page_size=2))

    code, details = await api.refusal(
        api.list_quotas(
            pb.ListQuotasRequest(subject_kind="user", page_size=2, page_token=first.next_page_token)
        )
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in details


async def test_a_key_listing_token_is_refused_by_the_quota_listing(api: Api) -> None:
    await stored_keys(api, 10)
    first = await api.list_keys(pb.ListKeysRequest(page_size=2))

    code, details = await api.refusal(
        api.list_quotas(
            pb.ListQuotasRequest(
                subject_kind="api_key", page_size=2, page_token=first.next_page_token
            )
        )
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in details


async def test_a_malformed_quota_token_is_refused(api: Api) -> None:
    code, details = await api.refusal(
        api.list_quotas(pb.ListQuotasRequest(subject_kind="api_key", page_size=2, page_token="%%%"))
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token is not one this gateway gave out" in details


# The CLI.


async def test_the_cli_prints_every_key_across_pages(api: Api) -> None:
    await stored_keys(api, 45)

    paged = await api.cli("keys", "list", "--page-size", "7", "--format", "json")
    whole = await api.cli("keys", "list", "--format", "json")
    table = await api.cli("keys", "list", "--page-size", "7")

    assert paged[0] == 0, paged[2]
    assert paged == whole
    ids = [key["id"] for key in orjson.loads(paged[1])]
    assert ids == ["team1", "team2", *(f"key-{index:03}" for index in range(45))]
    assert table == await api.cli("keys", "list")


async def test_the_cli_prints_every_subject_across_pages(api: Api) -> None:
    for index in range(25):
        await api.send(f"key-{index:03}")

    paged = await api.cli("quota", "list", "--kind", "api_key", "--page-size", "4")
    whole = await api.cli("quota", "list", "--kind", "api_key")

    assert paged[0] == 0, paged[2]
    assert paged == whole
    assert all(f"key-{index:03}" in paged[1] for index in range(25))


async def test_the_cli_refuses_a_page_size_out_of_range(api: Api) -> None:
    code, _, err = await api.cli("keys", "list", "--page-size", "0")

    assert code == 2
    assert "--page-size: expected a number from 1 to 1000, got '0'" in err
