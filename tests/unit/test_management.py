"""The management API over a real gRPC channel, on quota counters in a real Valkey.

An operator with the admin token reads a subject's quota, overrides a limit,
grants tokens, resets usage and lists who used what; the next request's
``QuotaStore.reserve`` sees each change. Every change leaves an audit line
naming the token's id, never the token.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import orjson
import pytest
from grpc import aio as grpc_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from extproc.config import ConfigError, GatewayConfig, parse_config
from extproc.config.model import ManagementConfig
from extproc.context import Identity
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.audit import AuditLog
from extproc.management.quotas import QuotaAdmin
from extproc.management.service import AdminTokens, QuotaManagementService, start_server
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.quota.store import Denial, QuotaStore, Reservation
from extproc.runtime import Runtime, Services
from extproc.server import Gateway
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey, free_port
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics

TOKEN = "unit-test-admin-token"
PREFIX = "t:"
QUOTAS = """
quotas:
  rules:
    - name: marketing-monthly
      subject: group
      match: marketing
      token_quota: {limit: 5000000, period: calendar_month, time_zone: Europe/Berlin}
    - name: keys-5-rpm
      subject: api_key
      requests_per_minute: 5
"""


def gateway_config() -> GatewayConfig:
    text = DEFAULT_CONFIG.read_text() + QUOTAS
    return parse_config(text, "gateway.yaml", {"AIGW_ADMIN_TOKEN": TOKEN})


@dataclass
class Api:
    """The management API as an operator reaches it, and the quota store requests use."""

    address: str
    stub: Any
    quota_store: QuotaStore
    runtime: Runtime
    audit: io.BytesIO
    client: Any

    async def call(self, method: str, request: Any, token: str | None = TOKEN) -> Any:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return await getattr(self.stub, method)(request, metadata=metadata)

    async def get(self, kind: str, subject: str) -> dict[str, pb.LimitState]:
        state = await self.call("GetQuota", pb.GetQuotaRequest(subject_kind=kind, subject=subject))
        return {limit.counter: limit for limit in state.limits}

    async def send(self, key: str = "team1", group: str = "marketing", tokens: int = 100) -> Any:
        """What the quota stage does for one request: reserve against every limit."""
        identity = Identity(method="api_key", api_key_id=key, group_id=group)
        now = self.quota_store.now()
        limits = self.runtime.quota_rules.limits_for(identity, {}, "gpt-4o-mini", now)
        return await self.quota_store.reserve(limits, tokens)

    def audit_lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.audit.getvalue().splitlines()]


@pytest.fixture
async def api(valkey: EmbeddedValkey) -> AsyncIterator[Api]:
    async with running_api(valkey, gateway_config()) as running:
        yield running


@contextlib.asynccontextmanager
async def running_api(valkey: EmbeddedValkey, config: GatewayConfig) -> AsyncIterator[Api]:
    """The quota management service over gRPC, on ``config``, with an empty store."""
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota_store = QuotaStore(client, PREFIX)
    await quota_store.start()
    runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    audit = io.BytesIO()
    service = QuotaManagementService(
        lambda: runtime, QuotaAdmin(client, PREFIX, quota_store), AuditLog(audit)
    )
    address = f"127.0.0.1:{free_port()}"
    server = await start_server(address, service)
    channel = grpc_aio.insecure_channel(address)
    try:
        stub = pb_grpc.QuotaManagementStub(channel)
        yield Api(address, stub, quota_store, runtime, audit, client)
    finally:
        await channel.close()
        await server.stop(None)
        await quota_store.close()
        await client.aclose()


def early_in_the_minute() -> None:
    """Keep a short burst on a per-minute limit inside one window."""
    into = time.time() % 60
    if into > 57:
        time.sleep(60.5 - into)


async def test_a_fresh_subject_has_its_configured_quota_and_nothing_used(api: Api) -> None:
    quota = (await api.get("group", "marketing"))["token_quota"]

    assert (quota.rule, quota.kind, quota.limit, quota.configured_limit) == (
        "marketing-monthly", "tokens", 5_000_000, 5_000_000,
    )  # fmt: skip
    assert (quota.used, quota.remaining, quota.overridden) == (0, 5_000_000, False)
    assert quota.time_zone == "Europe/Berlin"
    reset = datetime.fromtimestamp(quota.reset_at, ZoneInfo("Europe/Berlin"))
    assert (reset.day, reset.hour, reset.minute) == (1, 0, 0)
    assert quota.window_start < time.time() < quota.reset_at


async def test_usage_counted_by_requests_shows_up(api: Api) -> None:
    early_in_the_minute()
    assert isinstance(await api.send(tokens=1200), Reservation)
    assert isinstance(await api.send(tokens=300), Reservation)

    # Both still run: what they reserved is held, none of it spent yet.
    quota = (await api.get("group", "marketing"))["token_quota"]
    assert (quota.used, quota.reserved, quota.remaining) == (0, 1500, 4_998_500)
    per_minute = (await api.get("api_key", "team1"))["requests_per_minute"]
    assert (per_minute.kind, per_minute.used, per_minute.remaining) == ("requests", 2, 3)


async def test_a_limit_set_at_run_time_decides_the_next_requests(api: Api) -> None:
    early_in_the_minute()
    request = pb.SetLimitRequest(
        subject_kind="api_key", subject="team1", rule="keys-5-rpm",
        counter="requests_per_minute", limit=1,
    )  # fmt: skip
    state = await api.call("SetLimit", request)
    assert (state.limits[0].limit, state.limits[0].overridden) == (1, True)
    assert isinstance(await api.send(), Reservation)
    refused = await api.send()
    assert isinstance(refused, Denial) and refused.effective_limit == 1

    request.limit = 0  # back to the config's 5
    state = await api.call("SetLimit", request)
    assert (state.limits[0].limit, state.limits[0].overridden) == (5, False)
    assert isinstance(await api.send(), Reservation)


async def test_a_negative_adjustment_grants_tokens_in_the_current_period(api: Api) -> None:
    early_in_the_minute()
    # A request takes the month's whole budget; the next one is refused.
    assert isinstance(await api.send(tokens=5_000_000), Reservation)
    assert isinstance(await api.send(key="team2"), Denial)

    grant = pb.AdjustUsageRequest(
        subject_kind="group", subject="marketing", rule="marketing-monthly",
        counter="token_quota", delta=-1000,
    )  # fmt: skip
    state = await api.call("AdjustUsage", grant)

    # The request still runs: it holds its reservation less the tokens granted.
    assert (state.limits[0].used, state.limits[0].reserved) == (0, 4_999_000)
    assert state.limits[0].remaining == 1000
    assert isinstance(await api.send(key="team2"), Reservation)


async def test_usage_never_goes_below_zero_and_the_counter_expires(api: Api) -> None:
    grant = pb.AdjustUsageRequest(
        subject_kind="group", subject="marketing", rule="marketing-monthly",
        counter="token_quota", delta=-500,
    )  # fmt: skip
    # The expiry is set from the clock as the call runs: no later than this bound, read
    # before it (one read after it failed when a second ticked over in between).
    before = time.time()
    state = await api.call("AdjustUsage", grant)

    assert state.limits[0].used == 0
    limit = api.runtime.quota_rules.limits_for_subject("group", "marketing", before)[0]
    ttl = await api.client.ttl(limit.key(PREFIX))
    assert 0 < ttl <= limit.window.ttl_seconds(before)


async def test_a_reset_zeroes_the_current_windows(api: Api) -> None:
    early_in_the_minute()
    for _ in range(5):
        assert isinstance(await api.send(tokens=10), Reservation)
    assert isinstance(await api.send(), Denial)

    reset = pb.ResetUsageRequest(subject_kind="api_key", subject="team1")
    state = await api.call("ResetUsage", reset)

    assert [limit.used for limit in state.limits] == [0]
    assert isinstance(await api.send(), Reservation)
    # Only the subject named was reset: the group keeps its 5 x 10 + 100 tokens (held by
    # the requests, which have not settled).
    assert (await api.get("group", "marketing"))["token_quota"].reserved == 150


async def test_the_list_shows_subjects_with_counters_in_current_windows(api: Api) -> None:
    early_in_the_minute()
    await api.send(key="team1")
    await api.send(key="team2")
    await api.send(key="team2")
    # A counter of a window long gone, not yet expired, is not current usage.
    await api.client.set(f"{PREFIX}q:{{api_key:ghost}}:keys-5-rpm:r:m:1", 3)

    answer = await api.call("ListQuotas", pb.ListQuotasRequest(subject_kind="api_key"))

    used = {state.subject: state.limits[0].used for state in answer.states}
    assert used == {"team1": 1, "team2": 2}


@pytest.mark.parametrize(
    ("metadata", "presented"),
    [
        ((), None),
        ((("authorization", "Bearer not-the-admin-token"),), "not-the-admin-token"),
        ((("authorization", f"Basic {TOKEN}"),), None),
    ],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_calls_without_the_admin_token_are_refused(
    api: Api, metadata: tuple[tuple[str, str], ...], presented: str | None
) -> None:
    with pytest.raises(grpc_aio.AioRpcError) as refused:
        await api.stub.ResetUsage(
            pb.ResetUsageRequest(subject_kind="api_key", subject="team1"), metadata=metadata
        )

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "admin token" in (refused.value.details() or "")
    if presented:
        assert presented not in (refused.value.details() or "")
    # The try is in the audit trail, with what it asked for and from where: never with
    # what it presented (before, only a warning in the diagnostic log told of it).
    [line] = api.audit_lines()
    assert line["action"] == "reset_usage"
    assert (line["caller"], line["outcome"]) == (None, "refused")
    assert line["subject"] == "team1"
    assert line["error"] == ("invalid admin token" if presented else "no admin token")
    assert line["peer"]
    written = api.audit.getvalue().decode()
    assert TOKEN not in written and "not-the-admin-token" not in written
    # Nothing changed: the counters are as they were.
    assert (await api.get("api_key", "team1"))["requests_per_minute"].used == 0


async def test_a_read_without_the_admin_token_leaves_no_audit_line(api: Api) -> None:
    with pytest.raises(grpc_aio.AioRpcError) as refused:
        await api.call("GetQuota", pb.GetQuotaRequest(subject_kind="api_key", subject="t"), None)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert api.audit_lines() == []


@pytest.mark.parametrize(
    ("kind", "subject", "rule", "counter", "code", "message"),
    [
        ("group", "marketing", "no-such-rule", "token_quota", "NOT_FOUND",
         "rule 'no-such-rule' does not apply to group 'marketing'"
         " (rules that do: marketing-monthly)"),
        ("api_key", "team1", "keys-5-rpm", "token_quota", "NOT_FOUND",
         "rule 'keys-5-rpm' has no counter 'token_quota' (it has: requests_per_minute)"),
        ("group", "sales", "marketing-monthly", "token_quota", "NOT_FOUND",
         "no quota rule applies to group 'sales'"),
        ("team", "x", "keys-5-rpm", "requests_per_minute", "INVALID_ARGUMENT",
         "unknown subject kind 'team' (the quota rules use: api_key, group)"),
        ("api_key", "team1", "", "", "INVALID_ARGUMENT", "rule and counter are required"),
    ],
)  # fmt: skip
async def test_what_the_config_does_not_know_is_refused_clearly(
    api: Api, kind: str, subject: str, rule: str, counter: str, code: str, message: str
) -> None:
    request = pb.SetLimitRequest(
        subject_kind=kind, subject=subject, rule=rule, counter=counter, limit=7
    )
    with pytest.raises(grpc_aio.AioRpcError) as refused:
        await api.call("SetLimit", request)

    assert refused.value.code().name == code
    assert refused.value.details() == message


async def test_every_change_is_audited_with_the_token_id_never_the_token(api: Api) -> None:
    await api.send(tokens=250)
    await api.call(
        "SetLimit",
        pb.SetLimitRequest(subject_kind="group", subject="marketing", rule="marketing-monthly",
                           counter="token_quota", limit=8_000_000),
    )  # fmt: skip
    await api.call("ResetUsage", pb.ResetUsageRequest(subject_kind="group", subject="marketing"))

    set_line, reset_line = api.audit_lines()
    assert set_line["audit"] is True and set_line["caller"] == "ops"
    assert (set_line["action"], set_line["subject_kind"], set_line["subject"]) == (
        "set_limit", "group", "marketing",
    )  # fmt: skip
    assert set_line["limit"] == 8_000_000
    field = "marketing-monthly:token_quota"
    assert set_line["before"][field]["limit"] == 5_000_000
    assert set_line["after"][field]["limit"] == 8_000_000
    assert set_line["after"][field]["overridden"] is True
    assert (reset_line["action"], reset_line["rule"]) == ("reset_usage", None)
    assert (reset_line["before"][field]["used"], reset_line["before"][field]["reserved"]) == (
        0, 250,
    )  # fmt: skip
    assert (reset_line["after"][field]["used"], reset_line["after"][field]["reserved"]) == (0, 0)
    assert TOKEN.encode() not in api.audit.getvalue()


async def test_reflection_lists_the_service_and_health_answers(api: Api) -> None:
    async with grpc_aio.insecure_channel(api.address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = [answer async for answer in reflection.ServerReflectionInfo(iter([ask]))]
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(
            health_pb2.HealthCheckRequest(service="aigw.management.v1.QuotaManagement")
        )

    services = {s.name for s in answers[0].list_services_response.service}
    assert {"aigw.management.v1.QuotaManagement", "grpc.health.v1.Health"} <= services
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_admin_tokens_come_from_files_and_match_in_full(tmp_path: Path) -> None:
    secret = tmp_path / "admin-token"
    secret.write_text("from-a-file\n")
    config = ManagementConfig.model_validate(
        {"admin_tokens": [{"id": "ops", "token": TOKEN}, {"id": "ci", "token_file": str(secret)}]}
    )
    tokens = AdminTokens(config)

    assert tokens.caller([("authorization", "Bearer from-a-file")]) == "ci"
    assert tokens.caller([("authorization", f"bearer {TOKEN}")]) == "ops"
    assert tokens.caller([("authorization", f"Bearer {TOKEN[:-1]}")]) is None
    assert tokens.caller([]) is None


def test_two_admin_ids_sharing_one_secret_are_refused(tmp_path: Path) -> None:
    # The audit log names the caller by the token's id: one secret under two ids would
    # put every change of the second caller under the first's name.
    secret = tmp_path / "admin-token"
    secret.write_text(TOKEN + "\n")
    config = ManagementConfig.model_validate(
        {"admin_tokens": [{"id": "ops", "token": TOKEN}, {"id": "ci", "token_file": str(secret)}]}
    )
    with pytest.raises(ConfigError) as refused:
        AdminTokens(config)
    [problem] = refused.value.problems
    assert problem.startswith("management.admin_tokens[1] (ci): the same secret as ops's")
    assert TOKEN not in problem


def test_a_config_whose_admin_token_file_cannot_be_read_does_not_start(tmp_path: Path) -> None:
    text = DEFAULT_CONFIG.read_text().replace(
        "      token: ${AIGW_ADMIN_TOKEN:-dev-admin-token}",
        f"      token_file: {tmp_path / 'gone'}",
    )
    with pytest.raises(ConfigError, match="token_file: cannot read"):
        AdminTokens(parse_config(text, "gateway.yaml", {}).management)


async def test_a_reload_whose_admin_token_file_cannot_be_read_refuses_that_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Deleting a token's file takes its admin's access away: before, the reload was
    # refused whole and the gateway kept accepting the token it had read.
    gateway = Gateway(parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {}), None)
    text = DEFAULT_CONFIG.read_text().replace(
        "      token: ${AIGW_ADMIN_TOKEN:-dev-admin-token}",
        f"      token_file: {tmp_path / 'gone'}",
    )
    try:
        await gateway.apply(parse_config(text, "gateway.yaml", {}))

        tokens = AdminTokens(gateway.config.management, reloaded=True)
        assert tokens.caller([("authorization", "Bearer dev-admin-token")]) is None
        assert "management.admin_tokens[0] (ops).token_file: cannot read" in caplog.text
        assert "its caller is refused" in caplog.text
    finally:
        await gateway.runtime.close()


async def test_a_draining_gateway_is_not_ready() -> None:
    gateway = Gateway(parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {}), None)
    gateway.request_stop()  # SIGTERM: open streams finish, new traffic goes elsewhere
    assert await gateway.readiness() == (False, "shutting down")
    await gateway.runtime.close()


def test_management_is_served_only_with_a_token() -> None:
    assert not ManagementConfig().serving
    assert ManagementConfig.model_validate({"admin_tokens": [{"id": "a", "token": "t"}]}).serving
    with pytest.raises(ValueError, match="at least one entry in admin_tokens"):
        ManagementConfig(enabled=True)
    with pytest.raises(ValueError, match="token is empty"):
        ManagementConfig.model_validate({"admin_tokens": [{"id": "a", "token": ""}]})
