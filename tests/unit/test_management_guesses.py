"""Admin token guesses are slowed down, over a real gRPC channel on a real Valkey.

Whoever reaches the management port could try tokens as fast as it answers. After thirty
calls without a valid token from one address within a minute, every call from that
address is refused for the rest of the minute (``RESOURCE_EXHAUSTED``), the valid token
too, so that the refusals tell a guesser nothing; a change so refused is audited. The
three services of one server count together; a minute later the admin's token works.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from grpc import aio as grpc_aio

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.guesses import (
    MAX_FAILURES,
    WINDOW_S,
    FailedAttempts,
    host_of_peer,
)
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.runtime import Runtime, Services
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.management_server import serving_management

TOKEN = "unit-guess-admin-token-0001"
PREFIX = "guess:"
QUOTAS = """
quotas:
  rules:
    - {name: keys-5-rpm, subject: api_key, requests_per_minute: 5}
"""
GET = pb.GetQuotaRequest(subject_kind="api_key", subject="team1")
RESET = pb.ResetUsageRequest(subject_kind="api_key", subject="team1")


class Clock:
    """The tracker's clock, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    quotas: pb_grpc.QuotaManagementStub
    keys: pb_grpc.KeyManagementStub
    clock: Clock
    audit: io.BytesIO

    async def code(self, stub: Any, method: str, request: Any, token: str | None) -> str:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            await getattr(stub, method)(request, metadata=metadata)
        except grpc_aio.AioRpcError as exc:
            return exc.code().name
        return "OK"


@pytest.fixture
async def api(valkey: EmbeddedValkey) -> AsyncIterator[Api]:
    text = DEFAULT_CONFIG.read_text().replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", TOKEN)
    runtime = Runtime(
        parse_config(text + QUOTAS, "gateway.yaml", {}),
        Services(GatewayMetrics(), AccessLog(stdout=False)),
    )
    clock = Clock()
    attempts = FailedAttempts(clock)
    async with (
        serving_management(valkey, lambda: runtime, PREFIX, attempts=attempts) as served,
        grpc_aio.insecure_channel(served.address) as channel,
    ):
        quotas, keys = pb_grpc.QuotaManagementStub(channel), pb_grpc.KeyManagementStub(channel)
        yield Api(quotas, keys, clock, served.audit)


async def test_thirty_bad_tokens_in_a_minute_close_the_address_to_every_call_for_the_minute(
    api: Api,
) -> None:
    # Spread over both services: they count together.
    for attempt in range(MAX_FAILURES):
        stub, method, request = (
            (api.quotas, "GetQuota", GET)
            if attempt % 2
            else (api.keys, "ListKeys", pb.ListKeysRequest())
        )
        assert await api.code(stub, method, request, f"guess-{attempt}") == "UNAUTHENTICATED"
        api.clock.now += 1

    # The right token is refused too: a guesser must learn nothing during the block.
    assert await api.code(api.quotas, "GetQuota", GET, TOKEN) == "RESOURCE_EXHAUSTED"
    with pytest.raises(grpc_aio.AioRpcError) as refused:
        await api.quotas.ResetUsage(RESET, metadata=(("authorization", "Bearer guess"),))
    details = refused.value.details() or ""
    assert details.startswith(
        "too many calls without a valid admin token from this address; try again in "
    )
    # The first failure leaves the window 60 s after it, 30 s from now.
    assert details.endswith(f"{int(WINDOW_S) - MAX_FAILURES} seconds")
    refusals = [orjson.loads(line) for line in api.audit.getvalue().splitlines()]
    assert [(line["action"], line["outcome"], line["error"]) for line in refusals][-1] == (
        "reset_usage",
        "refused",
        "too many calls without a valid admin token from this address",
    )
    assert "guess" not in api.audit.getvalue().decode()

    # Once the first failures leave the window, the admin's token works again.
    api.clock.now += WINDOW_S
    assert await api.code(api.quotas, "GetQuota", GET, TOKEN) == "OK"


async def test_a_few_bad_tokens_do_not_stop_the_admin(api: Api) -> None:
    for attempt in range(MAX_FAILURES - 1):
        assert await api.code(api.quotas, "GetQuota", GET, f"typo-{attempt}") == "UNAUTHENTICATED"
    assert await api.code(api.quotas, "GetQuota", GET, TOKEN) == "OK"
    # Failures older than the window no longer count.
    api.clock.now += WINDOW_S + 1
    for _ in range(MAX_FAILURES - 1):
        assert await api.code(api.quotas, "GetQuota", GET, None) == "UNAUTHENTICATED"
    assert await api.code(api.quotas, "GetQuota", GET, TOKEN) == "OK"


def test_addresses_are_hosts_whatever_their_port() -> None:
    assert host_of_peer("ipv4:10.0.0.7:51234") == "10.0.0.7"
    assert host_of_peer("ipv6:[fd00::1]:443") == "[fd00::1]"
    assert host_of_peer("unix:/run/aigw.sock") == "unix:/run/aigw.sock"
    clock = Clock()
    attempts = FailedAttempts(clock)
    for port in range(MAX_FAILURES):
        attempts.failed(f"ipv4:10.0.0.7:{40000 + port}")
    assert attempts.blocked_for("ipv4:10.0.0.7:50000") == WINDOW_S
    assert attempts.blocked_for("ipv4:10.0.0.8:50000") is None
