"""Admin tokens with scopes, over a real gRPC channel, on a real Valkey.

A finance job's token reads usage reports and nothing else; a help desk's token
changes quotas but never sees or makes a key; a token configured without scopes
does everything, as every token did before scopes existed. A call outside its
token's scopes is refused with PERMISSION_DENIED, naming the scope it lacks, and a
change so refused leaves a ``refused`` audit line naming the token's id.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest
from grpc import aio as grpc_aio

from extproc.config import ConfigError, GatewayConfig, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.service import (
    AdminTokens,
)
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.runtime import Runtime, Services
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.management_server import serving_management

PREFIX = "scopes:"
TOKENS = {
    "ops": "scopes-ops-admin-token",
    "finance": "scopes-finance-token-0001",
    "helpdesk": "scopes-helpdesk-token-01",
    "key-issuer": "scopes-key-issuer-token-1",
}
ADMIN_TOKENS = """  admin_tokens:
    - id: ops
      token: scopes-ops-admin-token
    - id: finance
      token: scopes-finance-token-0001
      scopes: [usage:read]
    - id: helpdesk
      token: scopes-helpdesk-token-01
      scopes: [quotas:write]
    - id: key-issuer
      token: scopes-key-issuer-token-1
      scopes: [keys:write, usage:read]
"""
QUOTAS = """
quotas:
  rules:
    - name: keys-5-rpm
      subject: api_key
      requests_per_minute: 5
"""
DEFAULT_TOKENS = """  admin_tokens:
    - id: ops
      token: ${AIGW_ADMIN_TOKEN:-dev-admin-token}
"""


def gateway_config(admin_tokens: str = ADMIN_TOKENS) -> GatewayConfig:
    """The default config with ``admin_tokens`` in place of its one token."""
    default = DEFAULT_CONFIG.read_text()
    assert DEFAULT_TOKENS in default
    return parse_config(default.replace(DEFAULT_TOKENS, admin_tokens) + QUOTAS, "gateway.yaml", {})


@dataclass
class Api:
    """The three management services on one port, as a gateway serves them."""

    quotas: pb_grpc.QuotaManagementStub
    keys: pb_grpc.KeyManagementStub
    usage: pb_grpc.UsageReportsStub
    audit: io.BytesIO
    current: list[Runtime]

    async def call(self, token_id: str, service: str, method: str, request: Any) -> Any:
        metadata = (("authorization", f"Bearer {TOKENS[token_id]}"),)
        return await getattr(getattr(self, service), method)(request, metadata=metadata)

    async def refusal(
        self, token_id: str, service: str, method: str, request: Any
    ) -> grpc_aio.AioRpcError:
        with pytest.raises(grpc_aio.AioRpcError) as refused:
            await self.call(token_id, service, method, request)
        return refused.value

    def audit_lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.audit.getvalue().splitlines()]


@pytest.fixture
async def api(valkey: EmbeddedValkey) -> AsyncIterator[Api]:
    current = [Runtime(gateway_config(), Services(GatewayMetrics(), AccessLog(stdout=False)))]
    async with (
        serving_management(valkey, lambda: current[0], PREFIX) as served,
        grpc_aio.insecure_channel(served.address) as channel,
    ):
        yield Api(
            pb_grpc.QuotaManagementStub(channel),
            pb_grpc.KeyManagementStub(channel),
            pb_grpc.UsageReportsStub(channel),
            served.audit,
            current,
        )


REPORT = ("usage", "GetUsageReport", pb.UsageReportRequest(month="2026-02"))
GET_QUOTA = ("quotas", "GetQuota", pb.GetQuotaRequest(subject_kind="api_key", subject="team1"))
SET_LIMIT = (
    "quotas",
    "SetLimit",
    pb.SetLimitRequest(
        subject_kind="api_key", subject="team1", rule="keys-5-rpm",
        counter="requests_per_minute", limit=2,
    ),
)  # fmt: skip
LIST_KEYS = ("keys", "ListKeys", pb.ListKeysRequest())
CREATE_KEY = ("keys", "CreateKey", pb.CreateKeyRequest(id="ci-bot", group_id="engineering"))


async def test_a_finance_token_reads_reports_and_nothing_else(api: Api) -> None:
    report = await api.call("finance", *REPORT)
    assert report.start == "2026-02-01T00:00:00+00:00"

    for service, method, request, scope in (
        (*GET_QUOTA, "quotas:read"),
        (*LIST_KEYS, "keys:read"),
        (*CREATE_KEY, "keys:write"),
        (*SET_LIMIT, "quotas:write"),
    ):
        refused = await api.refusal("finance", service, method, request)
        assert refused.code() is grpc.StatusCode.PERMISSION_DENIED, method
        assert refused.details() == (
            f"the admin token 'finance' does not have the scope {scope}, which this call"
            " needs (its scopes: usage:read)"
        )
    # Nothing was made: the key does not exist, the limit is the configured one.
    assert "ci-bot" not in [key.id for key in (await api.call("ops", *LIST_KEYS)).keys]
    state = await api.call("ops", *GET_QUOTA)
    assert [(limit.limit, limit.overridden) for limit in state.limits] == [(5, False)]


async def test_a_change_outside_the_scopes_is_audited_as_refused_under_the_tokens_id(
    api: Api,
) -> None:
    await api.refusal("finance", *SET_LIMIT)
    await api.refusal("helpdesk", *CREATE_KEY)
    await api.refusal("finance", *LIST_KEYS)  # a read: no audit line

    set_limit, create_key = api.audit_lines()
    assert (set_limit["action"], set_limit["caller"], set_limit["outcome"]) == (
        "set_limit",
        "finance",
        "refused",
    )
    assert (set_limit["subject"], set_limit["limit"]) == ("team1", 2)
    assert set_limit["error"] == "missing scope quotas:write"
    assert (create_key["action"], create_key["caller"], create_key["key_id"]) == (
        "create_key",
        "helpdesk",
        "ci-bot",
    )
    assert create_key["error"] == "missing scope keys:write"
    written = api.audit.getvalue().decode()
    assert not any(token in written for token in TOKENS.values())


async def test_a_write_scope_includes_its_read_and_no_other(api: Api) -> None:
    changed = await api.call("helpdesk", *SET_LIMIT)
    assert [limit.limit for limit in changed.limits] == [2]
    assert [limit.limit for limit in (await api.call("helpdesk", *GET_QUOTA)).limits] == [2]
    refused = await api.refusal("helpdesk", *REPORT)
    assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "its scopes: quotas:read, quotas:write" in (refused.details() or "")

    created = await api.call("key-issuer", *CREATE_KEY)
    assert created.key and created.info.id == "ci-bot"
    listed = await api.call("key-issuer", *LIST_KEYS)
    assert "ci-bot" in [key.id for key in listed.keys]
    assert (await api.refusal("key-issuer", *GET_QUOTA)).code() is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # The changes the scopes allowed are audited under their tokens' ids.
    assert [(line["action"], line["caller"], line["outcome"]) for line in api.audit_lines()] == [
        ("set_limit", "helpdesk", "applied"),
        ("create_key", "key-issuer", "applied"),
    ]


async def test_a_token_without_scopes_may_do_everything(api: Api) -> None:
    assert (await api.call("ops", *SET_LIMIT)).limits[0].limit == 2
    assert (await api.call("ops", *CREATE_KEY)).info.id == "ci-bot"
    assert (await api.call("ops", *REPORT)).start == "2026-02-01T00:00:00+00:00"


async def test_a_reload_changes_what_a_token_may_do(api: Api) -> None:
    assert (await api.refusal("finance", *LIST_KEYS)).code() is grpc.StatusCode.PERMISSION_DENIED
    widened = ADMIN_TOKENS.replace("scopes: [usage:read]", "scopes: [usage:read, keys:read]")
    api.current[0] = Runtime(
        gateway_config(widened), Services(GatewayMetrics(), AccessLog(stdout=False))
    )

    listed = await api.call("finance", *LIST_KEYS)
    assert [key.id for key in listed.keys] == ["team1", "team2"]  # the config's keys
    assert (await api.refusal("finance", *CREATE_KEY)).code() is grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("scopes", "problem"),
    [
        ("[usage:reed]", "management.admin_tokens[1].scopes: unknown scope 'usage:reed';"
                         " did you mean 'usage:read'? (scopes: quotas:read, quotas:write,"
                         " keys:read, keys:write, usage:read)"),
        ("[]", "scopes is empty: list what the token may do (quotas:read, quotas:write,"
               " keys:read, keys:write, usage:read), or leave scopes out for all of it"),
    ],
)  # fmt: skip
def test_scopes_the_gateway_does_not_know_are_refused_at_load(scopes: str, problem: str) -> None:
    admin_tokens = ADMIN_TOKENS.replace("scopes: [usage:read]", f"scopes: {scopes}")
    with pytest.raises(ConfigError) as refused:
        gateway_config(admin_tokens)
    assert any(problem in line for line in refused.value.problems), refused.value.problems
    assert not any(token in str(refused.value) for token in TOKENS.values())


def test_the_scopes_of_each_token_are_what_the_config_grants() -> None:
    tokens = AdminTokens(gateway_config().management)
    assert tokens.scopes("ops") == {
        "quotas:read", "quotas:write", "keys:read", "keys:write", "usage:read"
    }  # fmt: skip
    assert tokens.scopes("finance") == {"usage:read"}
    assert tokens.scopes("helpdesk") == {"quotas:read", "quotas:write"}
    assert tokens.scopes("key-issuer") == {"keys:read", "keys:write", "usage:read"}
