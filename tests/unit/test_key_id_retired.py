"""A revoked run-time key's id is retired, not handed to the next key created under it.

Usage reports by api_key, the ``api_key_id`` label of every metric, and the quota and
rate-limit counters all key on the id. Before, a revoke freed it: a key created later
under the same id (another holder) was billed together with the old one and started
with its spent quota. Now the id stays retired for ``store.usage_retention_days``, and
a create of it is refused naming when the old key was revoked. Through a real Valkey,
the management API, the CLI and requests through the processor.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from extproc.auth.stored_keys import KeyIdRetiredError, StoredKeys
from extproc.config import GatewayConfig
from extproc.management.v1 import management_pb2 as pb
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from tests.unit.test_stored_keys import (
    PREFIX,
    Api,
    Clock,
    api,
    client,
    gateway,
    keys,
    new_key,
    send,
)

__all__ = ["api", "client", "gateway", "keys"]  # test_stored_keys's fixtures
DAY_S = 86400.0


async def test_a_new_key_cannot_take_the_id_of_a_revoked_one(
    api: Api, gateway: Processor, services: Services
) -> None:
    old = await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot", user_id="carol"))
    assert (await send(gateway, old.key))[0] == 200
    await api.call("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))

    code, details = await api.refusal("CreateKey", pb.CreateKeyRequest(id="ci-bot", user_id="dan"))

    # Before: created, and dan's requests were reported, labelled and limited as carol's.
    assert code == "ALREADY_EXISTS"
    assert details.startswith("API key id 'ci-bot' belonged to a key revoked at 20")
    assert "(store.usage_retention_days)" in details and "choose another id" in details
    assert (await send(gateway, old.key))[0] == 401
    other = await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot-2", user_id="dan"))
    assert (await send(gateway, other.key))[0] == 200
    lines: list[dict[str, Any]] = services.access_log.lines()  # type: ignore[attr-defined]
    assert [(line["api_key_id"], line["user_id"]) for line in lines if line["api_key_id"]] == [
        ("ci-bot", "carol"),
        ("ci-bot-2", "dan"),
    ]


async def test_revoking_a_retired_id_again_says_when_it_was_revoked(api: Api) -> None:
    await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot"))
    await api.call("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))

    code, details = await api.refusal("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))

    assert code == "NOT_FOUND"
    assert details.startswith("no API key with id 'ci-bot': the key of that id was revoked at 20")


async def test_the_id_is_retired_as_long_as_the_rollups_are_kept(client: Any) -> None:
    clock = Clock()
    clock.now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    keys = StoredKeys(client, PREFIX, clock=clock, retire_ids_for_s=30 * DAY_S)
    await keys.create(new_key())
    digest = (await client.get(f"{PREFIX}keyid:ci-bot")).decode()

    await keys.revoke("ci-bot")

    assert await client.get(f"{PREFIX}keyid:ci-bot") == f"revoked:1800000000.0:{digest}".encode()
    left_ms = await client.pttl(f"{PREFIX}keyid:ci-bot")
    assert 29 * DAY_S * 1000 < left_ms <= 30 * DAY_S * 1000
    with pytest.raises(KeyIdRetiredError) as refused:
        await keys.create(new_key())
    assert str(refused.value).startswith(
        "API key id 'ci-bot' belonged to a key revoked at 2027-01-15T08:00:00Z: an id is"
        " not given to a new key until 2027-02-14T08:00:00Z"
    )
    # Once the retirement ends (the marker expires), the id is free again.
    await client.delete(f"{PREFIX}keyid:ci-bot")
    secret, _ = await keys.create(new_key(user_id="dan"))
    assert secret.startswith("aigw-")


async def test_an_id_freed_by_an_earlier_gateway_and_its_old_keys_keep_working(
    keys: StoredKeys, client: Any, gateway: Processor
) -> None:
    # An earlier gateway's revoke deleted the id: nothing marks it, nothing to migrate.
    secret, _ = await keys.create(new_key("kept"))
    await keys.create(new_key("freed"))
    digest = (await client.get(f"{PREFIX}keyid:freed")).decode()
    await client.delete(f"{PREFIX}key:{{{digest}}}", f"{PREFIX}keyid:freed")

    await keys.create(new_key("freed"))

    assert (await send(gateway, secret))[0] == 200
    assert (await keys.revoke("kept")).key.id == "kept"


async def test_the_cli_names_the_retired_id_and_exits_2(api: Api) -> None:
    await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot"))
    assert (await api.cli("keys", "revoke", "--id", "ci-bot"))[0] == 0

    code, out, err = await api.cli("keys", "create", "--id", "ci-bot")

    assert (code, out) == (2, "")
    assert "API key id 'ci-bot' belonged to a key revoked at" in err
    assert time.strftime("%Y-", time.gmtime()) in err


async def test_a_config_key_taking_a_retired_id_is_named_at_load(
    config: GatewayConfig, services: Services, keys: StoredKeys, caplog: pytest.LogCaptureFixture
) -> None:
    # CreateKey refuses a retired id; a config written later may still take one.
    await keys.create(new_key("team1"))
    await keys.revoke("team1")
    services.stored_keys = keys
    runtime = Runtime(config, services)

    with caplog.at_level("WARNING", logger="extproc.runtime"):
        await runtime.start()
    await runtime.close()

    [warning] = [r.getMessage() for r in caplog.records if "revoked within" in r.getMessage()]
    assert warning.startswith("API key ids team1 are in the config and belonged to keys created")
    assert "give the config's key another id" in warning
