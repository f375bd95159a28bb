"""``keys list`` names a rotation's old secret only while it still works.

The rotated-out record stays in the store until its grace's end, even when its secret
stopped before (with the key's expiry, or at an expiry a renewal brought forward).
Before, the listing took that record's past stop for a working old secret: ``keys list
--json`` gave a past ``previous_expires_at`` beside a table saying ``active``, so an
operator could not tell whether a secret they had replaced still let clients in. Through
a real Valkey, the store's clock moved, the management API and the CLI.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from extproc.auth.stored_keys import StoredKeys
from extproc.management.v1 import management_pb2 as pb
from tests.unit.test_stored_keys import PREFIX, Api, Clock, api, client, keys, new_key

__all__ = ["api", "client", "keys"]  # test_stored_keys's fixtures
HOUR_S = 3600.0
DAY_S = 86400.0


async def test_an_old_secret_is_listed_until_it_stops_with_its_key_then_no_more(
    client: Any,
) -> None:
    clock = Clock()
    clock.now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    keys = StoredKeys(client, PREFIX, clock=clock)
    await keys.create(new_key(expires_at=clock.now + HOUR_S))
    await keys.rotate("ci-bot", 7 * DAY_S)  # the grace outlasts the key

    [listed] = (await keys.listing()).keys
    assert listed.previous_expires_at == clock.now + HOUR_S  # stops with the key

    clock.now += 2 * HOUR_S  # the key expired; the old record stays for the week
    [listed] = (await keys.listing()).keys

    assert listed.previous_expires_at == 0


async def test_a_key_renewed_after_its_old_secret_stopped_lists_no_old_secret(
    api: Api, client: Any
) -> None:
    # Two hours ago: a key expiring an hour ago, rotated with a week's grace, so its old
    # secret stopped an hour ago, with the key; the renewal leaves it stopped.
    earlier = StoredKeys(client, PREFIX, clock=lambda: time.time() - 2 * HOUR_S)
    await earlier.create(new_key(expires_at=time.time() - HOUR_S))
    await earlier.rotate("ci-bot", 7 * DAY_S)
    await api.call(
        "RenewKey", pb.RenewKeyRequest(id="ci-bot", expires_at=time.time() + 30 * DAY_S)
    )  # fmt: skip

    [listed] = (await api.call("ListKeys", pb.ListKeysRequest(source="store"))).keys
    assert listed.previous_expires_at == 0
    rotating = await api.call("ListKeys", pb.ListKeysRequest(status=["rotating"]))
    assert list(rotating.keys) == []
    code, out, _ = await api.cli("keys", "list", "--source", "store", "--json")
    assert code == 0 and orjson.loads(out)[0]["previous_expires_at"] is None
    code, out, _ = await api.cli("keys", "list", "--source", "store")
    assert code == 0 and out.splitlines()[1].split()[4] == "active"


async def test_an_old_secret_still_in_its_grace_is_listed_and_rotating(api: Api) -> None:
    await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot"))
    rotated = await api.call("RotateKey", pb.RotateKeyRequest(id="ci-bot", grace_seconds=HOUR_S))

    [listed] = (await api.call("ListKeys", pb.ListKeysRequest(status=["rotating"]))).keys

    assert listed.previous_expires_at == rotated.previous_expires_at > time.time()
    code, out, _ = await api.cli("keys", "list", "--source", "store", "--json")
    assert code == 0 and orjson.loads(out)[0]["previous_expires_at"] == listed.previous_expires_at
