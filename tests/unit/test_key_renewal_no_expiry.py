"""Renewing a run-time API key so that it never expires again (``keys renew --no-expiry``).

Before, a key given an expiry kept one for good: ``keys renew`` took only a time in the
future, so a key handed out for a trial and then kept (a service account, a CI bot)
had to be renewed again and again, or replaced under another id (its usage split in
two). ``--no-expiry`` (``no_expiry`` in the API) removes the expiry; like any renewal it
is in force at once on every process sharing the store. It is never taken together
with ``--expires``: one renewal says one thing. Through a real Valkey, the management
API, the CLI and requests through the processor.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from extproc.auth.api_keys import key_digest
from extproc.auth.stored_keys import NOT_CACHED, StoredKeys
from extproc.management.v1 import management_pb2 as pb
from extproc.processor import Processor
from tests.unit.test_auth_freshness_keys import eventually
from tests.unit.test_stored_keys import (
    PREFIX,
    Api,
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


async def test_an_expired_key_renewed_with_no_expiry_works_for_good_on_every_process(
    api: Api, gateway: Processor, client: Any, other_process: StoredKeys
) -> None:
    secret = await expired_key(client)
    digest = key_digest(secret)
    assert (await send(gateway, secret))[0] == 401  # this process caches it as expired
    cached = await other_process.lookup(digest)  # and so does the other one
    assert cached is not None and cached is not NOT_CACHED and cached.expires_at

    code, out, err = await api.cli("keys", "renew", "--id", "ci-bot", "--no-expiry", "--json")

    assert code == 0, err
    answer = orjson.loads(out)
    assert answer["key"] is None and answer["info"]["expires_at"] is None
    assert answer["renewed_from"] == pytest.approx(time.time() - HOUR_S, abs=60)
    assert (await send(gateway, secret))[0] == 200
    await eventually(lambda: other_process.cached(digest) is NOT_CACHED)
    found = await other_process.lookup(digest)
    assert found is not None and found is not NOT_CACHED and found.expires_at is None
    [listed] = (await api.call("ListKeys", pb.ListKeysRequest(source="store"))).keys
    assert listed.expires_at == 0  # never
    never = await api.call("ListKeys", pb.ListKeysRequest(expiring_within_seconds=3650 * DAY_S))
    assert "ci-bot" not in [key.id for key in never.keys]
    [audit] = api.audit_lines()
    assert (audit["action"], audit["outcome"], audit["no_expiry"]) == ("renew_key", "applied", True)
    assert audit["expires_at"] is None and secret not in orjson.dumps(audit).decode()


async def test_the_table_says_the_key_never_expires(api: Api, client: Any) -> None:
    await expired_key(client)

    code, out, err = await api.cli("keys", "renew", "--id", "ci-bot", "--no-expiry")

    assert (code, err) == (0, "")
    [row] = [line for line in out.splitlines() if line.startswith("ci-bot")]
    assert " never " in row and "the key keeps its secret" in out


@pytest.mark.parametrize(
    "args",
    [
        ("--no-expiry", "--expires", "2031-01-01T00:00:00Z"),
        ("--expires", "2031-01-01T00:00:00Z", "--no-expiry"),
        (),
    ],
    ids=["both", "both-other-order", "neither"],
)
async def test_the_cli_takes_exactly_one_of_expires_and_no_expiry(
    api: Api, client: Any, args: tuple[str, ...]
) -> None:
    secret = await expired_key(client)
    record = f"{PREFIX}key:{{{key_digest(secret).hex()}}}"
    before = await client.hgetall(record)

    code, out, err = await api.cli("keys", "renew", "--id", "ci-bot", *args)

    assert (code, out) == (2, "")
    assert "--no-expiry" in err and "Traceback" not in err
    assert await client.hgetall(record) == before
    assert api.audit_lines() == []


async def test_the_api_refuses_an_expiry_together_with_no_expiry(api: Api, client: Any) -> None:
    secret = await expired_key(client)
    record = f"{PREFIX}key:{{{key_digest(secret).hex()}}}"
    before = await client.hgetall(record)

    refused = await api.refusal(
        "RenewKey", pb.RenewKeyRequest(id="ci-bot", expires_at=2e9, no_expiry=True)
    )

    assert refused[0] == "INVALID_ARGUMENT" and "give one of them" in refused[1]
    # A request that forgot expires_at is still refused, not made eternal.
    refused = await api.refusal("RenewKey", pb.RenewKeyRequest(id="ci-bot"))
    assert refused[0] == "INVALID_ARGUMENT" and "no_expiry removes it" in refused[1]
    assert await client.hgetall(record) == before
    assert api.audit_lines() == []


async def test_no_expiry_leaves_an_old_secret_its_grace_and_no_more(
    api: Api, gateway: Processor, keys: StoredKeys
) -> None:
    old, _ = await keys.create(new_key(expires_at=time.time() + 30 * DAY_S))
    new, _, grace_ends = await keys.rotate("ci-bot", HOUR_S)

    renewed = await api.call("RenewKey", pb.RenewKeyRequest(id="ci-bot", no_expiry=True))

    # The key no longer expires; the secret it replaced still stops at its grace's end
    # (before, a renewal's old-secret end was the earlier of the grace and the expiry:
    # with no expiry that read as "already stopped").
    assert renewed.info.expires_at == 0
    assert renewed.info.previous_expires_at == pytest.approx(grace_ends)
    for secret in (old, new):
        assert (await send(gateway, secret))[0] == 200
    old_record = await keys.lookup(key_digest(old))
    assert old_record is not None and old_record is not NOT_CACHED
    assert old_record.expires_at == pytest.approx(grace_ends)
    [listed] = await keys.list()
    assert (listed.key.expires_at, listed.previous_expires_at) == (None, pytest.approx(grace_ends))


async def test_no_expiry_with_rotate_gives_an_expired_key_a_new_secret_for_good(
    api: Api, gateway: Processor, client: Any
) -> None:
    old = await expired_key(client)

    code, out, err = await api.cli(
        "keys", "renew", "--id", "ci-bot", "--no-expiry", "--rotate", "--grace", "1h", "--json"
    )

    assert code == 0, err
    answer = orjson.loads(out)
    assert answer["key"].startswith("aigw-") and answer["info"]["expires_at"] is None
    assert (await send(gateway, answer["key"]))[0] == 200
    # The old secret had expired with the key: the grace does not bring it back.
    status, body = await send(gateway, old)
    assert (status, body["error"]["message"]) == (401, "API key 'ci-bot' has expired")
    assert answer["info"]["previous_expires_at"] is None
