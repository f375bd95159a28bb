"""Disabling a run-time API key for a while, and enabling it again, under the same id.

Before, the only way to stop a key created at run time was ``keys revoke``, which
retires its id for the usage rollups' retention: a key suspended while its holder's
traffic was looked into could never come back, and the holder's next key, under another
id, split every report by ``api_key`` in two (config keys had ``enabled: false``; stored
keys had nothing). ``keys disable`` refuses the key at once on every process sharing
the store (401 ``API key '<id>' is disabled``), keeping its id, secret, expiry and
usage; ``keys enable`` lets the same secret in again. Through a real Valkey, the
management API, the CLI and requests through the processor.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from extproc.auth.api_keys import key_digest
from extproc.auth.stored_keys import NOT_CACHED, StoredKeys
from extproc.management.client import render_renewed, render_rotated
from extproc.management.v1 import management_pb2 as pb
from extproc.processor import Processor
from extproc.runtime import Services
from tests.unit.test_auth_freshness_keys import eventually
from tests.unit.test_stored_keys import (
    PREFIX,
    Api,
    Meanwhile,
    api,
    client,
    gateway,
    keys,
    new_key,
    other_process,
    send,
)

__all__ = ["api", "client", "gateway", "keys", "other_process"]  # test_stored_keys's fixtures
HOUR_S = 3600.0
DAY_S = 86400.0


async def test_a_disabled_key_is_refused_everywhere_until_it_is_enabled_again(
    api: Api,
    gateway: Processor,
    keys: StoredKeys,
    services: Services,
    other_process: StoredKeys,
) -> None:
    expires = round(time.time() + 30 * DAY_S)
    secret, _ = await keys.create(new_key(expires_at=expires, labels={"team": "ml"}))
    digest = key_digest(secret)
    assert (await send(gateway, secret))[0] == 200  # this process remembers it
    assert await other_process.lookup(digest) not in (None, NOT_CACHED)  # and so does another

    code, out, err = await api.cli("keys", "disable", "--id", "ci-bot")

    assert (code, err) == (0, "")
    assert "disabled API key 'ci-bot'" in out and "keys enable --id ci-bot" in out
    status, body = await send(gateway, secret)
    assert (status, body["error"]["message"]) == (401, "API key 'ci-bot' is disabled")
    await eventually(lambda: other_process.cached(digest) is NOT_CACHED)
    found = await other_process.lookup(digest)
    assert found is not None and found is not NOT_CACHED and not found.enabled
    listed = await api.call("ListKeys", pb.ListKeysRequest(status=["disabled"]))
    [info] = listed.keys
    # The same key: id, identity, expiry and labels kept.
    assert (info.id, info.user_id, info.expires_at, dict(info.labels), info.enabled) == (
        "ci-bot", "carol", expires, {"team": "ml"}, False,
    )  # fmt: skip

    code, out, err = await api.cli("keys", "enable", "--id", "ci-bot", "--json")

    assert code == 0, err
    assert orjson.loads(out)["enabled"] is True
    assert (await send(gateway, secret))[0] == 200  # the same secret, at once
    await eventually(lambda: other_process.cached(digest) is NOT_CACHED)
    found = await other_process.lookup(digest)
    assert found is not None and found is not NOT_CACHED and found.enabled
    lines: list[dict[str, Any]] = services.access_log.lines()  # type: ignore[attr-defined]
    assert {line["api_key_id"] for line in lines} == {"ci-bot"}
    audits = api.audit_lines()
    assert [(a["action"], a["outcome"], a["was_enabled"]) for a in audits] == [
        ("disable_key", "applied", True), ("enable_key", "applied", False),
    ]  # fmt: skip
    assert all(secret not in orjson.dumps(audit).decode() for audit in audits)


async def test_a_disabled_keys_old_secret_in_its_grace_is_refused_too(
    api: Api, gateway: Processor, keys: StoredKeys
) -> None:
    old, _ = await keys.create(new_key())
    new, _, grace_ends = await keys.rotate("ci-bot", HOUR_S)

    disabled = await api.call("SetKeyEnabled", pb.SetKeyEnabledRequest(id="ci-bot"))

    assert not disabled.enabled and disabled.previous_expires_at == pytest.approx(grace_ends)
    for secret in (old, new):
        status, body = await send(gateway, secret)
        assert (status, body["error"]["message"]) == (401, "API key 'ci-bot' is disabled")
    await api.call("SetKeyEnabled", pb.SetKeyEnabledRequest(id="ci-bot", enabled=True))
    for secret in (old, new):  # the old secret is still in its grace
        assert (await send(gateway, secret))[0] == 200


async def test_a_key_disabled_during_its_rotation_stays_disabled(
    client: Any, gateway: Processor, keys: StoredKeys
) -> None:
    await keys.create(new_key())

    async def disable() -> None:
        await StoredKeys(client, PREFIX).set_enabled("ci-bot", False)

    # The disable lands after the rotation read the key, before it wrote the new secret's
    # record: that record must not carry the "enabled" read before.
    racing = Meanwhile(client, "pipeline", disable, at=2)  # the first reads the id
    new, stored, _ = await StoredKeys(racing, PREFIX).rotate("ci-bot", 0)

    assert not stored.key.enabled
    status, body = await send(gateway, new)
    assert (status, body["error"]["message"]) == (401, "API key 'ci-bot' is disabled")


async def test_a_renewal_keeps_a_disabled_key_disabled(
    api: Api, gateway: Processor, keys: StoredKeys
) -> None:
    secret, _ = await keys.create(new_key(expires_at=time.time() + DAY_S))
    await keys.set_enabled("ci-bot", False)

    renewed = await api.call(
        "RenewKey", pb.RenewKeyRequest(id="ci-bot", expires_at=time.time() + 30 * DAY_S)
    )
    rotated = await api.call(
        "RenewKey", pb.RenewKeyRequest(id="ci-bot", no_expiry=True, rotate=True)
    )

    assert not renewed.info.enabled and not rotated.info.enabled
    status, body = await send(gateway, rotated.key)
    assert (status, body["error"]["message"]) == (401, "API key 'ci-bot' is disabled")
    assert (await send(gateway, secret))[0] == 401  # replaced with no grace


@pytest.mark.parametrize(
    ("request_fields", "code", "said"),
    [
        ({}, "INVALID_ARGUMENT", "id is required"),
        ({"id": "team1"}, "INVALID_ARGUMENT", "comes from the config: set its enabled: false"),
        ({"id": "nobody"}, "NOT_FOUND", "no API key with id 'nobody'"),
    ],
)
async def test_a_disable_that_cannot_be_applied_is_refused_and_changes_nothing(
    api: Api, keys: StoredKeys, client: Any, request_fields: dict[str, Any], code: str, said: str
) -> None:
    secret, _ = await keys.create(new_key())
    record = f"{PREFIX}key:{{{key_digest(secret).hex()}}}"
    before = await client.hgetall(record)

    refused = await api.refusal("SetKeyEnabled", pb.SetKeyEnabledRequest(**request_fields))

    assert refused[0] == code and said in refused[1]
    assert await client.hgetall(record) == before
    assert api.audit_lines() == []


async def test_a_revoked_key_is_not_enabled_again(api: Api, keys: StoredKeys, client: Any) -> None:
    await keys.create(new_key())
    await keys.revoke("ci-bot")

    code, out, err = await api.cli("keys", "enable", "--id", "ci-bot")

    assert (code, out) == (2, "")
    assert "the key of that id was revoked at" in err
    assert await client.keys(f"{PREFIX}key:*") == []  # no record written back


def test_a_secret_handed_out_for_a_disabled_key_says_it_is_refused() -> None:
    # An operator rotating or renewing a suspended key hands its new secret to its holder:
    # the output says that secret is refused until the key is enabled, not only the
    # table's state column.
    disabled = pb.KeyInfo(id="ci-bot", source="store", enabled=False)
    rotated = render_rotated(pb.RotatedKey(key="aigw-new", info=disabled), "table")
    renewed = render_renewed(pb.RenewedKey(key="aigw-new", info=disabled), "table")
    for said in (rotated, renewed):
        assert "the key is disabled: its secrets are refused until" in said
        assert "extproc keys enable --id ci-bot" in said
    enabled = pb.KeyInfo(id="ci-bot", source="store", enabled=True)
    assert "disabled" not in render_rotated(pb.RotatedKey(key="aigw-new", info=enabled), "table")
