"""The management API's audit trail says how each change ended, on a real Valkey.

An operator's change whose confirmation is lost after the store made it is in
force: the audit line says ``applied`` and the answer says so (retrying an
adjustment would count it twice). A revocation cut short half-way is audited as
``unknown`` (the key may already be refused), never with a secret.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from grpc import aio as grpc_aio
from redis.exceptions import ConnectionError as StoreConnectionError

from extproc.auth.api_keys import key_digest
from extproc.auth.stored_keys import StoredKeys
from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.audit import AuditLog
from extproc.management.quotas import QuotaAdmin
from extproc.management.service import KeyManagementService, QuotaManagementService, start_server
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey, free_port
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.test_stored_keys import client

__all__ = ["client"]  # the real store, flushed: test_stored_keys's fixture

TOKEN = "unit-audit-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
PREFIX = "audit:"
RULE = """
quotas:
  rules:
    - name: keys-5-rpm
      subject: api_key
      requests_per_minute: 5
"""
FIELD = "keys-5-rpm:requests_per_minute"


class ReadsLostAfterAWrite:
    """The real store client, except that once a write went through, the next reads
    fail: the connection lost right after the store made the change."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.wrote = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def hset(self, *args: Any, **kwargs: Any) -> Any:
        answer = await self._client.hset(*args, **kwargs)
        self.wrote = True
        return answer

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        if self.wrote:
            raise StoreConnectionError("Connection closed by server.")
        return self._client.pipeline(*args, **kwargs)


def runtime() -> Runtime:
    config = parse_config(
        DEFAULT_CONFIG.read_text() + RULE, "gateway.yaml", {"AIGW_ADMIN_TOKEN": TOKEN}
    )
    return Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))


def lines(audit: io.BytesIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in audit.getvalue().splitlines()]


async def test_a_limit_set_whose_confirmation_was_lost_is_audited_as_applied(
    valkey: EmbeddedValkey,
) -> None:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota_store = QuotaStore(client, PREFIX)
    current = runtime()
    audit = io.BytesIO()
    flaky = ReadsLostAfterAWrite(client)
    service = QuotaManagementService(
        lambda: current, QuotaAdmin(flaky, PREFIX, quota_store), AuditLog(audit)
    )
    address = f"127.0.0.1:{free_port()}"
    server = await start_server(address, service)
    request = pb.SetLimitRequest(
        subject_kind="api_key", subject="team1", rule="keys-5-rpm",
        counter="requests_per_minute", limit=2,
    )  # fmt: skip
    try:
        async with grpc_aio.insecure_channel(address) as channel:
            stub = pb_grpc.QuotaManagementStub(channel)
            with pytest.raises(grpc_aio.AioRpcError) as lost:
                await stub.SetLimit(request, metadata=AUTH)
        # What the next request is checked against: the new limit is in force.
        in_force = await QuotaAdmin(client, PREFIX, quota_store).read(
            current.quota_rules.limits_for_subject("api_key", "team1", quota_store.now())
        )
    finally:
        await server.stop(None)
        await client.aclose()

    assert lost.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "the change was applied" in (lost.value.details() or "")
    assert (in_force[0].in_force, in_force[0].overridden) == (2, True)
    [line] = lines(audit)
    assert (line["action"], line["caller"], line["outcome"]) == ("set_limit", "ops", "applied")
    assert line["before"][FIELD]["limit"] == 5
    assert "after" not in line and "the change was applied" in line["error"]


class DeletesLostAfterTheFirst:
    """The real store client, except that the connection drops after one delete went
    through: a revocation cut short after the key's record was deleted (its id, freed by
    a script, is lost with it)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.deleted = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def delete(self, *names: str) -> Any:
        if self.deleted:
            raise StoreConnectionError("Connection closed by server.")
        self.deleted += 1
        return await self._client.delete(*names)

    async def evalsha(self, *args: Any) -> Any:
        if self.deleted:
            raise StoreConnectionError("Connection closed by server.")
        return await self._client.evalsha(*args)


@asynccontextmanager
async def management_api(
    client: Any, keys_client: Any, audit: io.BytesIO
) -> AsyncIterator[tuple[pb_grpc.QuotaManagementStub, pb_grpc.KeyManagementStub]]:
    """The management API on a port of its own, its stored keys on ``keys_client`` (the
    store's client, or a wrapper of it), both services auditing into ``audit``."""
    current = runtime()
    keys = KeyManagementService(lambda: current, StoredKeys(keys_client, PREFIX), AuditLog(audit))
    quotas = QuotaManagementService(
        lambda: current, QuotaAdmin(client, PREFIX, QuotaStore(client, PREFIX)), AuditLog(audit)
    )
    address = f"127.0.0.1:{free_port()}"
    server = await start_server(address, quotas, keys)
    try:
        async with grpc_aio.insecure_channel(address) as channel:
            yield pb_grpc.QuotaManagementStub(channel), pb_grpc.KeyManagementStub(channel)
    finally:
        await server.stop(None)


@asynccontextmanager
async def key_management(
    client: Any, keys_client: Any, audit: io.BytesIO
) -> AsyncIterator[pb_grpc.KeyManagementStub]:
    """The key half of ``management_api``."""
    async with management_api(client, keys_client, audit) as (_, keys):
        yield keys


async def test_a_revocation_cut_short_by_the_store_is_audited_as_unknown(client: Any) -> None:
    audit = io.BytesIO()
    async with key_management(client, DeletesLostAfterTheFirst(client), audit) as stub:
        created = await stub.CreateKey(pb.CreateKeyRequest(id="ci-bot"), metadata=AUTH)
        with pytest.raises(grpc_aio.AioRpcError) as cut:
            await stub.RevokeKey(pb.RevokeKeyRequest(id="ci-bot"), metadata=AUTH)
    # The key's record is gone: its secret no longer works.
    still_there = await StoredKeys(client, PREFIX).lookup(key_digest(created.key))

    assert cut.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "it may have been applied" in (cut.value.details() or "")
    assert still_there is None
    created_line, revoked_line = lines(audit)
    assert (created_line["action"], created_line["outcome"]) == ("create_key", "applied")
    assert (revoked_line["action"], revoked_line["caller"], revoked_line["outcome"]) == (
        "revoke_key", "ops", "unknown",
    )  # fmt: skip
    assert revoked_line["key_id"] == "ci-bot"
    assert revoked_line["peer"].startswith("ipv4:127.0.0.1:")
    assert created.key.encode() not in audit.getvalue()


class RevokedBeforeTheKeyIsKept:
    """The real store client of a create, which lets a revoke of the same id run to its
    end just before the create keeps its key: the create is then taken back (ABORTED)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def persist(self, *names: str) -> Any:
        await StoredKeys(self._client, PREFIX).revoke("ci-bot")
        return await self._client.persist(*names)


async def test_a_create_taken_back_by_a_racing_revoke_is_audited_as_failed(client: Any) -> None:
    audit = io.BytesIO()
    async with key_management(client, RevokedBeforeTheKeyIsKept(client), audit) as stub:
        with pytest.raises(grpc_aio.AioRpcError) as refused:
            await stub.CreateKey(pb.CreateKeyRequest(id="ci-bot"), metadata=AUTH)
    left = await client.keys("*")

    assert refused.value.code() is grpc.StatusCode.ABORTED
    assert left == []
    [created_line] = lines(audit)
    assert (created_line["action"], created_line["caller"], created_line["outcome"]) == (
        "create_key", "ops", "failed",
    )  # fmt: skip
    assert "revoked while it was being created" in created_line["error"]


async def every_change(client: Any) -> list[dict[str, Any]]:
    """The audit lines of one of each change the management API makes, all applied."""
    audit = io.BytesIO()
    quota = {"subject_kind": "api_key", "subject": "team1", "rule": "keys-5-rpm",
             "counter": "requests_per_minute"}  # fmt: skip
    async with management_api(client, client, audit) as (quotas, keys):
        await quotas.SetLimit(pb.SetLimitRequest(**quota, limit=2), metadata=AUTH)
        await quotas.AdjustUsage(pb.AdjustUsageRequest(**quota, delta=1), metadata=AUTH)
        await quotas.ResetUsage(pb.ResetUsageRequest(**quota), metadata=AUTH)
        create = pb.CreateKeyRequest(id="ci-bot", user_id="carol", group_id="research")
        await keys.CreateKey(create, metadata=AUTH)
        await keys.RotateKey(pb.RotateKeyRequest(id="ci-bot", grace_seconds=60), metadata=AUTH)
        renew = pb.RenewKeyRequest(id="ci-bot", expires_at=time.time() + 86400)
        await keys.RenewKey(renew, metadata=AUTH)
        renew = pb.RenewKeyRequest(
            id="ci-bot", expires_at=time.time() + 2 * 86400, rotate=True, grace_seconds=60
        )
        await keys.RenewKey(renew, metadata=AUTH)
        disable = pb.SetKeyEnabledRequest(id="ci-bot", enabled=False)
        await keys.SetKeyEnabled(disable, metadata=AUTH)
        enable = pb.SetKeyEnabledRequest(id="ci-bot", enabled=True)
        await keys.SetKeyEnabled(enable, metadata=AUTH)
        await keys.RevokeKey(pb.RevokeKeyRequest(id="ci-bot"), metadata=AUTH)
        # Reads change nothing and are not audited.
        await keys.ListKeys(pb.ListKeysRequest(), metadata=AUTH)
    found = lines(audit)
    assert {line["outcome"] for line in found} == {"applied"}
    return found


def documented_audit() -> str:
    """docs/configuration.md's paragraph on the audit line."""
    text = Path("docs/configuration.md").read_text(encoding="utf-8")
    return text.split("writes one JSON line to stderr")[1].split("\n\n")[0]


async def test_the_docs_name_every_action_the_audit_line_can_carry(client: Any) -> None:
    """A SIEM rule is written from that list: a renewal (`renew_key`, which brings an
    expired key back to life) was audited under an action the page did not name."""
    actions = {line["action"] for line in await every_change(client)}
    listed = re.findall(r"for an? (?:quota|key) \(([^)]*)\)", documented_audit())
    named = {name for group in listed for name in re.findall(r"`([a-z_]+)`", group)}
    assert actions == named


async def test_the_docs_name_every_field_of_an_audit_line(client: Any) -> None:
    for line in await every_change(client):
        text = documented_audit()
        unnamed = {field for field in line if f"`{field}`" not in text and f'"{field}"' not in text}
        assert unnamed == set(), line["action"]
