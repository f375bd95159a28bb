"""Rotating a run-time API key: a new secret under the same id, the old one kept for a grace.

A revoked key's id is retired (test_key_id_retired), so revoke-and-create no longer
gives a key's holder a new secret under its id; before, that was the only way, and it
lost the key's spent quota and left a moment with no working secret. ``keys rotate``
keeps the id and identity, so usage, quotas and rate limits carry on; the old secret
keeps working for ``--grace`` (0: it stops at once), and a revoke stops both. Through
a real Valkey, the management API, the CLI and requests through the processor.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from redis.exceptions import ConnectionError as StoreConnectionError

from extproc.auth.api_keys import key_digest
from extproc.auth.stored_keys import (
    KeyCreateConflictError,
    KeyExpiredError,
    StoredKey,
    StoredKeys,
)
from extproc.config import GatewayConfig
from extproc.management.v1 import management_pb2 as pb
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import processor_for
from tests.unit.test_stored_keys import (
    PREFIX,
    Api,
    Clock,
    RevokeInBetween,
    api,
    client,
    expired_key,
    gateway,
    keys,
    new_key,
    send,
)

__all__ = ["api", "client", "gateway", "keys"]  # test_stored_keys's fixtures
HOUR_S = 3600.0


def identities(services: Services) -> list[tuple[str, str]]:
    lines: list[dict[str, Any]] = services.access_log.lines()  # type: ignore[attr-defined]
    return [(line["api_key_id"], line["user_id"]) for line in lines if line["api_key_id"]]


async def test_both_secrets_work_under_one_id_during_the_grace(
    api: Api, gateway: Processor, services: Services, client: Any
) -> None:
    old = await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot", user_id="carol"))
    assert (await send(gateway, old.key))[0] == 200  # cached by this process

    rotated = await api.call("RotateKey", pb.RotateKeyRequest(id="ci-bot", grace_seconds=HOUR_S))

    assert rotated.key.startswith("aigw-") and rotated.key != old.key
    assert (rotated.info.id, rotated.info.user_id) == ("ci-bot", "carol")
    assert rotated.info.created_at == old.info.created_at
    assert rotated.previous_expires_at == pytest.approx(time.time() + HOUR_S, abs=60)
    assert (await send(gateway, rotated.key))[0] == 200
    assert (await send(gateway, old.key))[0] == 200
    assert identities(services) == [("ci-bot", "carol")] * 3
    # The old record goes from the store when the grace ends, whatever reads it.
    old_record = f"{PREFIX}key:{{{key_digest(old.key).hex()}}}"
    expiry_ms = await client.pexpiretime(old_record)
    assert expiry_ms == pytest.approx(rotated.previous_expires_at * 1000, abs=1)
    # One key, listed once, saying how long its old secret still works.
    [listed] = (await api.call("ListKeys", pb.ListKeysRequest())).keys[2:]
    assert (listed.id, listed.previous_expires_at) == ("ci-bot", rotated.previous_expires_at)
    code, out, _ = await api.cli("keys", "list")
    assert code == 0 and "active, old secret until 20" in out


async def test_after_the_grace_the_old_secret_is_refused(
    config: GatewayConfig, services: Services, client: Any
) -> None:
    # A gateway whose rotation was two hours ago, with an hour of grace.
    two_hours_ago = time.time() - 2 * HOUR_S
    services.stored_keys = StoredKeys(client, PREFIX, clock=lambda: two_hours_ago)
    gateway = processor_for(config, services)
    old, _ = await services.stored_keys.create(new_key())
    assert (await send(gateway, old))[0] == 200  # cached by this process

    new, _, until = await services.stored_keys.rotate("ci-bot", HOUR_S)

    assert until == pytest.approx(time.time() - HOUR_S, abs=60)
    status, body = await send(gateway, old)
    assert (status, body["error"]["message"]) == (401, "invalid API key")
    assert (await send(gateway, new))[0] == 200


async def test_no_grace_stops_the_old_secret_at_once(api: Api, gateway: Processor) -> None:
    old = await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot"))
    assert (await send(gateway, old.key))[0] == 200  # cached by this process

    rotated = await api.call("RotateKey", pb.RotateKeyRequest(id="ci-bot"))

    assert rotated.info.previous_expires_at == 0
    assert (await send(gateway, old.key))[0] == 401
    assert (await send(gateway, rotated.key))[0] == 200


async def test_a_revoke_during_the_grace_stops_both_secrets(
    api: Api, gateway: Processor, client: Any
) -> None:
    old = await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot"))
    rotated = await api.call("RotateKey", pb.RotateKeyRequest(id="ci-bot", grace_seconds=HOUR_S))
    for secret in (old.key, rotated.key):
        assert (await send(gateway, secret))[0] == 200

    await api.call("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))

    for secret in (old.key, rotated.key):
        assert (await send(gateway, secret))[0] == 401
    assert await client.keys("*") == [f"{PREFIX}keyid:ci-bot".encode()]  # retired


async def test_a_second_rotation_ends_the_first_ones_grace(api: Api, gateway: Processor) -> None:
    first = await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot"))
    second = await api.call("RotateKey", pb.RotateKeyRequest(id="ci-bot", grace_seconds=HOUR_S))

    third = await api.call("RotateKey", pb.RotateKeyRequest(id="ci-bot", grace_seconds=HOUR_S))

    assert [(await send(gateway, each.key))[0] for each in (first, second, third)] == [
        401,
        200,
        200,
    ]
    assert [k.id for k in (await api.call("ListKeys", pb.ListKeysRequest())).keys] == [
        "team1",
        "team2",
        "ci-bot",
    ]


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            pb.RotateKeyRequest(id="team1"),
            "INVALID_ARGUMENT",
            "API key 'team1' comes from the config",
        ),
        (pb.RotateKeyRequest(id="nobody"), "NOT_FOUND", "no API key with id 'nobody'"),
        (pb.RotateKeyRequest(id=""), "INVALID_ARGUMENT", "id is required"),
        (
            pb.RotateKeyRequest(id="ci-bot", grace_seconds=-1),
            "INVALID_ARGUMENT",
            "grace_seconds must be from 0 to 2592000 (30 days)",
        ),
        (
            pb.RotateKeyRequest(id="ci-bot", grace_seconds=float("inf")),
            "INVALID_ARGUMENT",
            "grace_seconds must be from 0",
        ),
    ],
    ids=["config-key", "unknown", "no-id", "negative-grace", "endless-grace"],
)
async def test_what_cannot_be_rotated_is_refused_clearly(
    api: Api, request_: Any, code: str, message: str
) -> None:
    await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot"))

    found_code, details = await api.refusal("RotateKey", request_)

    assert (found_code, details[: len(message)]) == (code, message)
    assert [line["action"] for line in api.audit_lines()] == ["create_key"]


async def test_a_revoked_key_cannot_be_rotated(api: Api) -> None:
    await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot"))
    await api.call("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))

    code, details = await api.refusal("RotateKey", pb.RotateKeyRequest(id="ci-bot"))

    assert code == "NOT_FOUND" and "the key of that id was revoked at" in details


async def test_the_cli_prints_the_new_secret_once_and_audits_without_it(api: Api) -> None:
    await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot", group_id="research"))

    code, out, err = await api.cli("keys", "rotate", "--id", "ci-bot", "--grace", "1h")

    assert code == 0, err
    [secret] = [line.removeprefix("key: ") for line in out.splitlines() if line.startswith("key: ")]
    assert "the old secret works until 20" in out
    assert "it will not be shown again" in err
    rotate_line = api.audit_lines()[-1]
    assert (rotate_line["action"], rotate_line["key_id"], rotate_line["grace_s"]) == (
        "rotate_key",
        "ci-bot",
        3600.0,
    )
    assert rotate_line["group_id"] == "research" and rotate_line["outcome"] == "applied"
    assert secret.encode() not in api.audit.getvalue()
    code, out, err = await api.cli("keys", "rotate", "--id", "ci-bot", "--format", "json")
    assert code == 0, err
    answer = orjson.loads(out)
    assert answer["key"].startswith("aigw-") and answer["info"]["previous_expires_at"] is None
    code, _, err = await api.cli("keys", "rotate", "--id", "ci-bot", "--grace", "soon")
    assert code == 2 and "expected a duration such as 90, 15m, 1h or 7d, got 'soon'" in err


@pytest.mark.parametrize(
    ("method", "at"),
    [("evalsha", 1), ("evalsha", 2), ("persist", 1)],
    # Before the old secret's grace is written: that write made a record again, of two
    # fields, which `keys list` named as written by a person ("move the key away") and
    # the store kept for the whole grace (up to 30 days).
    ids=["before-the-old-secret-is-cut", "before-the-id-moves", "before-the-key-is-kept"],
)
async def test_a_revoke_racing_a_rotation_leaves_no_secret_working(
    client: Any, method: str, at: int
) -> None:
    old, _ = await StoredKeys(client, PREFIX).create(new_key())
    racing = RevokeInBetween(client, method, at)

    with pytest.raises(KeyCreateConflictError, match="revoked or rotated while it was being"):
        await StoredKeys(racing, PREFIX).rotate("ci-bot", HOUR_S)

    assert isinstance(racing.revoked, StoredKey)
    assert await StoredKeys(client, PREFIX).lookup(key_digest(old)) is None
    # No record is left (the new secret was never handed out), and the id is retired.
    assert await client.keys("*") == [f"{PREFIX}keyid:ci-bot".encode()]


class StoreFailsAtTheSwap:
    """The store client of a rotation, which fails when the id is to name the new key."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        # The id's script (keys first): the old secret's grace was written before it.
        if ":keyid:" in str(keys_and_args[0]):
            raise StoreConnectionError("Connection closed by server.")
        return await self._client.evalsha(sha, numkeys, *keys_and_args)


@pytest.mark.parametrize("grace_s", [HOUR_S, 0.0], ids=["with-grace", "no-grace"])
async def test_a_rotation_cut_short_by_the_store_can_be_run_again(
    keys: StoredKeys, client: Any, gateway: Processor, grace_s: float
) -> None:
    old, _ = await keys.create(new_key(expires_at=time.time() + 30 * 86400))
    with pytest.raises(StoreConnectionError):
        await StoredKeys(StoreFailsAtTheSwap(client), PREFIX).rotate("ci-bot", grace_s)
    # The key is still listed, and its old secret works for the grace (not at all without).
    assert [stored.key.id for stored in await keys.list()] == ["ci-bot"]
    assert (await send(gateway, old))[0] == (200 if grace_s else 401)

    new, stored, until = await keys.rotate("ci-bot", 2 * HOUR_S)

    # Finished, with the key's own expiry kept and the first grace not lengthened.
    assert stored.key.expires_at == pytest.approx(time.time() + 30 * 86400, abs=60)
    assert until == pytest.approx(time.time() + grace_s, abs=60)
    assert (await send(gateway, new))[0] == 200
    assert (await send(gateway, old))[0] == (200 if grace_s else 401)
    [listed] = await keys.list()
    assert listed.key.expires_at == stored.key.expires_at


async def test_an_expired_key_is_not_rotated_into_a_secret_that_cannot_work(
    client: Any, gateway: Processor, services: Services
) -> None:
    clock = Clock()
    clock.now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    keys = StoredKeys(client, PREFIX, clock=clock)
    old, _ = await keys.create(new_key(expires_at=clock.now + 60))
    clock.now += 120

    with pytest.raises(KeyExpiredError) as refused:
        await keys.rotate("ci-bot", 3600)

    # Before: a new secret was handed out with the key's expiry, already past: its
    # holder met 401 "has expired" on the first request.
    assert str(refused.value).startswith(
        "API key 'ci-bot' expired at 2027-01-15T08:01:00Z: a rotation keeps the key's expiry"
    )
    assert [stored.key.id for stored in await keys.list()] == ["ci-bot"]
    assert len(await client.keys(f"{PREFIX}key:*")) == 1  # no second record, no grace begun
    assert await client.hget(f"{PREFIX}key:{{{key_digest(old).hex()}}}", "rotated_at") is None


async def test_the_api_and_cli_refuse_rotating_an_expired_key_as_invalid(
    api: Api, client: Any
) -> None:
    await expired_key(client)

    code, details = await api.refusal("RotateKey", pb.RotateKeyRequest(id="ci-bot"))
    exit_code, out, err = await api.cli("keys", "rotate", "--id", "ci-bot")

    assert code == "INVALID_ARGUMENT" and "renew the key instead" in details
    assert (exit_code, out) == (2, "") and "API key 'ci-bot' expired at" in err
