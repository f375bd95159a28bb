"""A second review of the management API and its CLI, on a real Valkey over real gRPC.

A change whose caller stopped waiting (its deadline passed, Ctrl-C) while the store
was making it still leaves its audit line: it may be in force, and the audit trail
is where a security review looks. A request whose bytes are no valid message of the
API (a hand-made client's bad UTF-8) is refused as bad input, after the admin token,
never answered as the gateway's own failure. ``extproc quota get`` on a host whose
time zone database lacks the zone a rule resets in (an older tzdata, a slim image)
prints the quota, not a traceback. A created key whose record write went through
but whose answer was lost leaves no key behind that ``keys list`` shows and
``keys revoke`` cannot find.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import orjson
import pytest
from grpc import aio as grpc_aio
from redis.exceptions import ConnectionError as StoreConnectionError

from extproc.auth.stored_keys import StoredKeys
from extproc.management.client import render, state_dict
from extproc.management.v1 import management_pb2 as pb
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from tests.unit.test_management import TOKEN, Api, gateway_config, running_api
from tests.unit.test_stored_keys import new_key

AUTH = (("authorization", f"Bearer {TOKEN}"),)
SET_LIMIT = pb.SetLimitRequest(
    subject_kind="group", subject="marketing", rule="marketing-monthly",
    counter="token_quota", limit=6_000_000,
)  # fmt: skip


@pytest.fixture
async def api(valkey: EmbeddedValkey) -> AsyncIterator[Api]:
    async with running_api(valkey, gateway_config()) as running:
        yield running


@pytest.fixture
async def paused_writes(valkey: EmbeddedValkey) -> AsyncIterator[None]:
    """A store that takes reads but holds every write (a failover, a full disk's fsync)."""
    client = connect(valkey.url, 2.0)
    await client.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
    try:
        yield
    finally:
        await client.execute_command("CLIENT", "UNPAUSE")
        await client.aclose()


async def audit_lines(api: Api, at_least: int = 1) -> list[dict[str, Any]]:
    """The audit lines, once ``at_least`` are there (the handler ends after the caller)."""
    for _ in range(100):
        if len(found := api.audit_lines()) >= at_least:
            return found
        await asyncio.sleep(0.05)
    return api.audit_lines()


async def test_a_change_whose_caller_stopped_waiting_is_still_audited(
    api: Api, paused_writes: None
) -> None:
    with pytest.raises(grpc_aio.AioRpcError) as gave_up:
        await api.stub.SetLimit(SET_LIMIT, metadata=AUTH, timeout=0.5)
    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    (line,) = await audit_lines(api)
    assert (line["action"], line["caller"], line["subject"], line["limit"]) == (
        "set_limit", "ops", "marketing", 6_000_000,
    )  # fmt: skip
    # Sent to the store, never confirmed: it may be in force.
    assert line["outcome"] == "unknown"
    assert "before" in line and "after" not in line
    assert "stopped waiting" in line["error"]
    assert TOKEN.encode() not in api.audit.getvalue()


@pytest.fixture
async def raw(api: Api) -> AsyncIterator[Callable[[str], Any]]:
    """Methods of the API called with bytes as they are, as a hand-made client sends them."""
    async with grpc_aio.insecure_channel(api.address) as channel:

        def method(name: str) -> Any:
            return channel.unary_unary(
                f"/aigw.management.v1.{name}",
                request_serializer=lambda raw: raw,
                response_deserializer=lambda raw: raw,
            )

        yield method


# GetQuotaRequest{subject_kind: "group", subject: <two bytes that are no UTF-8>}.
BAD_UTF8 = b"\x0a\x05group" + b"\x12\x02\xff\xfe"


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("QuotaManagement/GetQuota", BAD_UTF8),
        ("QuotaManagement/SetLimit", b"\xff\xff\xff\xff"),
    ],
    ids=["bad-utf8", "not-protobuf"],
)
async def test_a_request_that_is_no_valid_message_is_invalid_argument(
    api: Api, raw: Callable[[str], Any], method: str, message: bytes
) -> None:
    with pytest.raises(grpc_aio.AioRpcError) as refused:
        await raw(method)(message, metadata=AUTH)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith("the request is not a valid aigw.management.v1.")
    assert "Unexpected" not in details and "class" not in details
    assert api.audit_lines() == []


async def test_a_request_that_is_no_valid_message_needs_the_admin_token_first(
    raw: Callable[[str], Any],
) -> None:
    with pytest.raises(grpc_aio.AioRpcError) as refused:
        await raw("QuotaManagement/GetQuota")(BAD_UTF8)

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_valid_messages_are_still_answered(raw: Callable[[str], Any]) -> None:
    state = pb.QuotaState.FromString(
        await raw("QuotaManagement/GetQuota")(
            pb.GetQuotaRequest(subject_kind="group", subject="marketing").SerializeToString(),
            metadata=AUTH,
        )
    )

    assert [limit.counter for limit in state.limits] == ["token_quota"]


# A monthly quota that resets at midnight in a zone this host's tz database does not
# have (the gateway's is newer); 2027-01-01T00:00:00Z.
UNKNOWN_HERE = pb.QuotaState(
    subject_kind="group",
    subject="marketing",
    limits=[
        pb.LimitState(
            rule="marketing-monthly", counter="token_quota", kind="tokens", limit=5_000_000,
            configured_limit=5_000_000, used=10, remaining=4_999_990,
            window_start=1_795_996_800.0, reset_at=1_798_761_600.0,
            time_zone="America/Not_Yet_Named",
        )
    ],
)  # fmt: skip


def test_a_reset_in_a_zone_unknown_here_is_shown_in_utc_with_its_zone() -> None:
    table = render([UNKNOWN_HERE], "table")

    assert "2027-01-01T00:00:00+00:00 UTC" in table
    assert "America/Not_Yet_Named" in table
    assert "4999990" in table
    # JSON carries the Unix time and the zone name, as it always did.
    assert orjson.loads(render([UNKNOWN_HERE], "json"))["limits"][0]["reset_at"] == 1_798_761_600
    assert state_dict(UNKNOWN_HERE)["limits"][0]["time_zone"] == "America/Not_Yet_Named"


class WriteAnswerLost:
    """The real store client, except that the answer to the key's record write is lost
    after the store made it (a connection dropped, a timeout)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return AnswerLostPipeline(self._client.pipeline(*args, **kwargs))


class AnswerLostPipeline:
    """A pipeline whose commands the store carries out, and whose answer is lost."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline

    async def __aenter__(self) -> AnswerLostPipeline:
        await self._pipeline.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._pipeline.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    async def execute(self) -> Any:
        await self._pipeline.execute()
        raise StoreConnectionError("Connection closed by server.")


async def test_a_create_whose_answer_was_lost_leaves_no_key_its_id_cannot_revoke(
    valkey: EmbeddedValkey,
) -> None:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    keys = StoredKeys(client, "review2:")
    try:
        with pytest.raises(StoreConnectionError):
            await StoredKeys(WriteAnswerLost(client), "review2:").create(new_key("ci-bot"))
        # Nobody has the secret of that attempt: no key of it may be left listed.
        left = [stored.key.id for stored in await keys.list()]
        # The operator tries again, as the error tells them to.
        await keys.create(new_key("ci-bot"))
        listed = [stored.key.id for stored in await keys.list()]
        await keys.revoke("ci-bot")
        after_revoke = [stored.key.id for stored in await keys.list()]
    finally:
        await client.aclose()

    assert left == []
    assert listed == ["ci-bot"]
    assert after_revoke == []
