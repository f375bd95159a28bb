"""Renewing a run-time API key: a new expiry under the same id, identity and secret.

Before, no expired stored key could be given a new life under its id: ``keys rotate``
refuses an expired key (its new secret would keep the expiry) and ``keys revoke``
retires the id, so the operator created a key under another id and every usage report
split its holder in two. ``keys renew`` sets a new expiry (``--rotate``: and a new
secret); every process sharing the store forgets what it cached of the key at once, as
for a revocation, so the holder's next request works wherever it lands. Through a real
Valkey, the management API, the CLI and requests through the processor.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from extproc.auth.api_keys import key_digest
from extproc.auth.stored_keys import NOT_CACHED, KeyCreateConflictError, StoredKeys
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
    expired_key,
    gateway,
    keys,
    new_key,
    other_process,
    send,
)

__all__ = ["api", "client", "gateway", "keys", "other_process"]  # test_stored_keys's fixtures
HOUR_S = 3600.0
DAY_S = 86400.0


def iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def test_an_expired_key_renewed_works_again_under_its_id_and_secret(
    api: Api, gateway: Processor, services: Services, client: Any
) -> None:
    secret = await expired_key(client)
    status, body = await send(gateway, secret)
    assert (status, body["error"]["message"]) == (401, "API key 'ci-bot' has expired")
    until = round(time.time() + 30 * DAY_S)

    renewed = await api.call("RenewKey", pb.RenewKeyRequest(id="ci-bot", expires_at=until))

    # The same secret works at once (this process's cache held the key as expired).
    assert (await send(gateway, secret))[0] == 200
    assert renewed.key == ""  # no new secret: the holder changes nothing
    assert (renewed.info.id, renewed.info.user_id, renewed.info.expires_at) == (
        "ci-bot", "carol", until,
    )  # fmt: skip
    assert renewed.renewed_from == pytest.approx(time.time() - HOUR_S, abs=60)
    lines: list[dict[str, Any]] = services.access_log.lines()  # type: ignore[attr-defined]
    assert lines[-1]["api_key_id"] == "ci-bot"  # usage stays under the id
    [listed] = (await api.call("ListKeys", pb.ListKeysRequest(source="store"))).keys
    assert listed.expires_at == until
    [audit] = api.audit_lines()
    assert (audit["action"], audit["outcome"]) == ("renew_key", "applied")
    assert audit["key_id"] == "ci-bot"
    assert audit["expires_at"] == until and secret not in orjson.dumps(audit).decode()


async def test_a_renewal_reaches_every_process_sharing_the_store_at_once(
    api: Api, client: Any, other_process: StoredKeys
) -> None:
    secret = await expired_key(client)
    digest = key_digest(secret)
    cached = await other_process.lookup(digest)
    # The other process remembers the key as expired: for 30 s without the notice.
    assert cached is not None and cached is not NOT_CACHED and cached.expires_at < time.time()

    await api.call("RenewKey", pb.RenewKeyRequest(id="ci-bot", expires_at=time.time() + DAY_S))

    await eventually(lambda: other_process.cached(digest) is NOT_CACHED)
    found = await other_process.lookup(digest)
    assert found is not None and found is not NOT_CACHED
    assert found.expires_at == pytest.approx(time.time() + DAY_S, abs=60)


async def test_a_revoked_key_is_not_renewed(api: Api, gateway: Processor, client: Any) -> None:
    secret = await expired_key(client)
    await api.call("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))
    retired = await client.get(f"{PREFIX}keyid:ci-bot")

    code, details = await api.refusal(
        "RenewKey", pb.RenewKeyRequest(id="ci-bot", expires_at=time.time() + DAY_S)
    )

    assert code == "NOT_FOUND" and "the key of that id was revoked at" in details
    assert await client.get(f"{PREFIX}keyid:ci-bot") == retired  # still retired
    assert await client.keys(f"{PREFIX}key:*") == []  # no record written back
    assert (await send(gateway, secret))[0] == 401


@pytest.mark.parametrize(
    ("request_fields", "code", "said"),
    [
        ({"id": "ci-bot", "expires_at": 1.0}, "INVALID_ARGUMENT", "must be in the future"),
        ({"id": "ci-bot"}, "INVALID_ARGUMENT", "must be in the future"),
        ({"id": "ci-bot", "expires_at": float("nan")}, "INVALID_ARGUMENT", "in the future"),
        ({"id": "ci-bot", "expires_at": 1e13}, "INVALID_ARGUMENT", "before the year 10000"),
        ({"expires_at": 2e9}, "INVALID_ARGUMENT", "id is required"),
        ({"id": "team1", "expires_at": 2e9}, "INVALID_ARGUMENT", "comes from the config"),
        ({"id": "nobody", "expires_at": 2e9}, "NOT_FOUND", "no API key with id 'nobody'"),
        (
            {"id": "ci-bot", "expires_at": 2e9, "grace_seconds": 60},
            "INVALID_ARGUMENT",
            "grace_seconds is for a renewal with rotate",
        ),
        (
            {"id": "ci-bot", "expires_at": 2e9, "rotate": True, "grace_seconds": 1e9},
            "INVALID_ARGUMENT",
            "grace_seconds must be from 0",
        ),
    ],
)
async def test_a_renewal_that_cannot_be_applied_is_refused_and_changes_nothing(
    api: Api, client: Any, request_fields: dict[str, Any], code: str, said: str
) -> None:
    secret = await expired_key(client)
    record = f"{PREFIX}key:{{{key_digest(secret).hex()}}}"
    before = await client.hgetall(record)

    refused = await api.refusal("RenewKey", pb.RenewKeyRequest(**request_fields))

    assert refused[0] == code and said in refused[1]
    assert await client.hgetall(record) == before
    assert api.audit_lines() == []


async def test_renew_with_rotate_gives_an_expired_key_a_new_secret(
    api: Api, gateway: Processor, client: Any
) -> None:
    old = await expired_key(client)
    until = int(time.time() + DAY_S)  # to the second, as the command line gives it

    code, out, err = await api.cli(
        "keys", "renew", "--id", "ci-bot", "--expires", iso(until), "--rotate", "--grace", "1h",
        "--json",
    )  # fmt: skip

    assert code == 0, err
    answer = orjson.loads(out)
    assert answer["key"].startswith("aigw-") and "will not be shown again" in err
    assert answer["info"]["expires_at"] == until
    # The old secret had expired: a grace does not bring it back.
    assert answer["previous_expires_at"] < time.time()
    assert answer["info"]["previous_expires_at"] is None
    assert (await send(gateway, answer["key"]))[0] == 200
    status, body = await send(gateway, old)
    assert status == 401 and "has expired" in body["error"]["message"]


async def test_a_renewal_bounds_the_old_secret_of_a_rotation_in_its_grace(
    api: Api, gateway: Processor, keys: StoredKeys
) -> None:
    old, _ = await keys.create(new_key(expires_at=time.time() + 30 * DAY_S))
    new, _, grace_ends = await keys.rotate("ci-bot", 7 * DAY_S)
    for secret in (old, new):
        assert (await send(gateway, secret))[0] == 200  # cached by this process
    sooner = round(time.time() + DAY_S)

    renewed = await api.call("RenewKey", pb.RenewKeyRequest(id="ci-bot", expires_at=sooner))

    # The old secret stops with the key now, not at the end of its week of grace.
    assert grace_ends > sooner and renewed.info.previous_expires_at == sooner
    old_record = await keys.lookup(key_digest(old))
    new_record = await keys.lookup(key_digest(new))
    assert old_record is not None and old_record is not NOT_CACHED
    assert new_record is not None and new_record is not NOT_CACHED
    assert old_record.expires_at == new_record.expires_at == sooner
    [listed] = await keys.list()
    assert (listed.key.expires_at, listed.previous_expires_at) == (sooner, sooner)


async def test_a_later_renewal_does_not_bring_back_the_secret_a_renewal_replaced(
    api: Api, gateway: Processor, client: Any
) -> None:
    old = await expired_key(client)
    replaced = await api.call(
        "RenewKey",
        pb.RenewKeyRequest(id="ci-bot", expires_at=time.time() + DAY_S, rotate=True,
                           grace_seconds=HOUR_S),
    )  # fmt: skip
    assert (await send(gateway, old))[0] == 401  # expired: the grace does not bring it back

    # The operator later moves the key's expiry on, the new secret unchanged.
    until = round(time.time() + 30 * DAY_S)
    renewed = await api.call("RenewKey", pb.RenewKeyRequest(id="ci-bot", expires_at=until))

    # Before, the old secret, which the operator had replaced because the key expired
    # (or leaked), worked again for the rest of that hour's grace.
    status, body = await send(gateway, old)
    assert (status, body.get("error", {}).get("message")) == (401, "API key 'ci-bot' has expired")
    assert (await send(gateway, replaced.key))[0] == 200
    assert renewed.info.previous_expires_at == 0
    [listed] = (await api.call("ListKeys", pb.ListKeysRequest(source="store"))).keys
    assert (listed.expires_at, listed.previous_expires_at) == (until, 0)  # none works


async def test_an_old_secret_that_stopped_with_its_key_stays_stopped_after_a_renewal(
    api: Api, gateway: Processor, client: Any
) -> None:
    # Two hours ago: a key expiring an hour ago, rotated with a week's grace, so its old
    # secret stopped an hour ago, with the key, long before the grace's end.
    earlier = StoredKeys(client, PREFIX, clock=lambda: time.time() - 2 * HOUR_S)
    old, _ = await earlier.create(new_key(expires_at=time.time() - HOUR_S))
    new, _, _ = await earlier.rotate("ci-bot", 7 * DAY_S)
    for secret in (old, new):
        assert (await send(gateway, secret))[0] == 401

    renewed = await api.call(
        "RenewKey", pb.RenewKeyRequest(id="ci-bot", expires_at=time.time() + 30 * DAY_S)
    )  # fmt: skip

    # The key works again with the secret its holder has; the one it replaced does not.
    assert (await send(gateway, new))[0] == 200
    status, body = await send(gateway, old)
    assert (status, body.get("error", {}).get("message")) == (401, "API key 'ci-bot' has expired")
    assert renewed.info.previous_expires_at == 0


async def test_a_renewal_during_a_rotation_is_carried_into_the_new_secret(
    client: Any, keys: StoredKeys
) -> None:
    await keys.create(new_key(expires_at=time.time() + HOUR_S))
    later = round(time.time() + 30 * DAY_S)

    async def renew() -> None:
        await StoredKeys(client, PREFIX).renew("ci-bot", later)

    # The renewal lands after the rotation read the key, before it wrote the new secret's
    # record: before, that record carried the old expiry and the renewal was lost.
    racing = Meanwhile(client, "pipeline", renew, at=2)  # the first reads the id
    new, stored, _ = await StoredKeys(racing, PREFIX).rotate("ci-bot", 0)

    assert stored.key.expires_at == later
    found = await keys.lookup(key_digest(new))
    assert found is not None and found is not NOT_CACHED and found.expires_at == later


async def test_a_renewal_racing_a_revoke_fails_and_writes_nothing_back(
    client: Any, keys: StoredKeys
) -> None:
    await expired_key(client)

    async def revoke() -> None:
        await StoredKeys(client, PREFIX).revoke("ci-bot")

    # The revoke deletes the record after the renewal read it: an HSET would have made
    # a hash of one field there, which every listing then named as unreadable.
    racing = Meanwhile(client, "evalsha", revoke)
    with pytest.raises(KeyCreateConflictError, match="revoked or rotated while it was being"):
        await StoredKeys(racing, PREFIX).renew("ci-bot", time.time() + DAY_S)

    assert await client.keys(f"{PREFIX}key:*") == []
    assert (await keys.listing()).unreadable == []


async def test_the_cli_renews_a_key_and_says_it_keeps_its_secret(
    api: Api, client: Any, gateway: Processor
) -> None:
    secret = await expired_key(client)

    code, out, err = await api.cli(
        "keys", "renew", "--id", "ci-bot", "--expires-at", "2131-01-01T00:00:00+01:00"
    )

    assert (code, err) == (0, "")
    assert "2130-12-31T23:00:00Z" in out and "the key keeps its secret" in out
    assert "renewed API key 'ci-bot'" in out and "aigw-" not in out
    assert (await send(gateway, secret))[0] == 200
    # A time without a zone is refused before anything is sent.
    code, out, err = await api.cli(
        "keys", "renew", "--id", "ci-bot", "--expires", "2031-01-01T00:00:00"
    )
    assert code == 2 and "needs a time zone" in err


async def test_a_renewal_bringing_the_expiry_forward_stops_the_old_secret_by_then(
    api: Api, gateway: Processor, client: Any
) -> None:
    # A key that leaked: the operator rotates it and brings its end forward to a moment
    # from now. Before, the old secret kept the hour's grace past the key's new end.
    keys = StoredKeys(client, PREFIX)
    old, _ = await keys.create(new_key(expires_at=time.time() + DAY_S))
    ends = time.time() + 1.0
    replaced = await api.call(
        "RenewKey",
        pb.RenewKeyRequest(id="ci-bot", expires_at=ends, rotate=True, grace_seconds=HOUR_S),
    )
    assert 0 < replaced.previous_expires_at <= ends
    await asyncio.sleep(max(0.0, ends - time.time()) + 0.2)  # past the key's new end
    # Refused: the store forgets the old record at the old secret's end.
    assert (await send(gateway, old))[0] == 401
