"""Quota and API key listings when a key under the gateway's prefix was written by a person
or another program (a key of another type, a value the gateway never writes so).

Through a real Valkey, the real gRPC management API and the CLI: the listing answers every
subject and key it can read and names the others (in the answer, and as one warning each on
the CLI's stderr, which then exits 1); reading the one bad subject is FAILED_PRECONDITION
naming its key. Before, one such key failed the whole listing with UNAVAILABLE "the store
did not answer (ResponseError)" (or an internal error for a value that is no integer),
hiding every other subject and key.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from grpc import aio as grpc_aio

from extproc.auth.stored_keys import StoredKeys, UnreadableRecordsError
from extproc.config import GatewayConfig, parse_config
from extproc.context import Identity
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
from tests.unit.admin_cli import run_admin_cli
from tests.unit.test_management import TOKEN
from tests.unit.test_stored_keys import new_key

PREFIX = "stray:"
RULE = "keys-5-rpm"
FIELD = f"{RULE}:requests_per_minute"
QUOTAS = f"""
quotas:
  rules:
    - name: {RULE}
      subject: api_key
      requests_per_minute: 5
    - name: keys-daily
      subject: api_key
      token_quota: {{limit: 100000, period: calendar_day}}
"""
# A whole SHA-256 in hex: a listing must never print one.
WHOLE_DIGEST = re.compile(r"[0-9a-f]{64}")


def gateway_config() -> GatewayConfig:
    return parse_config(
        DEFAULT_CONFIG.read_text() + QUOTAS, "gateway.yaml", {"AIGW_ADMIN_TOKEN": TOKEN}
    )


@dataclass
class Gateway:
    """The management API as an operator reaches it, over the store requests count in."""

    address: str
    client: Any
    quota_store: QuotaStore
    runtime: Runtime
    keys: StoredKeys
    audit: io.BytesIO
    channel: grpc_aio.Channel

    async def call(self, service: str, method: str, request: Any) -> Any:
        stub_type = getattr(pb_grpc, f"{service}Stub")
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        return await getattr(stub_type(self.channel), method)(request, metadata=metadata)

    async def refusal(self, service: str, method: str, request: Any) -> tuple[str, str]:
        with pytest.raises(grpc_aio.AioRpcError) as refused:
            await self.call(service, method, request)
        return refused.value.code().name, refused.value.details() or ""

    async def send(self, key: str) -> None:
        """What the quota stage does for one request of ``key``."""
        identity = Identity(method="api_key", api_key_id=key)
        now = self.quota_store.now()
        limits = self.runtime.quota_rules.limits_for(identity, {}, "gpt-4o-mini", now)
        await self.quota_store.reserve(limits, 10)

    def counter(self, key: str, rule: str = RULE) -> str:
        now = self.quota_store.now()
        limits = self.runtime.quota_rules.limits_for_subject("api_key", key, now)
        return next(limit.key(PREFIX) for limit in limits if limit.rule == rule)

    async def cli(self, *args: str) -> tuple[int, str, str]:
        return await run_admin_cli(self.address, TOKEN, *args)


@pytest.fixture
async def gateway(valkey: EmbeddedValkey) -> AsyncIterator[Gateway]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota_store = QuotaStore(client, PREFIX)
    await quota_store.start()
    keys = StoredKeys(client, PREFIX)
    runtime = Runtime(
        gateway_config(), Services(GatewayMetrics(), AccessLog(stdout=False), stored_keys=keys)
    )
    audit = io.BytesIO()
    quotas = QuotaManagementService(
        lambda: runtime, QuotaAdmin(client, PREFIX, quota_store), AuditLog(audit)
    )
    key_service = KeyManagementService(lambda: runtime, keys, AuditLog(audit))
    address = f"127.0.0.1:{free_port()}"
    server = await start_server(address, quotas, key_service)
    channel = grpc_aio.insecure_channel(address)
    try:
        yield Gateway(address, client, quota_store, runtime, keys, audit, channel)
    finally:
        await channel.close()
        await server.stop(None)
        await quota_store.close()
        await client.aclose()


async def three_keys_used(gateway: Gateway) -> None:
    for key in ("team1", "team2", "team3"):
        await gateway.send(key)


# Quotas.


async def test_a_counter_of_another_type_leaves_the_other_subjects_listed(
    gateway: Gateway,
) -> None:
    await three_keys_used(gateway)
    counter = gateway.counter("team2")
    await gateway.client.delete(counter)
    await gateway.client.rpush(counter, "a", "b")
    await gateway.client.set(f"{PREFIX}qo:{{api_key:team3}}", "see the ticket")

    code, out, err = await gateway.cli("quota", "list", "--kind", "api_key", "--format", "json")

    # Before: exit 2, "store error: the store did not answer (ResponseError)", no list.
    assert code == 1, err
    assert [state["subject"] for state in orjson.loads(out)] == ["team1"]
    second, third = err.splitlines()
    assert second.startswith("warning: the quota state of api_key 'team2' is left out of this")
    assert f"{counter} is a key of another type, not the gateway's counter" in second
    assert third.startswith("warning: the quota state of api_key 'team3' is left out of this")
    assert f"{PREFIX}qo:{{api_key:team3}} is a key of another type" in third
    assert "move the key away" in third


async def test_the_listing_answer_names_each_unreadable_key_with_its_subject(
    gateway: Gateway,
) -> None:
    # What another client (grpcurl, a script) reads in the answer itself.
    await three_keys_used(gateway)
    await gateway.client.set(gateway.counter("team1"), "lots")
    await gateway.client.hset(f"{PREFIX}qo:{{api_key:team3}}", FIELD, "ten")

    answer = await gateway.call(
        "QuotaManagement", "ListQuotas", pb.ListQuotasRequest(subject_kind="api_key")
    )

    assert [state.subject for state in answer.states] == ["team2"]
    assert [(found.subject_kind, found.subject, found.key) for found in answer.unreadable_keys] == [
        ("api_key", "team1", gateway.counter("team1")),
        ("api_key", "team3", f"{PREFIX}qo:{{api_key:team3}}"),
    ]
    first, third = answer.unreadable_keys
    assert first.reason.startswith("holds no integer")
    assert third.reason.startswith(f"field '{FIELD}' holds no integer")


async def test_a_whole_listing_exits_0_with_no_warning(gateway: Gateway) -> None:
    await three_keys_used(gateway)
    # An override written as the quota scripts still read it is no stray.
    await gateway.client.hset(f"{PREFIX}qo:{{api_key:team2}}", FIELD, "7.0")

    code, out, err = await gateway.cli("quota", "list", "--kind", "api_key", "--format", "json")

    assert (code, err) == (0, "")
    states = {state["subject"]: state for state in orjson.loads(out)}
    assert list(states) == ["team1", "team2", "team3"]
    limits = {limit["rule"]: limit["limit"] for limit in states["team2"]["limits"]}
    assert limits[RULE] == 7


async def test_reading_the_bad_subject_is_a_failed_precondition_naming_its_key(
    gateway: Gateway,
) -> None:
    await three_keys_used(gateway)
    counter = gateway.counter("team2")
    await gateway.client.delete(counter)
    await gateway.client.sadd(counter, "x")

    code, details = await gateway.refusal(
        "QuotaManagement", "GetQuota", pb.GetQuotaRequest(subject_kind="api_key", subject="team2")
    )
    cli_code, out, err = await gateway.cli(
        "quota", "get", "--kind", "api_key", "--subject", "team2"
    )

    # Before: UNAVAILABLE, "store error: the store did not answer (ResponseError)".
    assert code == "FAILED_PRECONDITION"
    assert details.startswith("the quota state of api_key 'team2' cannot be read: ")
    assert f"{counter} is a key of another type, not the gateway's counter" in details
    assert (cli_code, out) == (1, "")
    assert err.startswith("error: the quota state of api_key 'team2' cannot be read")
    assert err.rstrip().endswith("(FAILED_PRECONDITION)")
    assert "store did not answer" not in err
    # The other subjects read as before.
    team1 = await gateway.call(
        "QuotaManagement", "GetQuota", pb.GetQuotaRequest(subject_kind="api_key", subject="team1")
    )
    counted = {limit.rule: limit.used + limit.reserved for limit in team1.limits}
    assert counted == {RULE: 1, "keys-daily": 10}


async def test_a_change_to_the_bad_subject_is_refused_before_anything_is_sent(
    gateway: Gateway,
) -> None:
    await three_keys_used(gateway)
    await gateway.client.set(gateway.counter("team2"), "lots")
    overrides = f"{PREFIX}qo:{{api_key:team2}}"
    request = pb.SetLimitRequest(
        subject_kind="api_key", subject="team2", rule=RULE, counter="requests_per_minute", limit=9
    )

    code, details = await gateway.refusal("QuotaManagement", "SetLimit", request)

    # Before: UNKNOWN ("Unexpected <class 'ValueError'>"), a traceback in the log.
    assert code == "FAILED_PRECONDITION"
    assert f"{gateway.counter('team2')} holds no integer" in details
    assert await gateway.client.hget(overrides, FIELD) is None
    # Nothing was sent that changes anything: no audit line, as for any refusal.
    assert gateway.audit.getvalue() == b""


async def test_a_reset_generation_that_is_no_number_is_named(gateway: Gateway) -> None:
    # The reserve script refuses the subject's requests on it (BADOVERRIDE): a read
    # showing the subject as fine would hide why.
    await three_keys_used(gateway)
    await gateway.client.hset(f"{PREFIX}qo:{{api_key:team2}}", f"{FIELD}:resets", "often")

    code, details = await gateway.refusal(
        "QuotaManagement", "GetQuota", pb.GetQuotaRequest(subject_kind="api_key", subject="team2")
    )

    assert code == "FAILED_PRECONDITION"
    assert f"field '{FIELD}:resets' holds no integer" in details


async def test_a_change_applied_whose_new_state_cannot_be_read_says_it_was_applied(
    gateway: Gateway,
) -> None:
    # The change reads its own limit before; the subject's other limit after.
    await three_keys_used(gateway)
    await gateway.client.set(gateway.counter("team2", "keys-daily"), "lots")
    request = pb.SetLimitRequest(
        subject_kind="api_key", subject="team2", rule=RULE, counter="requests_per_minute", limit=9
    )

    code, details = await gateway.refusal("QuotaManagement", "SetLimit", request)

    assert code == "FAILED_PRECONDITION"
    assert details.startswith("the change was applied, but the quota state of api_key 'team2'")
    assert await gateway.client.hget(f"{PREFIX}qo:{{api_key:team2}}", FIELD) == b"9"
    [line] = [orjson.loads(line) for line in gateway.audit.getvalue().splitlines()]
    assert (line["action"], line["outcome"]) == ("set_limit", "applied")
    assert line["error"] == details


# API keys.


async def keys_with_strays(gateway: Gateway) -> str:
    """Two stored keys, one of them with a field no gateway writes so, and two keys of
    others under ``<prefix>key:{``: the digest of the first key's record."""
    for key_id in ("batch", "ci-bot"):
        await gateway.keys.create(new_key(key_id))
    digest = await gateway.client.get(f"{PREFIX}keyid:batch")
    await gateway.client.hset(f"{PREFIX}key:{{{digest.decode()}}}", "labels", "team=ml")
    await gateway.client.set(f"{PREFIX}key:{{{'ab' * 32}}}", "a note")
    await gateway.client.hset(f"{PREFIX}key:{{notes}}", "owner", "someone")
    return str(digest.decode())


async def test_a_stray_record_leaves_the_other_keys_listed(gateway: Gateway) -> None:
    digest = await keys_with_strays(gateway)

    code, out, err = await gateway.cli("keys", "list", "--format", "json")

    # Before: exit 2, "store error: the store did not answer (ResponseError)", no list.
    assert code == 1, err
    assert [(key["id"], key["source"]) for key in orjson.loads(out)] == [
        ("team1", "config"), ("team2", "config"), ("ci-bot", "store"),
    ]  # fmt: skip
    warnings = err.splitlines()
    assert len(warnings) == 3
    assert all(line.startswith("warning: a stored API key is left out") for line in warnings)
    named = "\n".join(warnings)
    assert (
        f"{PREFIX}key:{{{digest[:12]}...}} is the record of API key 'batch', but its field"
        " 'labels' holds no JSON"
    ) in named
    assert f"{PREFIX}key:{{{'ab' * 6}...}} is a key of another type" in named
    assert f"{PREFIX}key:{{notes}} is a hash without the field 'id'" in named
    # Never the whole hash of a secret.
    assert not WHOLE_DIGEST.search(err)


async def test_the_key_listing_answer_names_the_unreadable_records(gateway: Gateway) -> None:
    await keys_with_strays(gateway)

    answer = await gateway.call("KeyManagement", "ListKeys", pb.ListKeysRequest())

    assert [key.id for key in answer.keys] == ["team1", "team2", "ci-bot"]
    assert len(answer.unreadable_keys) == 3
    assert all("move the key away" in found.reason for found in answer.unreadable_keys)
    assert not WHOLE_DIGEST.search(str(answer))


async def test_a_table_listing_of_whole_records_exits_0(gateway: Gateway) -> None:
    await gateway.keys.create(new_key("ci-bot"))

    code, out, err = await gateway.cli("keys", "list")

    assert (code, err) == (0, "")
    assert "ci-bot" in out


async def test_listing_in_code_refuses_to_answer_short(gateway: Gateway) -> None:
    # StoredKeys.list() has no way to say what it left out: it raises, naming it.
    await keys_with_strays(gateway)

    with pytest.raises(UnreadableRecordsError, match="3 stored API key record"):
        await gateway.keys.list()


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("expires_at", "next week", "no number"),
        # Before: read as a moment; "nan" made the key never expire.
        ("expires_at", "nan", "nan, no moment from 1970 on"),
        ("expires_at", "-inf", "-inf, no moment from 1970 on"),
        ("created_at", "-1", "-1.0, no moment from 1970 on"),
        ("allowed_models", '"gpt-4o"', "no JSON list of strings"),
        ("allowed_routes", "[1, 2]", "no JSON list of strings"),
        ("labels", '{"team": 1}', "no JSON object of strings"),
    ],
)
async def test_each_field_the_gateway_never_writes_so_is_named(
    gateway: Gateway, field: str, value: str, what: str
) -> None:
    await gateway.keys.create(new_key("ci-bot"))
    digest = await gateway.client.get(f"{PREFIX}keyid:ci-bot")
    await gateway.client.hset(f"{PREFIX}key:{{{digest.decode()}}}", field, value)

    answer = await gateway.call("KeyManagement", "ListKeys", pb.ListKeysRequest())

    # Before: a JSON list of numbers failed the answer's encoding (UNKNOWN).
    assert [key.id for key in answer.keys] == ["team1", "team2"]
    [found] = answer.unreadable_keys
    assert f"its field {field!r} holds {what}" in found.reason
